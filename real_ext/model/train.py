"""Training step on a (possibly sharded) ReaLModel: micro-batched gradient
accumulation (GPipe under pipeline parallelism), data-parallel gradient
reduction, global-norm clipping across tp/pp/dp, and AdamW with decoupled
weight decay and learning-rate schedules, all on flat buffers.

Parameters stay in the model's flat buffer (any dtype); gradients accumulate in
a float32 flat buffer; when the parameters are not float32 the optimizer keeps
float32 master weights and copies them back after each step. With
``zero1=True`` the optimizer state (and master weights) are sharded over the
data-parallel ranks and the updated parameters all-gathered.

Loss scaling: ``loss_fn`` returns a micro-batch mean; each micro-batch is
weighted by ``loss_weight(mb)`` (default: its token count) over the sum of
weights across all micro-batches and data-parallel ranks, so any split of the
same global batch yields the same gradient.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
import torch.distributed as dist

from real_ext.data.packed import PackedBatch
from real_ext.heap import hold_freed_memory
from real_ext.model.params import KV_COLUMN, REPLICATED
from real_ext.parallel.comm import all_reduce_

SCHEDULES = ("constant", "linear", "cosine")


@dataclasses.dataclass
class OptimConfig:
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 1.0           # max global grad norm; <= 0 disables clipping
    schedule: str = "constant"       # constant | linear | cosine (after warm-up)
    warmup_steps: int = 0
    total_steps: int = 0             # needed by linear and cosine
    min_lr_ratio: float = 0.0        # floor of the decay, as a fraction of lr
    zero1: bool = False

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"optimizer lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"optimizer weight_decay must be >= 0, got {self.weight_decay}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optimizer betas must be in [0, 1), got {self.betas}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optimizer schedule {self.schedule!r} unknown; expected one of {SCHEDULES}")
        if self.schedule != "constant" and self.total_steps <= self.warmup_steps:
            raise ValueError(f"schedule {self.schedule!r} needs total_steps > warmup_steps "
                             f"(got total_steps={self.total_steps}, warmup_steps={self.warmup_steps})")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optimizer min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


def lr_at(cfg: OptimConfig, step: int) -> float:
    """Learning rate of update number `step` (0-based). Warm-up is linear from
    lr/warmup_steps (not 0, so the first update counts) up to lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / (cfg.total_steps - cfg.warmup_steps))
    shape = 1 - progress if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape)


def tokens(mb: PackedBatch) -> float:
    return float(mb.n_tokens)


