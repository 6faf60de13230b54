"""Small experiments the runtime tests share (importable by spawned workers):
a PPO graph on the sort task with tiny models, and datasets that fail on
purpose inside a worker."""
from __future__ import annotations

import os
import signal
import sys

import torch.distributed as dist

from real_ext.algo import PPO, PPOConfig
from real_ext.data.prompts import PromptDataset
from real_ext.model.train import OptimConfig
from real_ext.runtime import Allocation, ModelSpec
from real_ext.tasks import get_task

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TASK = get_task("sort", min_len=3, max_len=5)
PPO_MFCS = ("actor_gen", "reward_inf", "ref_inf", "critic_inf", "actor_train", "critic_train")


def ppo_models(lr: float = 1e-3) -> dict:
    """Fresh tiny models (seeded): the reference starts equal to the actor."""
    cfg = TASK.model_config("tiny")
    opt = OptimConfig(lr=lr)
    return {"actor": ModelSpec("actor", config=cfg, seed=1, optimizer=opt),
            "critic": ModelSpec("critic", config=cfg, seed=2, head="value", optimizer=opt),
            "ref": ModelSpec("ref", config=cfg, seed=1),
            "reward": ModelSpec("reward", config=cfg, seed=3, head="value")}


def one_worker() -> dict:
    return {name: Allocation((0,)) for name in PPO_MFCS}


def four_workers() -> dict:
    """The issue's allocation: generation on all 4 (dp=4), actor training on 0-1
    (tp=2), critic on 2-3 (tp=2), reference and reward on 2-3 (pp=2)."""
    return {"actor_gen": Allocation((0, 1, 2, 3), dp=4), "actor_train": Allocation((0, 1), tp=2),
            "critic_inf": Allocation((2, 3), tp=2), "critic_train": Allocation((2, 3), tp=2),
            "ref_inf": Allocation((2, 3), pp=2), "reward_inf": Allocation((2, 3), pp=2)}


def ppo(allocations: dict, batch_size: int = 16, **overrides) -> PPO:
    config = dict(batch_size=batch_size, allocations=allocations, n_minibatches=2,
                  generation=dict(max_new_tokens=8, seed=7, stop_token_ids=(TASK.eos_id,)))
    config.update(overrides)
    return PPO(PPOConfig(**config))


def prompts(n: int = 64) -> PromptDataset:
    return PromptDataset.from_task(TASK, n, seed=0)


class RaisingDataset(PromptDataset):
    """Raises inside worker `rank` when generation asks for a prompt."""

    def __init__(self, prompts, rank: int):
        super().__init__(prompts)
        self.rank = rank

    def prompt(self, i: int) -> list[int]:
        if dist.get_rank() == self.rank:
            print(f"worker {self.rank}: about to fail on purpose", file=sys.stderr, flush=True)   # for the log tests
            raise RuntimeError("deliberate failure from the test dataset")
        return super().prompt(i)


class KillingDataset(RaisingDataset):
    """Worker `rank` kills itself (SIGKILL, no Python cleanup) inside generation."""

    def prompt(self, i: int) -> list[int]:
        if dist.get_rank() == self.rank:
            os.kill(os.getpid(), signal.SIGKILL)
        return PromptDataset.prompt(self, i)


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
