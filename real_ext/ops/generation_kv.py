"""Generation ops over a paged KV cache: ``kv_cache_append_`` and
``decode_attention``, with their fake (meta) rules. Neither is differentiable:
they run inside generation, under ``torch.no_grad``."""
import math

import torch

_append = torch.ops.real_ext.kv_cache_append_
_decode = torch.ops.real_ext.decode_attention


def kv_cache_append_(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slots: torch.Tensor,
    *,
    check_ids: bool = True,
) -> None:
    """Writes ``k[t]`` into ``k_cache[slots[t]]`` and ``v[t]`` into ``v_cache[slots[t]]``, in place.

    k_cache, v_cache: contiguous ``(num_slots, heads_kv, head_dim)`` (a
    ``(num_blocks, block_size, heads_kv, head_dim)`` pool viewed flat; slot =
    block * block_size + offset). k, v: ``(T, heads_kv, head_dim)`` in the cache's
    dtype (float32, bfloat16; float16 on CUDA). slots: int64 ``(T,)``, distinct,
    in ``[0, num_slots)``. ``check_ids=False``: on CUDA, trust the slots instead
    of copying them to the host to check them (a bad slot then writes out of
    bounds); the CPU always checks.
    """
    _append(k_cache, v_cache, k, v, slots, bool(check_ids))


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    block_size: int,
    *,
    softmax_scale: float | None = None,
    check_ids: bool = True,
) -> torch.Tensor:
    """One query per sequence attending to all of its cached tokens.

    q: ``(B, heads_q, head_dim)``, ``heads_q % heads_kv == 0`` (GQA). Sequence ``b``
    has ``seq_lens[b] >= 1`` tokens; token ``j`` sits in slot
    ``block_tables[b, j // block_size] * block_size + j % block_size`` of the caches
    (see ``kv_cache_append_``). block_tables: int32 ``(B, max_blocks)`` (entries past
    a sequence's last block are ignored); seq_lens: int32 ``(B,)``. Softmax in
    float32 with ``softmax_scale`` (default ``1/sqrt(head_dim)``). Returns ``(B,
    heads_q, head_dim)`` in q's dtype. ``check_ids=False``: on CUDA, trust
    block_tables and seq_lens instead of copying them to the host to check them
    (the keys are then split for ``max_blocks * block_size`` tokens); the CPU
    always checks.
    """
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(q.shape[-1]) if q.dim() == 3 and q.shape[-1] > 0 else 1.0
    return _decode(q, k_cache, v_cache, block_tables, seq_lens, int(block_size), float(softmax_scale), bool(check_ids))


@torch.library.register_fake("real_ext::kv_cache_append_")
def _append_fake(k_cache, v_cache, k, v, slots, check_ids=True):
    return None


@torch.library.register_fake("real_ext::decode_attention")
def _decode_fake(q, k_cache, v_cache, block_tables, seq_lens, block_size, scale, check_ids=True):
    return q.new_empty(q.shape)
