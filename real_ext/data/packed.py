"""PackedBatch: variable-length sequences concatenated on dim 0 (no padding),
with per-token and per-sequence data carried along, and token-balanced
splitting into micro-batches or data-parallel shares."""
from __future__ import annotations

import dataclasses

import torch


def cu_seqlens_of(lengths) -> torch.Tensor:
    """int32 (B+1,) offsets of sequences with the given lengths."""
    lengths = torch.as_tensor(lengths, dtype=torch.int64)
    return torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).to(torch.int32)


def balanced_cuts(lengths: list[int], n: int, min_size: int = 1) -> list[int]:
    """Boundaries 0 = c_0 < ... < c_n = B of n contiguous groups of at least
    min_size sequences each, whose token counts are as even as a greedy sweep
    makes them."""
    if n < 1 or min_size < 1 or n * min_size > len(lengths):
        raise ValueError(f"cannot split {len(lengths)} sequences into {n} groups of at least {min_size}")
    total = sum(lengths)
    cuts, acc = [0], 0
    for i, length in enumerate(lengths):
        acc += length
        groups_left = n - len(cuts)
        seqs_left = len(lengths) - (i + 1)
        if groups_left == 0:
            break
        size = i + 1 - cuts[-1]
        # Close the group at the token target, or when the rest is just enough for the groups left.
        if size >= min_size and (seqs_left == groups_left * min_size
                                 or (acc >= total * len(cuts) / n and seqs_left >= groups_left * min_size)):
            cuts.append(i + 1)
    cuts.append(len(lengths))
    return cuts


@dataclasses.dataclass
class PackedBatch:
    input_ids: torch.Tensor                     # (T,) int64
    cu_seqlens: torch.Tensor                    # (B+1,) int32
    token_data: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)   # each (T, ...)
    seq_data: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)     # each (B, ...)

    def __post_init__(self):
        t, b = self.input_ids.shape[0], self.cu_seqlens.shape[0] - 1
        for key, value in self.token_data.items():
            if value.shape[0] != t:
                raise ValueError(f"token_data[{key!r}] has {value.shape[0]} rows, expected one per token ({t})")
        for key, value in self.seq_data.items():
            if value.shape[0] != b:
                raise ValueError(f"seq_data[{key!r}] has {value.shape[0]} rows, expected one per sequence ({b})")

    @staticmethod
    def from_sequences(sequences: list[list[int]], **seq_data) -> "PackedBatch":
        ids = torch.tensor([tok for seq in sequences for tok in seq], dtype=torch.int64)
        return PackedBatch(ids, cu_seqlens_of([len(s) for s in sequences]),
                           seq_data={k: torch.as_tensor(v) for k, v in seq_data.items()})

    @property
    def n_seqs(self) -> int:
        return self.cu_seqlens.shape[0] - 1

    @property
    def n_tokens(self) -> int:
        return self.input_ids.shape[0]

    @property
    def lengths(self) -> list[int]:
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).tolist()

    @property
    def max_len(self) -> int:
        return max(self.lengths, default=0)

    def select(self, start: int, stop: int) -> "PackedBatch":
        """Sequences [start, stop) as a batch of their own."""
        t0, t1 = int(self.cu_seqlens[start]), int(self.cu_seqlens[stop])
        return PackedBatch(self.input_ids[t0:t1], (self.cu_seqlens[start:stop + 1] - t0).to(torch.int32),
                           {k: v[t0:t1] for k, v in self.token_data.items()},
                           {k: v[start:stop] for k, v in self.seq_data.items()})

    def _group_starts(self, group_key: str | None) -> list[int]:
        """Index of the first sequence of each run of equal ``seq_data[group_key]``."""
        if group_key is None:
            return list(range(self.n_seqs))
        g = self.seq_data[group_key].tolist()
        return [i for i in range(len(g)) if i == 0 or g[i] != g[i - 1]]

    def n_groups(self, group_key: str | None = None) -> int:
        return len(self._group_starts(group_key))

    def split(self, n: int, group_key: str | None = None) -> list["PackedBatch"]:
        """n contiguous parts of whole sequences, balanced by tokens; with
        ``group_key``, sequences with equal consecutive values of that
        per-sequence key (e.g. a chosen/rejected pair) stay in one part."""
        starts = self._group_starts(group_key) + [self.n_seqs]
        lengths = self.lengths
        group_tokens = [sum(lengths[a:b]) for a, b in zip(starts[:-1], starts[1:])]
        cuts = [starts[c] for c in balanced_cuts(group_tokens, n)]
        return [self.select(a, b) for a, b in zip(cuts[:-1], cuts[1:])]

    def to(self, device) -> "PackedBatch":
        return PackedBatch(self.input_ids.to(device), self.cu_seqlens.to(device),
                           {k: v.to(device) for k, v in self.token_data.items()},
                           {k: v.to(device) for k, v in self.seq_data.items()})
