"""The planning problem of an experiment config: its dataflow graph, its
models' sizes and what each MFC computes per step (batch, prompt and
generation lengths), for the simulator and the search."""
from __future__ import annotations

import tempfile

from real_ext.plan.cost import ModelInfo
from real_ext.plan.search import Problem
from real_ext.plan.simulate import works_for


def _mean(values) -> int:
    values = list(values)
    return max(1, round(sum(values) / len(values)))


def lengths(c, dataset) -> tuple[int, int]:
    """(prompt tokens, generated or answer tokens) per sequence: the dataset's
    means; RL generates up to generation.max_new_tokens (planned at the
    maximum: what the memory must hold)."""
    n = len(dataset)
    idx = range(0, n, max(1, n // 512))   # a sample of the dataset is enough for a mean
    prompt = _mean(len(dataset.prompt(i)) for i in idx)
    if c.experiment in ("ppo", "grpo", "remax"):
        return prompt, c.generation.max_new_tokens
    return prompt, _mean(sum(dataset.lengths(i)) / len(dataset.lengths(i)) - len(dataset.prompt(i)) for i in idx)


def problem_from_config(c, cost, *, n_iterations: int = 2) -> Problem:
    """The Problem of a resolved ExperimentConfig (real_ext/experiments/build.py
    resolve) on the hardware of ``cost``."""
    from real_ext.experiments.build import build
    with tempfile.TemporaryDirectory() as tmp:
        built = build(c, tmp)
    models = {name: ModelInfo(spec.model_config(), spec.head, spec.dtype, trains=spec.optimizer is not None,
                              activation_checkpointing=spec.activation_checkpointing)
              for name, spec in built.models.items()}
    prompt_len, gen_len = lengths(c, built.dataset)
    a = c.algo
    works = works_for(c.experiment, a.batch_size, prompt_len, gen_len, group_size=getattr(a, "group_size", 1),
                      n_minibatches=a.n_minibatches)
    return Problem(built.algorithm.mfcs(), models, works, cost, n_iterations)
