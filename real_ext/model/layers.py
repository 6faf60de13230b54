"""The decoder's layers as small modules over packed tokens (T, hidden), with
Megatron tensor parallelism: q/k/v/gate/up column-parallel, o/down
row-parallel, norms replicated. Attention uses real_ext.ops.varlen_attention."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from real_ext import ops
from real_ext.model.config import ModelConfig
from real_ext.parallel.comm import copy_to_tp, reduce_from_tp


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear; without autograd the compiled op, whose CPU kernel serves the
    few rows of a decode step's tail several times faster than BLAS does."""
    if torch.is_grad_enabled() or x.dim() != 2:
        return F.linear(x, weight, bias)
    return ops.linear(x, weight, bias)


class Linear(nn.Module):
    """Holds a (local) weight (out, in) and optional bias; applied functionally."""

    def __init__(self, out_features: int, in_features: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=True)
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.row_major: torch.Tensor | None = None  # set only by real_ext/model/row_major.py

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)

    def product_weight(self) -> torch.Tensor:
        """The weight a product reads: without autograd, the row-major copy
        of a transposed weight while row_major_products() holds one."""
        if self.row_major is None or torch.is_grad_enabled():
            return self.weight
        return self.row_major


class Norm(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.kind, self.eps = config.norm, config.norm_eps
        self.weight = nn.Parameter(torch.empty(config.hidden_size))
        self.bias = nn.Parameter(torch.empty(config.hidden_size)) if config.norm == "layer" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layer":
            return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        return ops.rms_norm(x, self.weight, self.eps)  # statistics in float32, HF's rounding order


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    """Inverse frequencies (head_dim / 2,) with the configured scaling (float32)."""
    d = config.head_dim
    inv = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    params = config.rope_params()
    kind = params.get("rope_type", "default")
    if kind == "linear":
        inv = inv / float(params["factor"])
    elif kind == "llama3":
        factor, low, high = float(params["factor"]), float(params["low_freq_factor"]), float(params["high_freq_factor"])
        old_len = float(params["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = torch.where(medium, smoothed, scaled)
    return inv


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype):
    """cos, sin of shape (T, head_dim) for positions (T,): computed in float32
    and rounded to the model's dtype, as HF does."""
    freqs = positions.float()[:, None] * inv_freq.to(positions.device)[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


class PackedInfo:
    """Per-forward facts about a packed batch, computed once and shared by layers.

    ``positions`` defaults to each token's index in its sequence; decoding
    passes the true positions of the new tokens, a shared-prefix layout
    (``shared``, a real_ext.model.shared_prefix.SharedPrefix) those of its rows. ``cache`` (a
    real_ext.generation.kv_cache.CacheStep) makes attention write the new keys
    and values to the KV cache and, when decoding, attend over the cache.
    ``last_only``: only each sequence's last output row is read (a prefill,
    which wants the next token's logits and the cache; no shared prefixes):
    the last block then attends and runs the rest of itself for those rows
    alone.
    """

    def __init__(self, cu_seqlens: torch.Tensor, positions: torch.Tensor | None = None, cache=None,
                 max_len: int | None = None, shared=None):
        self.cu_seqlens = cu_seqlens
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        if max_len is None:  # a host read: decoding passes 1 (and CUDA graph capture must)
            max_len = int(lengths.max()) if lengths.numel() else 0
        self.max_len = max_len
        if positions is None:
            total = int(cu_seqlens[-1])
            starts = torch.repeat_interleave(cu_seqlens[:-1].long(), lengths.long(), output_size=total)
            positions = torch.arange(total, device=cu_seqlens.device) - starts
        self.positions = positions
        self.cache = cache
        self.rope = None  # (cos, sin), filled by the model when it uses rope
        # A shared-prefix layout (shared_prefix.py): the segments of cu_seqlens
        # attend to the rows kv_index gathers, in segments cu_seqlens_k.
        self.kv_index = None if shared is None else shared.kv_index
        self.cu_seqlens_k = cu_seqlens if shared is None else shared.cu_seqlens_k
        self.max_len_k = max_len if shared is None else shared.max_len_k
        self.last_only = False


def fused_view(*params: torch.Tensor) -> torch.Tensor | None:
    """The parameters as one tensor (concatenated on dim 0) when they lie back to
    back in one storage (the flat buffer), without copying; else None. Called
    for every decode step and layer: addresses are compared, not storages."""
    first = params[0]
    ptr, size = first.data_ptr(), first.element_size()
    for p in params:
        if p.data_ptr() != ptr or not p.is_contiguous() or p.dtype != first.dtype:
            return None
        ptr += p.numel() * size
    storage = first.untyped_storage()
    if ptr > storage.data_ptr() + storage.nbytes():  # adjacent, but not one storage
        return None
    rows = sum(p.shape[0] for p in params)
    return torch.as_strided(first.detach(), (rows,) + tuple(first.shape[1:]), first.stride(),
                            first.storage_offset())


def grouped_linear(x: torch.Tensor, owner: nn.Module, linears) -> list[torch.Tensor]:
    """Each linear applied to x; without autograd, one matrix product over the
    weights' shared flat storage when they are stored back to back. The fused
    view is kept on ``owner`` while the weights stay where they are (a decode
    step would otherwise rebuild it, several us, for every layer); the model
    drops it when it moves its parameters (forget_fused)."""
    if torch.is_grad_enabled():
        return [m(x) for m in linears]
    weights, biases = [m.weight for m in linears], [m.bias for m in linears]
    key = tuple(w.data_ptr() for w in weights) + tuple(0 if b is None else b.data_ptr() for b in biases)
    cached = owner.__dict__.get("_fused")
    if cached is None or cached[0] != key:
        weight = fused_view(*weights)
        bias = None if biases[0] is None else fused_view(*biases)
        usable = weight is not None and (biases[0] is None or bias is not None)
        cached = (key, weight, bias, [w.shape[0] for w in weights]) if usable else (key, None, None, None)
        owner.__dict__["_fused"] = cached
    _, weight, bias, sizes = cached
    if weight is None:
        return [m(x) for m in linears]
    return list(linear(x, weight, bias).split(sizes, dim=-1))


def forget_fused(model: nn.Module) -> None:
    """Drop the fused views grouped_linear keeps (they hold the storage they view)."""
    for m in model.modules():
        m.__dict__.pop("_fused", None)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, heads: int, kv_heads: int, layer: int):
        super().__init__()
        self.layer = layer  # global layer index: which KV-cache pool is this layer's
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, config.head_dim
        self.q_proj = Linear(heads * config.head_dim, config.hidden_size, config.qkv_bias)
        self.k_proj = Linear(kv_heads * config.head_dim, config.hidden_size, config.qkv_bias)
        self.v_proj = Linear(kv_heads * config.head_dim, config.hidden_size, config.qkv_bias)
        self.o_proj = Linear(config.hidden_size, heads * config.head_dim, config.o_bias)

    def forward(self, x: torch.Tensor, info: PackedInfo, tp_group,
                last_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Attention over the packed batch; last_rows (each sequence's last
        token): the output of those rows only (keys and values of all of them
        still reach the cache)."""
        x = copy_to_tp(x, tp_group)
        t = x.shape[0]
        q, k, v = grouped_linear(x, self, (self.q_proj, self.k_proj, self.v_proj))
        q = q.reshape(t, self.heads, self.head_dim)
        k = k.reshape(t, self.kv_heads, self.head_dim)
        v = v.reshape(t, self.kv_heads, self.head_dim)
        if info.rope is not None:
            q, k = ops.rope(q, *info.rope), ops.rope(k, *info.rope)
        scale = 1.0 / math.sqrt(self.head_dim)
        cache = info.cache
        if cache is not None:
            k_pool, v_pool = cache.pools(self.layer)
            ops.kv_cache_append_(k_pool, v_pool, k, v, cache.slots, check_ids=cache.check_ids)
        if cache is not None and cache.decode:  # one new token per sequence, over its cache
            out = ops.decode_attention(q, k_pool, v_pool, cache.block_tables, cache.seq_lens, cache.block_size,
                                       softmax_scale=scale, check_ids=cache.check_ids)
        elif last_rows is not None:  # one query per sequence: causal alignment lets it see all its keys
            t = last_rows.numel()
            cu_q = torch.arange(t + 1, dtype=info.cu_seqlens.dtype, device=x.device)
            out = ops.varlen_attention(q.index_select(0, last_rows), k, v, cu_q, info.cu_seqlens, 1, info.max_len,
                                       causal=True, softmax_scale=scale)
        else:
            if info.kv_index is not None:  # shared prefixes: each segment's keys, [prefix, own tokens]
                k, v = k.index_select(0, info.kv_index), v.index_select(0, info.kv_index)
            out = ops.varlen_attention(q, k, v, info.cu_seqlens, info.cu_seqlens_k, info.max_len, info.max_len_k,
                                       causal=True, softmax_scale=scale)
        # Row-parallel: reduce the partial products first, add the bias once.
        out = reduce_from_tp(linear(out.reshape(t, -1), self.o_proj.product_weight()), tp_group)
        return out if self.o_proj.bias is None else out + self.o_proj.bias


_ACTIVATIONS = {
    "silu": F.silu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
}


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, intermediate: int):
        super().__init__()
        self.act = _ACTIVATIONS[config.activation]
        if config.gated_mlp:
            self.gate_proj = Linear(intermediate, config.hidden_size, config.mlp_bias)
        else:
            self.gate_proj = None
        self.up_proj = Linear(intermediate, config.hidden_size, config.mlp_bias)
        self.down_proj = Linear(config.hidden_size, intermediate, config.mlp_bias)

    def forward(self, x: torch.Tensor, tp_group) -> torch.Tensor:
        x = copy_to_tp(x, tp_group)
        if self.gate_proj is not None:
            gate, up = grouped_linear(x, self, (self.gate_proj, self.up_proj))
            h = ops.silu_mul(gate, up) if self.act is F.silu else self.act(gate) * up
        else:
            h = self.act(self.up_proj(x))
        out = reduce_from_tp(linear(h, self.down_proj.product_weight()), tp_group)
        return out if self.down_proj.bias is None else out + self.down_proj.bias


class Block(nn.Module):
    def __init__(self, config: ModelConfig, heads: int, kv_heads: int, intermediate: int, layer: int):
        super().__init__()
        self.input_layernorm = Norm(config)
        self.self_attn = Attention(config, heads, kv_heads, layer)
        self.post_attention_layernorm = Norm(config)
        self.mlp = MLP(config, intermediate)

    def forward(self, x: torch.Tensor, info: PackedInfo, tp_group,
                last_rows: torch.Tensor | None = None) -> torch.Tensor:
        """last_rows (each sequence's last token): the output of those rows only."""
        attn = self.self_attn(self.input_layernorm(x), info, tp_group, last_rows)
        if last_rows is not None:
            x = x.index_select(0, last_rows)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x), tp_group)
