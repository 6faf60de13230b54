"""Layout: which box of which parameter every worker holds under one (mesh,
dp, tp, pp) strategy, and where it sits in that worker's flat buffer.

Parameters are named canonically (the model's names: Hugging Face names for
the LLaMA, Qwen2 and Mistral families; see real_ext/model/params.py). A tied
LM head kept as a copy on the last pipeline stage is a second holder of the
embedding, not a parameter of its own, so layouts with and without the copy
describe the same model.

A row-parallel weight (o_proj, down_proj) is stored transposed in the flat
buffer (see real_ext/model/shards.py), so a layout from a model config indexes
it as (in_features, out_features): its tensor-parallel shards are row ranges,
contiguous in every buffer. ``transposed`` names those parameters;
``shard_of`` and ``params_of`` take and give them in Hugging Face's
(out, in) orientation.
"""
from __future__ import annotations

import dataclasses
import json
import os

import torch

from real_ext.model.config import ModelConfig
from real_ext.model.shards import ModelShards
from real_ext.parallel.layout import ParallelLayout


class LayoutMismatchError(ValueError):
    """Two layouts that do not describe the same model, or buffers that do not fit a layout."""


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    param: str                   # canonical parameter name
    rows: tuple[int, int]        # box in the full parameter
    cols: tuple[int, int]
    local_shape: tuple[int, ...]  # the tensor a worker holds (may have padding rows)
    offset: int                  # element offset in the worker's flat buffer

    @property
    def numel(self) -> int:
        n = 1
        for d in self.local_shape:
            n *= d
        return n

    @property
    def ld(self) -> int:
        return self.local_shape[1] if len(self.local_shape) == 2 else 1


