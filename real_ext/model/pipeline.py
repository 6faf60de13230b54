"""Pipeline parallelism over packed micro-batches.

Stages exchange hidden states (T_mb, hidden) point to point with the same
(dp, tp) position in the neighbouring stage; shapes need no handshake because
every stage knows each micro-batch's cu_seqlens. Sends are asynchronous, so a
stage starts the next micro-batch while its neighbour works on the last one.
Training uses the GPipe order: all forwards, then all backwards in reverse.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from real_ext.data.packed import PackedBatch


def _neighbours(model):
    ctx = model.ctx
    p = ctx.coord.pp
    prev = ctx.stage_rank(p - 1) if p > 0 else None
    nxt = ctx.stage_rank(p + 1) if p < ctx.pp - 1 else None
    return prev, nxt


def _recv_hidden(model, n_tokens: int, src: int) -> torch.Tensor:
    x = torch.empty(n_tokens, model.config.hidden_size, dtype=model.flat.dtype, device=model.flat.device)
    dist.recv(x, src=src)
    return x


class _Sends:
    """Outstanding asynchronous sends; the tensors stay referenced until done."""

    def __init__(self):
        self.pending = []

    def send(self, tensor: torch.Tensor, dst: int):
        tensor = tensor.detach().contiguous()
        self.pending.append((dist.isend(tensor, dst=dst), tensor))

    def wait(self):
        for work, _ in self.pending:
            work.wait()
        self.pending.clear()


@torch.no_grad()
def pipeline_forward(model, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, n_microbatches: int):
    """Inference through all stages; final hidden states (T, hidden) on the last
    stage, None elsewhere. Training goes through pipeline_train instead."""
    prev, nxt = _neighbours(model)
    sends, outs = _Sends(), []
    for mb in PackedBatch(input_ids, cu_seqlens).split(min(n_microbatches, len(cu_seqlens) - 1)):
        info = model.packed_info(mb.cu_seqlens)
        x = mb.input_ids if prev is None else _recv_hidden(model, mb.n_tokens, prev)
        h = model.forward_stage(x, info)
        if nxt is None:
            outs.append(h)
        else:
            sends.send(h, nxt)
    sends.wait()
    return torch.cat(outs) if nxt is None else None


def pipeline_train(model, microbatches: list[PackedBatch], mb_loss):
    """Forward and backward of every micro-batch through the pipeline (GPipe).

    ``mb_loss(hidden, mb) -> (scaled_loss, stats)`` runs on the last stage;
    returns the list of stats there and an empty list elsewhere.
    """
    prev, nxt = _neighbours(model)
    sends, saved, stats = _Sends(), [], []
    for mb in microbatches:
        info = model.packed_info(mb.cu_seqlens)
        if prev is None:
            x = mb.input_ids
        else:
            x = _recv_hidden(model, mb.n_tokens, prev).requires_grad_()
        h = model.forward_stage(x, info)
        if nxt is None:
            loss, mb_stats = mb_loss(h, mb)
            saved.append((x, loss))
            stats.append(mb_stats)
        else:
            sends.send(h, nxt)
            saved.append((x, h))
    sends.wait()
    for mb, (x, out) in zip(reversed(microbatches), reversed(saved)):
        if nxt is None:
            out.backward()
        else:
            grad = torch.empty_like(out)
            dist.recv(grad, src=nxt)
            out.backward(grad)
        if prev is not None:
            sends.send(x.grad, prev)
    sends.wait()
    return stats
