"""Which slice (a box) of which parameter a rank holds under a layout, and
where it sits in that rank's flat parameter buffer.

A box is a row range x a column range in the parameter's full index space (1-D
parameters are one column wide). Flat-buffer order: the rank's parameters in
canonical order (``param_specs``), each shard contiguous. A vocab-parallel
shard's local rows cover vocab_padded / tp rows; rows past the real vocabulary
are padding, zero, and not part of its box.

A shard is stored row-major in its local shape, except a row-parallel weight
(o_proj, down_proj: split along its input features), which is stored
transposed, as (in_features / tp, out_features) rows. Stored that way, every
tensor-parallel split of every weight is a range of stored rows, so the slice
one layout holds of another layout's shard is one contiguous run of memory:
reallocation sends it as it lies, where a column slice of a row-major weight
would be copied into a staging buffer first. The model sees the usual
(out, in) tensor, a transposed view (``Shard.view``); ATen's and real_ext's
products take it without a copy.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import torch

from real_ext.model.config import ModelConfig
from real_ext.model.params import COLUMN, KV_COLUMN, REPLICATED, ROW, VOCAB, ParamSpec, param_specs, stage_units
from real_ext.parallel.layout import LayoutError, ParallelLayout


@dataclasses.dataclass(frozen=True)
class Shard:
    spec: ParamSpec
    rows: tuple[int, int]          # [start, stop) in the full parameter (first dim)
    cols: tuple[int, int]          # [start, stop) in the second dim ((0, 1) for 1-D)
    local_shape: tuple[int, ...]   # shape of the local tensor (vocab shards: padded rows)
    offset: int                    # element offset in the flat buffer

    @property
    def numel(self) -> int:
        return math.prod(self.local_shape)

    def view(self, flat: torch.Tensor) -> torch.Tensor:
        """This shard as a (local_shape) tensor over its part of the flat buffer
        (a transposed view for a row-parallel weight, see module docstring)."""
        piece = flat[self.offset:self.offset + self.numel]
        if self.spec.transposed:
            return piece.view(self.local_shape[::-1]).t()
        return piece.view(self.local_shape)

    @property
    def box_numel(self) -> int:
        return (self.rows[1] - self.rows[0]) * (self.cols[1] - self.cols[0])


def padded_vocab(vocab_size: int, tp: int) -> int:
    return -(-vocab_size // tp) * tp


def check_tp(c: ModelConfig, tp: int) -> None:
    """Raise LayoutError unless tensor parallelism of degree tp can split this model."""
    if c.num_heads % tp:
        raise LayoutError(f"tp={tp} must divide num_attention_heads={c.num_heads}")
    if c.num_kv_heads % tp and tp % c.num_kv_heads:
        raise LayoutError(f"tp={tp} and num_key_value_heads={c.num_kv_heads} must divide one another "
                          f"(kv heads are split, or replicated when tp exceeds them)")
    if c.intermediate_size % tp:
        raise LayoutError(f"tp={tp} must divide intermediate_size={c.intermediate_size}")


def _box(spec: ParamSpec, c: ModelConfig, tp: int, r: int):
    """(rows, cols, local_shape) of tp rank r's shard of spec."""
    n0 = spec.shape[0]
    n1 = spec.shape[1] if len(spec.shape) == 2 else 1
    if spec.split == REPLICATED:
        return (0, n0), (0, n1), spec.shape
    if spec.split == COLUMN:
        per = n0 // tp
        return (r * per, (r + 1) * per), (0, n1), (per,) + spec.shape[1:]
    if spec.split == KV_COLUMN:
        if c.num_kv_heads % tp == 0:
            heads = c.num_kv_heads // tp
            first = r * heads
        else:  # tp > kv heads: each rank holds one head, shared by tp / kv ranks
            heads, first = 1, r // (tp // c.num_kv_heads)
        rows = (first * c.head_dim, (first + heads) * c.head_dim)
        return rows, (0, n1), (heads * c.head_dim,) + spec.shape[1:]
    if spec.split == ROW:
        per = n1 // tp
        return (0, n0), (r * per, (r + 1) * per), (n0, per)
    if spec.split == VOCAB:
        per = padded_vocab(n0, tp) // tp
        start = min(r * per, n0)
        return (start, min((r + 1) * per, n0)), (0, n1), (per,) + spec.shape[1:]
    raise ValueError(f"unknown split {spec.split!r}")


class ModelShards:
    """The shards every rank of a layout holds for one model (config + head)."""

    def __init__(self, config: ModelConfig, head: str, layout: ParallelLayout):
        check_tp(config, layout.tp)
        self.config, self.head, self.layout = config, head, layout
        self.specs = param_specs(config, head, layout.pp)
        self.stages = stage_units(config, layout.pp, head)

    def stage_units(self, pp_rank: int) -> range:
        return self.stages[pp_rank]

    @functools.lru_cache(maxsize=None)
    def shards(self, rank: int) -> tuple[Shard, ...]:
        coord = self.layout.coord(rank)
        units = self.stages[coord.pp]
        out, offset = [], 0
        for spec in self.specs:
            if spec.unit not in units:
                continue
            rows, cols, local = _box(spec, self.config, self.layout.tp, coord.tp)
            shard = Shard(spec, rows, cols, tuple(local), offset)
            out.append(shard)
            offset += shard.numel
        return tuple(out)

    def numel(self, rank: int) -> int:
        shards = self.shards(rank)
        return shards[-1].offset + shards[-1].numel if shards else 0
