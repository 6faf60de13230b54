"""SequenceSample: the runtime's container of data, packed with nested lengths.

A sample is what stays together on one data-parallel rank: a prompt with its
n responses (GRPO), a prompt with a chosen and a rejected answer (DPO), or a
single sequence. For every key, each sample has a list of sequence lengths
(``seqlens[key][i]``) and its entries are packed on dim 0 in sample order:
token keys (input_ids, log-probs, values) have one entry per token of each
sequence, sequence keys (prompt_len, reward) one entry per sequence (every
length 1). Keys of one sample may have different nestings.
"""
from __future__ import annotations

import dataclasses

import torch

from real_ext.data.packed import PackedBatch, cu_seqlens_of


@dataclasses.dataclass
class SequenceSample:
    ids: list[int]                                   # one id per sample
    seqlens: dict[str, list[list[int]]]              # key -> per sample, its sequences' lengths
    data: dict[str, torch.Tensor]                    # key -> entries of every sample, packed on dim 0

    def __post_init__(self):
        if set(self.seqlens) != set(self.data):
            raise ValueError(f"seqlens has keys {sorted(self.seqlens)} but data has {sorted(self.data)}")
        for key, lens in self.seqlens.items():
            if len(lens) != len(self.ids):
                raise ValueError(f"key {key!r}: lengths for {len(lens)} samples, expected {len(self.ids)}")
            total = sum(sum(l) for l in lens)
            if self.data[key].shape[0] != total:
                raise ValueError(f"key {key!r}: {self.data[key].shape[0]} entries, the lengths add up to {total}")

    @staticmethod
    def single(sid: int, **keys: tuple[list[torch.Tensor]]) -> "SequenceSample":
        """One sample from key=[tensor per sequence, ...]."""
        return SequenceSample([sid], {k: [[t.shape[0] for t in seqs]] for k, seqs in keys.items()},
                              {k: torch.cat(seqs) for k, seqs in keys.items()})

    @property
    def keys(self) -> set[str]:
        return set(self.data)

    def total_lengths(self, key: str) -> list[int]:
        return [sum(lens) for lens in self.seqlens[key]]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.data.values())

    def _offsets(self, key: str) -> list[int]:
        offsets = [0]
        for n in self.total_lengths(key):
            offsets.append(offsets[-1] + n)
        return offsets

    def unpack(self) -> list["SequenceSample"]:
        """One container per sample (views of this one's data)."""
        offsets = {k: self._offsets(k) for k in self.data}
        return [SequenceSample([sid], {k: [self.seqlens[k][i]] for k in self.data},
                               {k: self.data[k][offsets[k][i]:offsets[k][i + 1]] for k in self.data})
                for i, sid in enumerate(self.ids)]

    def select_keys(self, keys) -> "SequenceSample":
        missing = set(keys) - self.keys
        if missing:
            raise KeyError(f"samples {self.ids[:4]}... hold no keys {sorted(missing)} (they hold {sorted(self.keys)})")
        return SequenceSample(list(self.ids), {k: self.seqlens[k] for k in keys}, {k: self.data[k] for k in keys})

    def update_(self, other: "SequenceSample") -> None:
        """Add (or replace) the keys of ``other``, which holds the same samples."""
        if other.ids != self.ids:
            raise ValueError(f"cannot merge samples {other.ids} into samples {self.ids}")
        self.seqlens.update(other.seqlens)
        self.data.update(other.data)

    def to(self, device) -> "SequenceSample":
        return SequenceSample(list(self.ids), dict(self.seqlens), {k: v.to(device) for k, v in self.data.items()})

    @staticmethod
    def gather(samples: list["SequenceSample"], keys=None) -> "SequenceSample":
        """The samples' given keys (default: all of the first's) in one container."""
        if not samples:
            raise ValueError("gather needs at least one sample")
        keys = sorted(samples[0].keys if keys is None else keys)
        parts = [s.select_keys(keys) for s in samples]
        return SequenceSample([i for s in parts for i in s.ids],
                              {k: [lens for s in parts for lens in s.seqlens[k]] for k in keys},
                              {k: torch.cat([s.data[k] for s in parts]) for k in keys})

    def packed(self, token_keys=(), seq_keys=(), ids_key: str = "input_ids") -> PackedBatch:
        """Every sequence of every sample in one PackedBatch (sample order, then
        sequence order), with ``sample_id`` and ``seq_index`` per sequence."""
        lengths = [n for lens in self.seqlens[ids_key] for n in lens]
        for key in token_keys:
            if self.seqlens[key] != self.seqlens[ids_key]:
                raise ValueError(f"token key {key!r} is not nested like {ids_key!r}")
        counts = [len(lens) for lens in self.seqlens[ids_key]]
        for key in seq_keys:
            if [len(lens) for lens in self.seqlens[key]] != counts:
                raise ValueError(f"sequence key {key!r} does not have one entry per sequence of {ids_key!r}")
        batch = PackedBatch(self.data[ids_key], cu_seqlens_of(lengths),
                            {k: self.data[k] for k in token_keys}, {k: self.data[k] for k in seq_keys})
        batch.seq_data["sample_id"] = torch.tensor([sid for sid, n in zip(self.ids, counts) for _ in range(n)],
                                                   dtype=torch.int64, device=self.data[ids_key].device)
        batch.seq_data["seq_index"] = torch.tensor([k for n in counts for k in range(n)], dtype=torch.int64,
                                                   device=self.data[ids_key].device)
        return batch

    def with_packed(self, key: str, values: torch.Tensor, like: str = "input_ids") -> "SequenceSample":
        """A container of the same samples holding ``values`` (packed like key ``like``) as ``key``."""
        return SequenceSample(list(self.ids), {key: self.seqlens[like]}, {key: values})
