"""Hugging Face checkpoints in and out, and seeded initialisation.

Loading reads only the boxes this rank's shards need (safetensors slicing; a
``pytorch_model.bin`` is memory-mapped). GPT-2's fused, transposed Conv1D
weights map onto the canonical q/k/v/o/up/down names here and back on save.
A value-head model is saved as the Hugging Face backbone plus
``value_head.safetensors`` (one tensor, ``value_head.weight``, shape (1, hidden)).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import zlib

import torch
import torch.distributed as dist

from real_ext.model.params import ParamSpec

VALUE_HEAD_FILE = "value_head.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json", "generation_config.json",
                   "chat_template.jinja")


class CheckpointError(ValueError):
    """A checkpoint that does not match the model its config describes."""


# ------------------------------------------------------------------ name mapping


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a canonical parameter lives in the HF checkpoint."""
    key: str
    transpose: bool = False   # stored as (in, out) (GPT-2 Conv1D)
    offset: int = 0           # start of this part along the canonical first dim (GPT-2 fused qkv)
    fused: int = 1            # how many parts share the HF tensor along that dim


def hf_source(family: str, spec: ParamSpec, hidden: int) -> Source:
    name = spec.tied_to or spec.name
    if family != "gpt2":
        return Source(name)
    if name == "model.embed_tokens.weight":
        return Source("wte.weight")
    if name == "model.embed_positions.weight":
        return Source("wpe.weight")
    if name.startswith("model.norm."):
        return Source("ln_f." + name.rsplit(".", 1)[1])
    _, _, i, module, *rest = name.split(".")
    leaf = ".".join(rest)
    prefix = f"h.{i}."
    if module == "input_layernorm":
        return Source(prefix + "ln_1." + leaf)
    if module == "post_attention_layernorm":
        return Source(prefix + "ln_2." + leaf)
    proj, kind = rest[0], rest[1]
    if proj in ("q_proj", "k_proj", "v_proj"):
        part = ("q_proj", "k_proj", "v_proj").index(proj)
        return Source(prefix + "attn.c_attn." + kind, transpose=kind == "weight", offset=part * hidden, fused=3)
    hf_module = {"o_proj": "attn.c_proj", "up_proj": "mlp.c_fc", "down_proj": "mlp.c_proj"}[proj]
    return Source(prefix + hf_module + "." + kind, transpose=kind == "weight")


def hf_shape(spec: ParamSpec, src: Source) -> tuple[int, ...]:
    rows = spec.shape[0] * src.fused
    if len(spec.shape) == 1:
        return (rows,)
    return (spec.shape[1], rows) if src.transpose else (rows, spec.shape[1])


# ------------------------------------------------------------------ reading


class TensorReader:
    """Reads named tensors, or slices of them, from a checkpoint folder."""

    def __init__(self, path: str):
        self.path = path
        self.files: dict[str, str] = {}   # key -> file
        self._open: dict[str, object] = {}
        self._shapes: dict[str, tuple] = {}
        single, index = os.path.join(path, "model.safetensors"), os.path.join(path, "model.safetensors.index.json")
        bin_single, bin_index = os.path.join(path, "pytorch_model.bin"), os.path.join(path, "pytorch_model.bin.index.json")
        if os.path.exists(index) or os.path.exists(bin_index):
            with open(index if os.path.exists(index) else bin_index) as f:
                self.files = {k: os.path.join(path, v) for k, v in json.load(f)["weight_map"].items()}
        elif os.path.exists(single) or os.path.exists(bin_single):
            file = single if os.path.exists(single) else bin_single
            self.files = {k: file for k in self._keys(file)}
        else:
            raise CheckpointError(f"no model.safetensors, model.safetensors.index.json or pytorch_model.bin in {path!r}")

    def _handle(self, file: str):
        if file not in self._open:
            if file.endswith(".safetensors"):
                from safetensors import safe_open
                self._open[file] = safe_open(file, framework="pt")
            else:
                self._open[file] = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
        return self._open[file]

    def _keys(self, file: str):
        h = self._handle(file)
        return list(h.keys())

    def has(self, key: str) -> bool:
        return key in self.files

    def shape(self, key: str) -> tuple[int, ...]:
        h = self._handle(self.files[key])
        if isinstance(h, dict):
            return tuple(h[key].shape)
        return tuple(h.get_slice(key).get_shape())

    def read(self, key: str, index: tuple) -> torch.Tensor:
        h = self._handle(self.files[key])
        if isinstance(h, dict):
            return h[key][index].clone()
        return h.get_slice(key)[index]


