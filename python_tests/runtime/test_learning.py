"""On the built-in sort task, from a short supervised warm start, PPO and GRPO
raise the mean reward well above where it starts (seeded, with a margin), and
ReMax's greedy baseline is what greedy decoding of the actor scores."""
from __future__ import annotations

import pytest

from python_tests.runtime import experiments as ex
from real_ext.algo import GRPO, PPO, GRPOConfig, PPOConfig
from real_ext.data.prompts import PromptDataset
from real_ext.generation import GenerationConfig, generate
from real_ext.model import ReaLModel
from real_ext.model.train import OptimConfig
from real_ext.runtime import Allocation, Master, ModelSpec
from real_ext.tasks.warm_start import warm_start

GEN = dict(max_new_tokens=8, seed=3, stop_token_ids=(ex.TASK.eos_id,))
BOTH = Allocation((0, 1), dp=2)
TRAIN = Allocation((0, 1), tp=2)   # the actor trains under another layout: reallocation every step


@pytest.fixture(scope="module")
def sft(tmp_path_factory) -> str:
    return warm_start(ex.TASK, str(tmp_path_factory.mktemp("sft")), steps=20)


def _rewards(models, algorithm, steps: int) -> list[float]:
    with Master(models, algorithm, PromptDataset.from_task(ex.TASK, 1024, seed=0), 2) as master:
        return [master.step()["reward/mean"] for _ in range(steps)]


def _assert_rises(rewards: list[float], margin: float) -> None:
    start, end = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    assert end >= start + margin, f"mean reward went from {start:.3f} to {end:.3f}: {[round(r, 3) for r in rewards]}"


def test_grpo_raises_the_reward(sft):
    models = {"actor": ModelSpec("actor", path=sft, optimizer=OptimConfig(lr=3e-4)), "ref": ModelSpec("ref", path=sft)}
    grpo = GRPO(GRPOConfig(batch_size=16, group_size=8, generation=GEN, reward="task:sort", beta=0.01,
                           n_minibatches=4, allocations={"actor_gen": BOTH, "reward_fn": BOTH, "ref_inf": BOTH,
                                                         "actor_train": TRAIN}))
    _assert_rises(_rewards(models, grpo, 100), margin=0.1)


def test_ppo_raises_the_reward(sft):
    models = {"actor": ModelSpec("actor", path=sft, optimizer=OptimConfig(lr=5e-4)),
              "critic": ModelSpec("critic", path=sft, head="value", optimizer=OptimConfig(lr=1e-3)),
              "ref": ModelSpec("ref", path=sft)}
    allocations = {"actor_gen": BOTH, "reward_fn": BOTH, "ref_inf": BOTH, "critic_inf": BOTH,
                   "actor_train": TRAIN, "critic_train": BOTH}
    ppo = PPO(PPOConfig(batch_size=64, generation=GEN, allocations=allocations, reward="task:sort",
                        kl_coef=0.01, lam=1.0, n_minibatches=4))
    _assert_rises(_rewards(models, ppo, 100), margin=0.1)


def test_remax_baseline_is_the_greedy_reward(sft):
    models = {"actor": ModelSpec("actor", path=sft, optimizer=OptimConfig(lr=3e-4))}
    remax = GRPO(GRPOConfig(batch_size=8, group_size=1, generation=GEN, reward="task:sort",
                            allocations={"actor_gen": BOTH, "reward_fn": BOTH, "actor_train": TRAIN}), remax=True)
    dataset = PromptDataset.from_task(ex.TASK, 8, seed=0)
    with Master(models, remax, dataset, 2) as master:
        stats = master.step()
        reallocs = [e for e in master.trace.events if e["cat"] == "realloc"]
    # The same greedy responses from one process, scored by the task's own rule.
    out = generate(ReaLModel.from_pretrained(sft), dataset.prompts, GenerationConfig(**dict(GEN, greedy=True)))
    expected = [ex.TASK.reward(dataset.prompts[p], ids) for p, ids in zip(out.prompt_index, out.output_ids)]
    assert stats["greedy_reward/mean"] == pytest.approx(sum(expected) / len(expected), abs=1e-9)
    assert "actor_train/loss" in stats
    # Sampled and greedy generation share one reallocated copy of the actor.
    assert sorted(e["tid"] for e in reallocs) == [0, 1]