class Trainer:
    NORM_ROW = 1 << 14  # elements per float32 partial norm of the gradient (see _clip)

    def __init__(self, model, config: OptimConfig):
        self.model, self.config = model, config
        ctx = model.ctx
        self.ctx = ctx
        n = model.flat.numel()
        device = model.flat.device
        self.grad = torch.zeros(n, dtype=torch.float32, device=device)
        self.norm_mask = torch.zeros(n, dtype=torch.float32, device=device)
        for s in model.shards:
            self.norm_mask[s.offset:s.offset + s.numel] = float(self._counts_in_norm(s))
        # ZeRO-1: this rank updates flat[lo:hi] only.
        self.lo, self.hi = 0, n
        if config.zero1 and ctx.dp > 1:
            per = -(-n // ctx.dp)
            self.lo, self.hi = min(n, ctx.coord.dp * per), min(n, (ctx.coord.dp + 1) * per)
            self._per = per
        mixed = model.flat.dtype != torch.float32
        self.master = model.flat[self.lo:self.hi].float().clone() if mixed else None
        self.exp_avg = torch.zeros(self.hi - self.lo, dtype=torch.float32, device=device)
        self.exp_avg_sq = torch.zeros_like(self.exp_avg)
        runs = self._runs_by_decay(model.shards)
        # (start, end) runs relative to lo, with weight decay and without.
        self._decay_runs = tuple([(a, b) for a, b, d in runs if d == decays] for decays in (True, False))
        self.step_count = 0
        self._hooks = [self._grad_hook(p, s) for s, p in zip(model.shards, self._params_in_shard_order())]
        # With tied embeddings on separate stages, the embedding (first stage) and
        # its lm_head copy (last stage) sum their gradients and stay equal.
        self._tied = None
        if ctx.pp > 1 and model.config.tie_word_embeddings and model.head == "lm":
            wanted = {"lm_head.weight", "model.embed_tokens.weight"}
            self._tied = next((s for s in model.shards if s.spec.name in wanted), None)

    def _runs_by_decay(self, shards) -> list[tuple[int, int, bool]]:
        """[lo, hi) cut into maximal runs (start, end, decays), relative to lo;
        elements outside every shard (none get a gradient) join the runs without
        decay."""
        marks = sorted((max(s.offset, self.lo), min(s.offset + s.numel, self.hi), bool(s.spec.decay))
                       for s in shards if s.offset < self.hi and s.offset + s.numel > self.lo)
        runs, pos = [], self.lo
        for a, b, decay in marks + [(self.hi, self.hi, False)]:
            for start, end, d in ((pos, a, False), (a, b, decay)):
                if end <= start:
                    continue
                if runs and runs[-1][2] == d and runs[-1][1] == start - self.lo:
                    runs[-1] = (runs[-1][0], end - self.lo, d)
                else:
                    runs.append((start - self.lo, end - self.lo, d))
            pos = max(pos, b)
        return runs

    def _params_in_shard_order(self):
        params = dict(self.model.named_parameters())
        return [params[s.spec.name] for s in self.model.shards]

    def _counts_in_norm(self, shard) -> bool:
        """Count each element of the model once in the global grad norm."""
        if shard.spec.tied_to:
            return False  # the tied lm_head copy duplicates the embedding
        tp = self.ctx.coord.tp
        if shard.spec.split == REPLICATED:
            return tp == 0
        if shard.spec.split == KV_COLUMN and self.model.kv_replication > 1:
            return tp % self.model.kv_replication == 0
        return True

    def _grad_hook(self, param, shard):
        view = shard.view(self.grad)

        def hook(p):
            view.add_(p.grad)
            p.grad = None
        return param.register_post_accumulate_grad_hook(hook)

    # ------------------------------------------------------------ the step

    @hold_freed_memory()
    def train_step(self, batch: PackedBatch, loss_fn: Callable, *, n_microbatches: int = 1,
                   loss_weight: Callable[[PackedBatch], float] = tokens,
                   group_key: str | None = None) -> dict[str, float]:
        """One optimizer update from this data-parallel rank's share of the batch.

        ``loss_fn(model, hidden, mb) -> (loss, stats)`` gets the final hidden
        states of micro-batch ``mb`` on the last pipeline stage (read them with
        ``model.head_output`` / ``model.token_logprobs``) and returns the
        micro-batch's mean loss and a dict of float statistics. Freed host
        memory stays in the process until it returns (real_ext/heap.py).
        """
        model, ctx = self.model, self.ctx
        mbs = batch.split(min(n_microbatches, batch.n_groups(group_key)), group_key)
        weights = [float(loss_weight(mb)) for mb in mbs]
        # Collectives run on the model's device (NCCL needs CUDA tensors).
        total = torch.tensor(sum(weights), dtype=torch.float64, device=model.flat.device)
        all_reduce_(total, ctx.dp_group)
        total = float(total)
        if total <= 0:
            raise ValueError("the loss weights of the global batch sum to 0; nothing to train on")
        scale = {id(mb): w / total for mb, w in zip(mbs, weights)}
        self.grad.zero_()

        def mb_loss(hidden, mb):
            loss, stats = loss_fn(model, hidden, mb)
            stats = dict(stats, loss=float(loss.detach()))
            return loss * scale[id(mb)], (scale[id(mb)], stats)

        if ctx.pp > 1:
            from real_ext.model.pipeline import pipeline_train
            records = pipeline_train(model, mbs, mb_loss)
        else:
            records = []
            for mb in mbs:
                hidden = model.forward_packed(mb.input_ids, mb.cu_seqlens)
                loss, record = mb_loss(hidden, mb)
                loss.backward()
                records.append(record)
        self._reduce_grads()
        grad_norm = self._clip()
        lr = lr_at(self.config, self.step_count)
        self._adamw(lr)
        self.step_count += 1
        stats = self._gather_stats(records)
        stats.update(grad_norm=grad_norm, lr=lr)
        return stats

    def state_dict(self) -> dict:
        """This rank's optimizer state (its shard under ZeRO-1), for checkpoints."""
        return {"step_count": self.step_count, "lo": self.lo, "hi": self.hi, "numel": self.model.flat.numel(),
                "exp_avg": self.exp_avg.cpu().clone(), "exp_avg_sq": self.exp_avg_sq.cpu().clone(),
                "master": None if self.master is None else self.master.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()`` saved under the same layout; anything else
        is a ValueError naming what differs."""
        mine = (self.lo, self.hi, self.model.flat.numel(), self.master is None)
        saved = (state["lo"], state["hi"], state["numel"], state["master"] is None)
        if mine != saved:
            raise ValueError(f"optimizer state of shape (lo, hi, numel, fp32 params)={saved} does not fit this "
                             f"rank's {mine}; resume with the allocation and dtype the checkpoint was saved with")
        self.step_count = int(state["step_count"])
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])
        if self.master is not None:
            self.master.copy_(state["master"])

    @torch.no_grad()
    def evaluate(self, batch: PackedBatch, loss_fn: Callable, *, n_microbatches: int = 1,
                 loss_weight: Callable[[PackedBatch], float] = tokens,
                 group_key: str | None = None) -> dict[str, float]:
        """``train_step``'s loss and statistics on this batch, with no update:
        the same weighting over micro-batches and data-parallel ranks."""
        model, ctx = self.model, self.ctx
        mbs = batch.split(min(n_microbatches, batch.n_groups(group_key)), group_key)
        weights = [float(loss_weight(mb)) for mb in mbs]
        total = torch.tensor(sum(weights), dtype=torch.float64, device=model.flat.device)
        all_reduce_(total, ctx.dp_group)
        if float(total) <= 0:
            raise ValueError("the loss weights of the global batch sum to 0; nothing to evaluate")
        records = []
        for mb, w in zip(mbs, weights):
            hidden = model.hidden_states(mb.input_ids, mb.cu_seqlens)
            if hidden is not None:  # the last pipeline stage
                loss, stats = loss_fn(model, hidden, mb)
                records.append((w / float(total), dict(stats, loss=float(loss))))
        return self._gather_stats(records)

    def _reduce_grads(self):
        ctx = self.ctx
        all_reduce_(self.grad, ctx.dp_group)  # losses are pre-scaled: a sum, not a mean
        if self._tied is not None:             # tied embedding split over first and last stage
            sl = self.grad[self._tied.offset:self._tied.offset + self._tied.numel]
            all_reduce_(sl, ctx.embed_group)
        if self.model.kv_group is not None:    # kv heads replicated over tp ranks
            for s in self.model.shards:
                if s.spec.split == KV_COLUMN:
                    all_reduce_(self.grad[s.offset:s.offset + s.numel], self.model.kv_group)

    def _clip(self) -> float:
        # Float32 norms of 16K-element rows (one reduction kernel over all rows,
        # not a kernel per chunk: 27K launches for a 0.44B model on a GPU), their
        # squares summed in float64: within ~1e-7 of a float64 sum, without a
        # float64 copy of the gradient.
        x = self.grad * self.norm_mask
        whole = x.numel() // self.NORM_ROW * self.NORM_ROW
        rows = torch.linalg.vector_norm(x[:whole].view(-1, self.NORM_ROW), dim=1).double()
        sq = rows.square().sum() + torch.linalg.vector_norm(x[whole:]).double().square()
        all_reduce_(sq, self.ctx.model_group)
        norm = math.sqrt(float(sq))
        if self.config.grad_clip > 0 and norm > self.config.grad_clip:
            self.grad.mul_(self.config.grad_clip / (norm + 1e-6))
        return norm

    @torch.no_grad()
    def _adamw(self, lr: float):
        # torch's fused AdamW (one pass over parameter, gradient and moments;
        # the unfused update made ~9 passes, 18 ms against 3 ms for a 5M model
        # on a 2-core CPU), called once for the runs with weight decay and once
        # for those without.
        c, flat = self.config, self.model.flat
        b1, b2 = c.betas
        step = torch.tensor(float(self.step_count + 1), device=flat.device)
        g = self.grad[self.lo:self.hi]
        p = self.master if self.master is not None else flat[self.lo:self.hi]
        for decays, runs in zip((True, False), self._decay_runs):
            if not runs:
                continue
            views = [[t[a:b] for a, b in runs] for t in (p, g, self.exp_avg, self.exp_avg_sq)]
            torch._fused_adamw_(*views, [], [step] * len(runs), lr=lr, beta1=b1, beta2=b2,
                                weight_decay=c.weight_decay if decays else 0.0, eps=c.eps, amsgrad=False,
                                maximize=False)
        if self.master is not None:
            flat[self.lo:self.hi].copy_(self.master)
        if self.hi - self.lo < flat.numel():
            self._all_gather_params()

    def _all_gather_params(self):
        flat, per = self.model.flat, self._per
        padded = torch.zeros(per * self.ctx.dp, dtype=flat.dtype, device=flat.device)
        padded[:flat.numel()] = flat
        chunks = list(padded.chunk(self.ctx.dp))
        dist.all_gather(chunks, chunks[self.ctx.coord.dp].clone(), group=self.ctx.dp_group)
        flat.copy_(torch.cat(chunks)[:flat.numel()])

    def _gather_stats(self, records) -> dict[str, float]:
        """Weighted means of the micro-batch stats over dp, known on every rank."""
        ctx = self.ctx
        keys = sorted(records[0][1]) if records else []
        if ctx.pp > 1:  # only the last stage computed losses
            names = [keys]
            dist.broadcast_object_list(names, src=ctx.stage_rank(ctx.pp - 1), group=ctx.pp_group)
            keys = names[0]
        buf = torch.zeros(len(keys), dtype=torch.float64, device=self.model.flat.device)
        for w, st in records:
            for i, k in enumerate(keys):
                buf[i] += w * st[k]
        if ctx.pp > 1:
            dist.broadcast(buf, src=ctx.stage_rank(ctx.pp - 1), group=ctx.pp_group)
        all_reduce_(buf, ctx.dp_group)
        return {k: float(buf[i]) for i, k in enumerate(keys)}
