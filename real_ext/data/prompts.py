"""The prompts an RL experiment draws from: token-id lists the master hands to
generation MFCs by index (workers look them up themselves, so only indices
travel)."""
from __future__ import annotations

from typing import Sequence


class PromptDataset:
    keys = ()   # no sample data: generation MFCs read prompt(i)

    def __init__(self, prompts: Sequence[Sequence[int]]):
        if not prompts:
            raise ValueError("the prompt dataset is empty; give at least one prompt")
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
        self.prompts = [list(map(int, p)) for p in prompts]

    @classmethod
    def from_task(cls, task, n: int, seed: int) -> "PromptDataset":
        """n prompts of a built-in task (real_ext.tasks), the same for the same seed."""
        return cls(task.prompts(n, seed))

    def __len__(self) -> int:
        return len(self.prompts)

    def prompt(self, i: int) -> list[int]:
        return self.prompts[i]

    def lengths(self, i: int) -> list[int]:
        """Token counts of sample i's sequences (for token-balanced splits)."""
        return [len(self.prompts[i])]
