"""Small experiment configs the experiment tests share: every kind on the
built-in sort task with tiny models, 2 workers and a few steps."""
from __future__ import annotations

import os

from real_ext.experiments.config import apply_overrides, from_dict
from real_ext.experiments.schema import ExperimentConfig
from real_ext.tasks import get_task

TASK_OPTIONS = {"min_len": 3, "max_len": 5}
TASK = get_task("sort", **TASK_OPTIONS)


def sft_checkpoint(folder: str) -> str:
    """A briefly warm-started tiny actor with its tokenizer (made once per folder)."""
    from real_ext.tasks.warm_start import warm_start
    path = os.path.join(folder, "sft")
    if not os.path.exists(os.path.join(path, "config.json")):
        warm_start(TASK, path, steps=10)
    return path


def raw(kind: str, out: str, actor: str, **extra) -> dict:
    """The YAML-level dict of a 3-step ``kind`` experiment on 2 workers."""
    data = {"task": "sort", "task_options": TASK_OPTIONS, "n": 64, "eval_n": 8}
    opt = {"lr": 1e-3}
    base = {"experiment": kind, "out": out, "steps": 3, "n_workers": 2, "data": data,
            "checkpoint": {"every": 2}, "eval": {"every": 2}}
    if kind == "sft":
        base.update(actor={"init": {"task": "sort"}, "optimizer": opt}, sft={"batch_size": 8})
    elif kind == "rw":
        base.update(reward={"path": actor, "optimizer": opt}, rw={"batch_size": 8})
    elif kind == "dpo":
        base.update(actor={"path": actor, "optimizer": opt}, dpo={"batch_size": 8, "beta": 0.1},
                    allocations={"actor_train": {"mesh": [0, 1], "tp": 2}, "ref_inf": {"mesh": [0, 1], "pp": 2}})
    elif kind == "ppo":
        base.update(actor={"path": actor, "optimizer": opt}, reward={"path": actor},
                    ppo={"batch_size": 8, "n_minibatches": 2, "monitor_reward": "task"},
                    generation={"max_new_tokens": 8},
                    allocations={"actor_train": {"mesh": [0, 1], "tp": 2}, "critic_inf": {"mesh": [1], "dp": 1},
                                 "critic_train": {"mesh": [1]}, "reward_inf": {"mesh": [0]},
                                 "ref_inf": {"mesh": [0, 1], "pp": 2}})
    else:   # grpo, remax: a rule-based reward
        base.update(actor={"path": actor, "optimizer": opt}, generation={"max_new_tokens": 8},
                    **{kind: {"batch_size": 4, "reward": "task", "beta": 0.05, **({"group_size": 2} if kind == "grpo" else {})}},
                    allocations={"actor_train": {"mesh": [0, 1], "tp": 2}})
    base.update(extra)
    return base


def config(kind: str, out: str, actor: str, overrides=(), **extra) -> ExperimentConfig:
    return from_dict(ExperimentConfig, apply_overrides(raw(kind, out, actor, **extra), list(overrides)))
