"""Built-in toy tasks for end-to-end RLHF runs on small models: prompts,
reference answers, rule-based rewards, SFT and preference data, a Hugging Face
tokenizer and model config. ``get_task("sort")``."""
from __future__ import annotations

from real_ext.tasks.base import Task
from real_ext.tasks.sort import SortTask

_REGISTRY: dict[str, type[Task]] = {"sort": SortTask}
TASKS = tuple(_REGISTRY)


def get_task(name: str, **options) -> Task:
    """The task registered as ``name``, built with ``options`` (e.g. ``max_len=6``)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(TASKS)}")
    return _REGISTRY[name](**options)


__all__ = ["TASKS", "SortTask", "Task", "get_task"]
