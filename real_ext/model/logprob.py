"""Log-probabilities of given tokens from final hidden states, fused with the
LM head: chunked over tokens so the (T, vocab) float32 log-softmax never
exists at once, vocab-parallel under tensor parallelism (each rank holds a
slice of the head), and the backward recomputes each chunk's logits instead of
saving them."""
from __future__ import annotations

import torch
import torch.distributed as dist

# Elements of one float32 logits chunk (64 MB).
CHUNK_ELEMENTS = 1 << 24


def _chunks(total: int, vocab_local: int):
    step = max(1, CHUNK_ELEMENTS // max(vocab_local, 1))
    for start in range(0, total, step):
        yield start, min(total, start + step)


def _all_reduce(x: torch.Tensor, group, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if group is not None:
        dist.all_reduce(x, op=op, group=group)
    return x


def _chunk_logits(hidden, weight, start, stop, vocab_start, vocab_size, temperature):
    logits = (hidden[start:stop] @ weight.t()).float() / temperature
    real = vocab_size - vocab_start  # columns at or past the real vocabulary are padding
    if real < weight.shape[0]:
        logits[:, max(real, 0):] = float("-inf")
    return logits


class _FusedLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, vocab_start, vocab_size, temperature, group):
        total, vocab_local = hidden.shape[0], weight.shape[0]
        out = torch.empty(total, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        local_t = targets - vocab_start
        owned = (local_t >= 0) & (local_t < vocab_local)
        for a, b in _chunks(total, vocab_local):
            logits = _chunk_logits(hidden, weight, a, b, vocab_start, vocab_size, temperature)
            m = _all_reduce(logits.max(-1).values, group, dist.ReduceOp.MAX)
            m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
            s = _all_reduce((logits - m[:, None]).exp().sum(-1), group)
            lse[a:b] = m + s.log()
            picked = logits.gather(1, local_t[a:b].clamp(0, vocab_local - 1)[:, None]).squeeze(1)
            picked = _all_reduce(torch.where(owned[a:b], picked, torch.zeros_like(picked)), group)
            out[a:b] = picked - lse[a:b]
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.args = (vocab_start, vocab_size, temperature)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, targets, lse = ctx.saved_tensors
        vocab_start, vocab_size, temperature = ctx.args
        vocab_local = weight.shape[0]
        grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        local_t = targets - vocab_start
        owned = (local_t >= 0) & (local_t < vocab_local)
        for a, b in _chunks(hidden.shape[0], vocab_local):
            logits = _chunk_logits(hidden, weight, a, b, vocab_start, vocab_size, temperature)
            # d logp / d logits = onehot(target) - softmax, times 1/temperature.
            g = -(logits - lse[a:b, None]).exp() * grad_out[a:b, None]
            rows = torch.nonzero(owned[a:b]).squeeze(1)
            g[rows, local_t[a:b][rows]] += grad_out[a:b][rows]
            g = g / temperature
            grad_hidden[a:b] = g @ weight.float()
            grad_weight += g.t() @ hidden[a:b].float()
        return grad_hidden.to(hidden.dtype), grad_weight.to(weight.dtype), None, None, None, None, None


def fused_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, vocab_start: int = 0,
                   vocab_size: int | None = None, temperature: float = 1.0, tp_group=None) -> torch.Tensor:
    """log softmax(hidden @ weight.T / temperature)[t, targets[t]] as float32 (T,).

    Under tensor parallelism ``weight`` is this rank's vocab slice starting at
    ``vocab_start``, and ``hidden`` must come through ``copy_to_tp`` so that its
    gradient is summed over the group.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    vocab_size = weight.shape[0] + vocab_start if vocab_size is None else vocab_size
    return _FusedLogProb.apply(hidden, weight, targets, vocab_start, vocab_size, float(temperature), tp_group)


def next_token_targets(input_ids: torch.Tensor, cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each position t, the token at t+1 of the same sequence, and a mask
    that is False at every sequence's last position (nothing follows it)."""
    targets = torch.roll(input_ids, -1)
    valid = torch.ones_like(input_ids, dtype=torch.bool)
    ends = cu_seqlens[1:].long() - 1
    ends = ends[cu_seqlens[1:] > cu_seqlens[:-1]]
    valid[ends] = False
    return torch.where(valid, targets, torch.zeros_like(targets)), valid
