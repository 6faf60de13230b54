"""Reference paged-KV-cache ops: an indexed copy, and decode attention one
sequence at a time (gather its keys, explicit softmax) in the dtype of the
inputs (pass float64 inputs for a high-precision reference)."""
import math

import torch


def kv_cache_append_(k_cache, v_cache, k, v, slots):
    k_cache[slots] = k
    v_cache[slots] = v


def decode_attention(q, k_cache, v_cache, block_tables, seq_lens, block_size, *, softmax_scale=None):
    scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else softmax_scale
    group = q.shape[1] // k_cache.shape[1]
    outs = []
    for b, n in enumerate(seq_lens.tolist()):
        j = torch.arange(n, device=q.device)
        slots = block_tables[b, j // block_size].long() * block_size + j % block_size
        kb = k_cache[slots].repeat_interleave(group, dim=1)               # (n, heads_q, d)
        vb = v_cache[slots].repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,nhd->hn", q[b], kb) * scale
        probs = torch.exp(scores - scores.amax(-1, keepdim=True))
        probs = probs / probs.sum(-1, keepdim=True)
        outs.append(torch.einsum("hn,nhd->hd", probs, vb))
    return torch.stack(outs) if outs else q.new_zeros(q.shape)
