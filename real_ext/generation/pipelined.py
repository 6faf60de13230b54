"""Pipelined generation (pp > 1), as ReaL does it: the samples are split into
pp micro-batches that flow through the stages one after another, so while the
last stage samples micro-batch i the first stage already embeds micro-batch
i+1. The last stage sends each micro-batch's new tokens (and log-probs) to
every other stage of its (dp, tp) column, where they feed the next step's
embedding (first stage) and everyone's bookkeeping (who is done, KV slots).
Each stage keeps the KV cache of its own layers; identical allocation calls
give identical slots everywhere.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from real_ext.generation.config import GenerationConfig, GenerationOutput
from real_ext.generation.engine import (CacheStep, Sample, decode_inputs, draw, make_samples, new_cache, output,
                                        record, resolve_seed)


class _Stage:
    """This rank's place in its pipeline column, and the p2p it needs."""

    def __init__(self, model):
        ctx = model.ctx
        self.model, self.index, self.pp = model, ctx.coord.pp, ctx.pp
        self.prev = ctx.stage_rank(self.index - 1) if self.index > 0 else None
        self.next = ctx.stage_rank(self.index + 1) if self.index < self.pp - 1 else None
        self.last = ctx.stage_rank(self.pp - 1)
        self.others = [ctx.stage_rank(p) for p in range(self.pp - 1)]
        self.pending = []

    @property
    def is_last(self) -> bool:
        return self.next is None

    def send(self, tensor: torch.Tensor, dst: int):
        tensor = tensor.contiguous()
        self.pending.append((dist.isend(tensor, dst=dst), tensor))

    def recv_hidden(self, rows: int) -> torch.Tensor:
        m = self.model
        x = torch.empty(rows, m.config.hidden_size, dtype=m.flat.dtype, device=m.flat.device)
        dist.recv(x, src=self.prev)
        return x

    def publish(self, tokens, logprobs):
        """Last stage: new tokens and log-probs of a micro-batch to every other stage."""
        packet = torch.tensor([tokens, logprobs], dtype=torch.float64, device=self.model.flat.device)
        for rank in self.others:
            self.send(packet, rank)

    def receive(self, rows: int):
        packet = torch.empty(2, rows, dtype=torch.float64, device=self.model.flat.device)
        dist.recv(packet, src=self.last)
        return [int(t) for t in packet[0].tolist()], packet[1].tolist()

    def flush(self):
        for work, _ in self.pending:
            work.wait()
        self.pending.clear()


def _through_stage(stage: _Stage, x_or_ids: torch.Tensor, info, rows: int):
    """This stage's part of a forward; returns the final hidden states on the last stage."""
    x = x_or_ids if stage.prev is None else stage.recv_hidden(rows)
    h = stage.model.forward_stage(x, info)
    if stage.is_last:
        return h
    stage.send(h, stage.next)
    return None


def _prefill(stage: _Stage, cache, prompts, seq_ids) -> torch.Tensor | None:
    model, device = stage.model, stage.model.flat.device
    last = []
    for j, prompt in enumerate(prompts):  # one prompt per micro-batch: stages overlap across prompts
        ids = torch.tensor(prompt, dtype=torch.int64, device=device)
        cu = torch.tensor([0, len(prompt)], dtype=torch.int32, device=device)
        step = CacheStep(cache, torch.tensor(cache.allocate(seq_ids[j], len(prompt)), device=device), decode=False)
        h = _through_stage(stage, ids, model.packed_info(cu, cache=step), len(prompt))
        if h is not None:
            last.append(model.head_output(h[-1:]))
    stage.flush()
    return torch.cat(last) if stage.is_last else None


def _decode(stage: _Stage, cache, mb: list[Sample]) -> torch.Tensor | None:
    h = _through_stage(stage, *decode_inputs(stage.model, cache, mb), len(mb))
    return None if h is None else stage.model.head_output(h)


def generate_pipelined(model, prompts, config: GenerationConfig, prompt_ids) -> GenerationOutput:
    stage = _Stage(model)
    samples = make_samples(prompts, config, prompt_ids)
    seed = resolve_seed(model, config)
    cache = new_cache(model, prompts, config)
    n = config.n_samples
    prompt_seqs = [s.index for s in samples[::n]] if n == 1 else [-(p + 1) for p in range(len(prompts))]
    logits = _prefill(stage, cache, prompts, prompt_seqs)
    if stage.is_last:
        tokens, logprobs = draw(logits.repeat_interleave(n, dim=0), samples, seed, 0, config)
        stage.publish(tokens, logprobs)
    else:
        tokens, logprobs = stage.receive(len(samples))
    record(samples, tokens, logprobs, config)
    if n > 1:
        for s in samples:
            cache.share_sequence(prompt_seqs[s.prompt_index], s.index)
        for seq in prompt_seqs:
            cache.release(seq)
    # Micro-batches with fixed membership. A non-last stage learns micro-batch
    # i's tokens of step t just before it runs micro-batch i at step t + 1, so
    # it never waits for the other micro-batches' results.
    running = [[s for s in samples[i::stage.pp] if not s.done] for i in range(stage.pp)]
    awaiting = [False] * stage.pp
    for step in range(1, config.max_new_tokens + 1):
        ran = False
        for i in range(stage.pp):
            if awaiting[i]:
                record(running[i], *stage.receive(len(running[i])), config)
                awaiting[i] = False
            for s in running[i]:
                if s.done:
                    cache.release(s.index)
            running[i] = [s for s in running[i] if not s.done]
            if not running[i] or step == config.max_new_tokens:
                continue
            ran = True
            logits = _decode(stage, cache, running[i])
            if stage.is_last:
                tokens, logprobs = draw(logits, running[i], seed, step, config)
                stage.publish(tokens, logprobs)
                record(running[i], tokens, logprobs, config)
            else:
                awaiting[i] = True
        if not ran:
            break
    stage.flush()
    return output(samples)