def _resolve_key(reader: TensorReader, key: str) -> str | None:
    for candidate in (key, "transformer." + key):
        if reader.has(candidate):
            return candidate
    return None


def read_box(reader: TensorReader, src: Source, key: str, rows: tuple[int, int], cols: tuple[int, int],
             ndim: int) -> torch.Tensor:
    """The box (rows x cols of the canonical parameter) as a canonical-layout tensor."""
    r0, r1 = rows[0] + src.offset, rows[1] + src.offset
    if ndim == 1:
        return reader.read(key, (slice(r0, r1),))
    if src.transpose:
        return reader.read(key, (slice(cols[0], cols[1]), slice(r0, r1))).t()
    return reader.read(key, (slice(r0, r1), slice(cols[0], cols[1])))


def load_params(model, path: str) -> None:
    reader = TensorReader(path)
    value_reader = None
    if model.head == "value" and os.path.exists(os.path.join(path, VALUE_HEAD_FILE)):
        from safetensors import safe_open
        value_reader = safe_open(os.path.join(path, VALUE_HEAD_FILE), framework="pt")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for shard in model.shards:
            spec = shard.spec
            if spec.name == "value_head.weight":
                if value_reader is None:  # a critic started from an LM checkpoint
                    _init_shard(model, shard, seed=0, std=1.0 / (model.config.hidden_size + 1))
                else:
                    params[spec.name].copy_(value_reader.get_tensor("value_head.weight").to(model.flat.dtype))
                continue
            src = hf_source(model.config.family, spec, model.config.hidden_size)
            key = _resolve_key(reader, src.key)
            want = hf_shape(spec, src)
            if key is None:
                raise CheckpointError(f"checkpoint {path!r} lacks tensor {src.key!r} (parameter {spec.name}, "
                                      f"expected shape {list(want)})")
            got = reader.shape(key)
            if got != want:
                raise CheckpointError(f"checkpoint tensor {key!r} has shape {list(got)}, but config.json implies "
                                      f"{list(want)} (parameter {spec.name})")
            box = read_box(reader, src, key, shard.rows, shard.cols, len(spec.shape))
            target = params[spec.name]
            target.zero_()
            target[:box.shape[0]].copy_(box.to(target.dtype))


# ------------------------------------------------------------------ init


def _init_shard(model, shard, seed: int, std: float) -> None:
    """Fill one shard from the seeded full tensor of its parameter."""
    spec = shard.spec
    name = spec.tied_to or spec.name
    leaf = name.rsplit(".", 1)[1]
    if leaf == "bias":
        full = torch.zeros(spec.shape)
    elif "norm" in name:
        full = torch.ones(spec.shape)
    else:
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        full = torch.randn(spec.shape, generator=g) * std
    if full.dim() == 1:
        box = full[shard.rows[0]:shard.rows[1]]
    else:
        box = full[shard.rows[0]:shard.rows[1], shard.cols[0]:shard.cols[1]]
    target = dict(model.named_parameters())[spec.name]
    with torch.no_grad():
        target.zero_()
        target[:box.shape[0]].copy_(box.to(target.dtype))


def init_params(model, seed: int, std: float) -> None:
    for shard in model.shards:
        value = shard.spec.name == "value_head.weight"
        _init_shard(model, shard, seed, 1.0 / (model.config.hidden_size + 1) if value else std)


