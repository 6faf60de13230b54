"""Reference packed attention: one sequence at a time, explicit masked softmax,
in the dtype of the inputs (pass float64 inputs for a high-precision reference).
Autograd flows through it, so it is the gradient reference too."""
import math

import torch


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=True,
                     softmax_scale=None):
    scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else softmax_scale
    group = q.shape[1] // k.shape[1]
    cu_q, cu_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    outs = []
    for b in range(len(cu_q) - 1):
        qi = q[cu_q[b]:cu_q[b + 1]]                                        # (lq, hq, d)
        ki = k[cu_k[b]:cu_k[b + 1]].repeat_interleave(group, dim=1)        # (lk, hq, d)
        vi = v[cu_k[b]:cu_k[b + 1]].repeat_interleave(group, dim=1)
        lq, lk = qi.shape[0], ki.shape[0]
        scores = torch.einsum("qhd,khd->hqk", qi, ki) * scale
        visible = torch.ones(lq, lk, dtype=torch.bool, device=q.device)
        if causal:  # bottom-right aligned: query i sees key j iff j <= i + lk - lq
            visible = torch.arange(lk, device=q.device)[None, :] <= torch.arange(lq, device=q.device)[:, None] + (lk - lq)
        # A finite fill keeps fully masked rows NaN-free (forward and backward);
        # those rows are zeroed below, as the op defines them.
        scores = scores.masked_fill(~visible, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1) * visible.any(-1)[None, :, None].to(scores.dtype)
        outs.append(torch.einsum("hqk,khd->qhd", probs, vi))
    return torch.cat(outs) if outs else q.new_zeros(q.shape)
