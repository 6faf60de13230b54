"""Datasets of prompts with given completions, read by workers as sample data:
SFT (one answer per prompt) and preference pairs (chosen, rejected). Sample i
holds, for each completion, the sequence prompt + completion under
"input_ids" and the prompt length under "prompt_len" (real_ext/data/sample.py),
in the completions' order: for pairs, chosen first."""
from __future__ import annotations

from typing import Sequence

import torch

from real_ext.data.sample import SequenceSample


class CompletionDataset:
    keys = ("input_ids", "prompt_len")

    def __init__(self, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[Sequence[int]]]):
        if not prompts:
            raise ValueError("the dataset is empty; give at least one example")
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completion lists")
        counts = {len(c) for c in completions}
        if len(counts) != 1:
            raise ValueError(f"every prompt needs the same number of completions, got {sorted(counts)}")
        for i, (p, cs) in enumerate(zip(prompts, completions)):
            if not p or any(not c for c in cs):
                raise ValueError(f"example {i} has an empty prompt or completion")
        self.prompts = [list(map(int, p)) for p in prompts]
        self.completions = [[list(map(int, c)) for c in cs] for cs in completions]

    @classmethod
    def sft_from_task(cls, task, n: int, seed: int) -> "CompletionDataset":
        """n (prompt, reference answer) examples of a built-in task."""
        examples = task.sft_examples(n, seed)
        return cls([p for p, _ in examples], [[a] for _, a in examples])

    @classmethod
    def pairs_from_task(cls, task, n: int, seed: int) -> "CompletionDataset":
        """n (prompt, chosen, rejected) examples of a built-in task."""
        pairs = task.preference_pairs(n, seed)
        return cls([p for p, _, _ in pairs], [[c, r] for _, c, r in pairs])

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def n_completions(self) -> int:
        return len(self.completions[0])

    def prompt(self, i: int) -> list[int]:
        return self.prompts[i]

    def lengths(self, i: int) -> list[int]:
        return [len(self.prompts[i]) + len(c) for c in self.completions[i]]

    def sample(self, i: int) -> SequenceSample:
        p = self.prompts[i]
        return SequenceSample.single(
            i, input_ids=[torch.tensor(p + c, dtype=torch.int64) for c in self.completions[i]],
            prompt_len=[torch.tensor([len(p)]) for _ in self.completions[i]])
