"""Rule-based rewards given by name in a config: ``"task:<name>"`` (a built-in
task's reward, see real_ext.tasks) or ``"fn:<module>.<function>"`` (any
importable ``f(prompt_ids, output_ids) -> float``, e.g. a math-answer checker
that decodes with its tokenizer). Resolved on the master first, so a bad name
fails before any worker starts, then on every worker that computes rewards."""
from __future__ import annotations

import importlib
from typing import Callable

from real_ext.runtime.spec import AllocationError

RewardFn = Callable[[list[int], list[int]], float]


def resolve_reward(spec: str) -> RewardFn:
    kind, _, name = spec.partition(":")
    if kind == "task":
        from real_ext.tasks import TASKS, get_task
        if name not in TASKS:
            raise AllocationError(f"reward {spec!r}: no built-in task {name!r}; available: {', '.join(TASKS)}")
        return get_task(name).reward
    if kind == "fn":
        module, _, attr = name.rpartition(".")
        try:
            fn = getattr(importlib.import_module(module), attr) if module else None
        except (ImportError, AttributeError) as e:
            raise AllocationError(f"reward {spec!r}: cannot import {name!r} ({e})") from None
        if not callable(fn):
            raise AllocationError(f"reward {spec!r}: give 'fn:<module>.<function>' naming a callable")
        return fn
    raise AllocationError(f"reward {spec!r}: expected 'task:<name>' or 'fn:<module>.<function>'")