# ------------------------------------------------------------------ gathering and saving


def full_state_dict(model) -> dict[str, torch.Tensor] | None:
    """Canonical full parameters, assembled on the mesh's first rank (None on
    the others). Collective over the mesh."""
    pieces = []
    if model.ctx.coord.dp == 0:
        params = dict(model.named_parameters())
        for s in model.shards:
            if s.spec.tied_to or (s.spec.split == "rep" and model.ctx.coord.tp != 0):
                continue
            local = params[s.spec.name].detach().cpu()
            pieces.append((s.spec, s.rows, s.cols, local[:s.rows[1] - s.rows[0]].clone()))
    group, first = model.ctx.mesh_group, model.ctx.layout.mesh[0]
    if group is None:
        gathered = [pieces]
    else:
        gathered = [None] * model.ctx.layout.size if model.ctx.rank == first else None
        dist.gather_object(pieces, gathered, dst=first, group=group)
        if model.ctx.rank != first:
            return None
    state: dict[str, torch.Tensor] = {}
    for part in gathered:
        for spec, rows, cols, box in part:
            full = state.setdefault(spec.name, torch.zeros(spec.shape, dtype=box.dtype))
            if full.dim() == 1:
                full[rows[0]:rows[1]] = box
            else:
                full[rows[0]:rows[1], cols[0]:cols[1]] = box
    return state


def to_hf_state_dict(model, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Canonical -> Hugging Face names and layouts (fused GPT-2 qkv rebuilt)."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, list] = {}
    prefix = "transformer." if model.config.family == "gpt2" else ""
    for spec in model.shard_map.specs:
        if spec.tied_to or spec.name == "value_head.weight":
            continue
        src = hf_source(model.config.family, spec, model.config.hidden_size)
        t = state[spec.name]
        if src.fused > 1:
            fused.setdefault(src.key, [None] * src.fused)[src.offset // spec.shape[0]] = t
            continue
        out[prefix + src.key] = (t.t() if src.transpose else t).contiguous()
    for key, parts in fused.items():
        cat = torch.cat(parts, dim=0)
        out[prefix + key] = (cat.t() if key.endswith("weight") else cat).contiguous()
    return out


def save_pretrained(model, path: str, *, max_shard_bytes: int) -> None:
    state = full_state_dict(model)
    if state is None:
        return
    from safetensors.torch import save_file
    tmp = path.rstrip("/") + ".tmp-" + str(os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    hf = to_hf_state_dict(model, state)
    _write_sharded(hf, tmp, max_shard_bytes, save_file)
    if model.head == "value":
        save_file({"value_head.weight": state["value_head.weight"].contiguous()}, os.path.join(tmp, VALUE_HEAD_FILE))
    config = model.config.hf_dict()
    config["torch_dtype"] = str(model.flat.dtype).replace("torch.", "")
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    source = getattr(model, "source_path", None)
    for name in TOKENIZER_FILES:
        if source and os.path.exists(os.path.join(source, name)):
            shutil.copy(os.path.join(source, name), os.path.join(tmp, name))
    # Written under a temporary name and renamed: an interrupted save leaves any
    # earlier checkpoint at `path` intact.
    if os.path.exists(path):
        old = path.rstrip("/") + ".old-" + str(os.getpid())
        os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old)
    else:
        os.rename(tmp, path)


def _write_sharded(tensors: dict[str, torch.Tensor], folder: str, max_bytes: int, save_file) -> None:
    groups, current, size = [], {}, 0
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > max_bytes:
            groups.append(current)
            current, size = {}, 0
        current[key] = t
        size += nbytes
    groups.append(current)
    if len(groups) == 1:
        save_file(groups[0], os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map, total = {}, 0
    for i, group in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file(group, os.path.join(folder, name), metadata={"format": "pt"})
        for key, t in group.items():
            weight_map[key] = name
            total += t.numel() * t.element_size()
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
