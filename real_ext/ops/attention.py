"""Packed (varlen) attention: ``varlen_attention`` and its fake/autograd rules."""
import math

import torch

_fwd = torch.ops.real_ext.varlen_attn_fwd
_bwd = torch.ops.real_ext.varlen_attn_bwd


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    causal: bool = True,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Attention over packed variable-length sequences.

    q: ``(total_q, heads_q, head_dim)``; k, v: ``(total_k, heads_kv, head_dim)`` with
    ``heads_q % heads_kv == 0`` (GQA/MQA). ``cu_seqlens_*``: int32 ``(batch+1,)``
    offsets of each sequence. With ``causal`` and a query sequence shorter than its
    key sequence, the mask is aligned to the bottom-right (queries are the last
    tokens, as in prefill after a cached prefix); a query that sees no key gets 0.
    ``softmax_scale`` defaults to ``1/sqrt(head_dim)``. Differentiable in q, k, v.
    """
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(q.shape[-1]) if q.dim() == 3 and q.shape[-1] > 0 else 1.0
    out, _ = _fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k),
                  float(softmax_scale), bool(causal))
    return out


@torch.library.register_fake("real_ext::varlen_attn_fwd")
def _fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal):
    lse = q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)
    return torch.empty_like(q), lse


@torch.library.register_fake("real_ext::varlen_attn_bwd")
def _bwd_fake(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, cu_q, cu_k, max_q, max_k, scale, causal = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k)
    ctx.args = (max_q, max_k, scale, causal)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
    dq, dk, dv = _bwd(dout.contiguous(), q, k, v, out, lse, cu_q, cu_k, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None


torch.library.register_autograd("real_ext::varlen_attn_fwd", _backward, setup_context=_setup_context)
