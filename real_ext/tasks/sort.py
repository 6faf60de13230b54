"""The "sort" task: sort a list of digits.

    prompt:  <bos> sort 3 9 1 4 =
    answer:  1 3 4 9 <eos>

Lists have min_len..max_len digits (default 3..8, drawn uniformly; digits
uniform with repeats), so a prompt has 6..11 tokens and prompt + answer at
most 20. The reward is the fraction of answer positions right (see
Task.reward): a model that only gets the first digits right scores partially.
"""
from __future__ import annotations

import random
from typing import Sequence

from real_ext.tasks.base import Task

DIGITS = tuple(str(d) for d in range(10))


class SortTask(Task):
    name = "sort"

    def __init__(self, min_len: int = 3, max_len: int = 8):
        if not 1 <= min_len <= max_len:
            raise ValueError(f"sort task needs 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
        if 2 * max_len + 4 > self.max_positions:
            raise ValueError(f"sort task max_len={max_len} does not fit the {self.max_positions}-token context")
        super().__init__(("sort", "=") + DIGITS)
        self.min_len, self.max_len = min_len, max_len
        self.sort_id, self.equals_id = self.token_to_id["sort"], self.token_to_id["="]
        self.digit_ids = [self.token_to_id[d] for d in DIGITS]   # in digit order: sorting ids sorts digits

    def sample_prompt(self, rng: random.Random) -> list[int]:
        n = rng.randint(self.min_len, self.max_len)
        return [self.bos_id, self.sort_id] + [rng.choice(self.digit_ids) for _ in range(n)] + [self.equals_id]

    def _digits(self, prompt_ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in prompt_ids]
        digits = ids[2:-1]
        if (len(ids) < 4 or ids[0] != self.bos_id or ids[1] != self.sort_id or ids[-1] != self.equals_id
                or any(d not in self.digit_ids for d in digits)):
            raise ValueError(f"not a sort prompt (expected '<bos> sort d1 ... dn ='): {self.decode(ids)!r}")
        return digits

    def reference_answer(self, prompt_ids: Sequence[int]) -> list[int]:
        return sorted(self._digits(prompt_ids)) + [self.eos_id]

    def wrong_answer(self, prompt_ids: Sequence[int], rng: random.Random,
                     answer: Sequence[int] | None = None) -> list[int]:
        """One of the mistakes a half-trained model makes: the input copied,
        two neighbours swapped, a digit dropped, duplicated or changed; made
        to ``answer`` (default: the reference), so mistakes can pile up."""
        digits = self._digits(prompt_ids)
        base = sorted(digits) if answer is None else [int(a) for a in answer if int(a) != self.eos_id]
        kind = rng.choice(("copy", "swap", "drop", "repeat", "change"))
        if kind == "copy":
            wrong = list(digits)
        elif kind == "swap":
            i = rng.randrange(len(base) - 1) if len(base) > 1 else 0
            wrong = base[:i] + base[i:i + 2][::-1] + base[i + 2:]
        elif kind == "drop" and len(base) > 1:
            i = rng.randrange(len(base))
            wrong = base[:i] + base[i + 1:]
        elif kind == "repeat" and base:
            i = rng.randrange(len(base))
            wrong = base[:i + 1] + base[i:]
        else:
            wrong = list(base)
        if wrong == base and base:   # "change" always differs; the others may not (equal digits, sorted input)
            i = rng.randrange(len(base))
            wrong[i] = rng.choice([d for d in self.digit_ids if d != base[i]])
        elif wrong == base:
            wrong = [rng.choice(self.digit_ids)]
        return wrong + [self.eos_id]