class Layout:
    def __init__(self, params: dict[str, tuple[int, ...]], shards: dict[int, list[ShardInfo]],
                 dtype: torch.dtype = torch.float32, workers_per_node: int = 8,
                 transposed: frozenset[str] = frozenset()):
        if workers_per_node < 1:
            raise ValueError(f"workers_per_node must be >= 1, got {workers_per_node}")
        self.params = {name: tuple(shape) for name, shape in params.items()}
        self.transposed = frozenset(transposed)
        self.index = {name: i for i, name in enumerate(self.params)}
        self.shards = {int(rank): list(s) for rank, s in shards.items()}
        self.dtype, self.workers_per_node = dtype, workers_per_node
        for rank, lst in self.shards.items():
            for s in lst:
                if s.param not in self.params:
                    raise LayoutMismatchError(f"rank {rank} holds a shard of {s.param!r}, which the layout's "
                                              f"parameter list lacks")

    # ------------------------------------------------------------ construction

    @staticmethod
    def from_config(hf_config, mesh: list[int], dp: int, tp: int, pp: int, *, head: str = "lm",
                    dtype: torch.dtype = torch.float32, workers_per_node: int = 8) -> "Layout":
        """The layout a ReaLModel uses; hf_config is a config.json dict, its
        path or folder, or a ModelConfig."""
        config = _model_config(hf_config)
        return Layout.from_shards(ModelShards(config, head, ParallelLayout(tuple(mesh), dp, tp, pp)), dtype,
                                  workers_per_node)

    @staticmethod
    def from_shards(shards_of: ModelShards, dtype: torch.dtype = torch.float32,
                    workers_per_node: int = 8) -> "Layout":
        """The layout of a model's shards; transposed weights indexed as stored."""
        def stored(shape, transposed):
            return tuple(shape[::-1]) if transposed else tuple(shape)

        params = {s.name: stored(s.shape, s.transposed) for s in shards_of.specs if not s.tied_to}
        transposed = frozenset(s.name for s in shards_of.specs if s.transposed)
        shards = {}
        for rank in shards_of.layout.mesh:
            shards[rank] = [ShardInfo(s.spec.tied_to or s.spec.name, s.cols if s.spec.transposed else s.rows,
                                      s.rows if s.spec.transposed else s.cols,
                                      stored(s.local_shape, s.spec.transposed), s.offset)
                            for s in shards_of.shards(rank)]
        return Layout(params, shards, dtype, workers_per_node, transposed)

    @staticmethod
    def from_specs(params: dict[str, tuple[int, ...]], boxes: dict[int, list[tuple]],
                   dtype: torch.dtype = torch.float32, workers_per_node: int = 8) -> "Layout":
        """Explicit layout: boxes[rank] lists (name, (r0, r1), (c0, c1)) in flat
        order; each shard is stored densely (local shape = the box)."""
        shards = {}
        for rank, lst in boxes.items():
            offset, out = 0, []
            for name, rows, cols in lst:
                local = (rows[1] - rows[0],) if len(params[name]) == 1 else (rows[1] - rows[0], cols[1] - cols[0])
                shard = ShardInfo(name, tuple(rows), tuple(cols), local, offset)
                out.append(shard)
                offset += shard.numel
            shards[rank] = out
        return Layout(params, shards, dtype, workers_per_node)

    # ------------------------------------------------------------ queries

    @property
    def ranks(self) -> list[int]:
        return sorted(self.shards)

    def numel(self, rank: int) -> int:
        lst = self.shards.get(rank, [])
        return max((s.offset + s.numel for s in lst), default=0)

    def same_model(self, other: "Layout") -> bool:
        return self.params == other.params and self.transposed == other.transposed

    def shard_of(self, state_dict: dict[str, torch.Tensor], rank: int) -> torch.Tensor:
        """The flat buffer worker `rank` holds, cut from full parameters."""
        flat = torch.zeros(self.numel(rank), dtype=self.dtype)
        for s in self.shards[rank]:
            full = state_dict[s.param]
            expected = self.params[s.param][::-1] if s.param in self.transposed else self.params[s.param]
            if tuple(full.shape) != expected:
                raise LayoutMismatchError(f"state_dict[{s.param!r}] has shape {list(full.shape)}, the layout expects "
                                          f"{list(expected)}")
            if s.param in self.transposed:
                full = full.t()
            box = full[s.rows[0]:s.rows[1]] if full.dim() == 1 else full[s.rows[0]:s.rows[1], s.cols[0]:s.cols[1]]
            view = flat[s.offset:s.offset + s.numel].view(s.local_shape)
            view[:box.shape[0]] = box
        return flat

    def params_of(self, buffer: torch.Tensor, rank: int) -> dict[str, torch.Tensor]:
        """Views of worker `rank`'s flat buffer, one per parameter it holds."""
        self.check_buffer(buffer, rank, "buffer")
        views = {}
        for s in self.shards[rank]:
            view = buffer[s.offset:s.offset + s.numel].view(s.local_shape)
            views[s.param] = view.t() if s.param in self.transposed else view
        return views

    def check_buffer(self, buffer: torch.Tensor, rank: int, name: str) -> None:
        if buffer.dim() != 1 or buffer.numel() != self.numel(rank):
            raise LayoutMismatchError(f"{name} for rank {rank} must be 1-D with {self.numel(rank)} elements, got "
                                      f"shape {list(buffer.shape)}")
        if buffer.dtype != self.dtype:
            raise LayoutMismatchError(f"{name} for rank {rank} has dtype {buffer.dtype}, the layout's is {self.dtype}")

    # ------------------------------------------------------------ planner encoding

    def params_tensor(self) -> torch.Tensor:
        return torch.tensor([[shape[0], shape[1] if len(shape) == 2 else 1] for shape in self.params.values()],
                            dtype=torch.int64).reshape(-1, 2)

    def shards_tensor(self) -> torch.Tensor:
        rows = []
        for rank in self.ranks:
            for s in self.shards[rank]:
                if s.rows[1] > s.rows[0] and s.cols[1] > s.cols[0]:
                    rows.append([rank, self.index[s.param], s.rows[0], s.rows[1], s.cols[0], s.cols[1], s.offset, s.ld])
        return torch.tensor(rows, dtype=torch.int64).reshape(-1, 8)


def _model_config(hf_config) -> ModelConfig:
    if isinstance(hf_config, ModelConfig):
        return hf_config
    if isinstance(hf_config, dict):
        return ModelConfig.from_hf_dict(hf_config)
    if isinstance(hf_config, (str, os.PathLike)):
        return ModelConfig.from_pretrained(str(hf_config))
    if hasattr(hf_config, "to_dict"):  # a transformers PretrainedConfig
        return ModelConfig.from_hf_dict(json.loads(json.dumps(hf_config.to_dict(), default=str)))
    raise TypeError(f"hf_config must be a dict, a path, a ModelConfig or a transformers config, got "
                    f"{type(hf_config).__name__}")
