"""Pieces the RL algorithms share: where the actions are in a packed batch,
global (data-parallel) statistics, and running several optimizer updates over
mini-batches of one rank's share."""
from __future__ import annotations

import random

import torch

from real_ext.data.packed import PackedBatch
from real_ext.model.logprob import next_token_targets
from real_ext.parallel.comm import all_reduce_


def action_mask(batch: PackedBatch) -> torch.Tensor:
    """1.0 at the positions that predict a response token (prompt_len - 1 .. L - 2
    of each sequence), 0 elsewhere. Per-token log-probs live at these positions."""
    mask = torch.zeros(batch.n_tokens, device=batch.input_ids.device)
    cu = batch.cu_seqlens.tolist()
    for i, plen in enumerate(batch.seq_data["prompt_len"].tolist()):
        mask[cu[i] + plen - 1:cu[i + 1] - 1] = 1.0
    return mask


def prompts_for_step(step: int, batch_size: int, dataset, shuffle_seed: int | None = None) -> list[int]:
    """The step's sample ids: consecutive slices of the dataset, wrapping
    around; with ``shuffle_seed``, of a fresh permutation every epoch (the same
    for the same seed, so the position in the data is the step)."""
    n = len(dataset)
    positions = range(step * batch_size, (step + 1) * batch_size)
    if shuffle_seed is None:
        return [p % n for p in positions]
    perms: dict[int, list[int]] = {}
    out = []
    for p in positions:
        epoch = p // n
        if epoch not in perms:
            perms[epoch] = list(range(n))
            random.Random(f"data/{shuffle_seed}/{epoch}").shuffle(perms[epoch])
        out.append(perms[epoch][p % n])
    return out


def global_mean_std(x: torch.Tensor, mask: torch.Tensor, dp_group) -> tuple[float, float]:
    """Mean and std of x over the masked entries of every data-parallel rank."""
    sums = torch.stack([(x * mask).sum(), (x * x * mask).sum(), mask.sum()]).double()
    all_reduce_(sums, dp_group)
    n = max(float(sums[2]), 1.0)
    mean = float(sums[0]) / n
    var = max(float(sums[1]) / n - mean * mean, 0.0)
    return mean, var ** 0.5


def policy_logprobs(model, hidden, mb: PackedBatch, temperature: float) -> torch.Tensor:
    """Log-probs of the taken tokens under softmax(logits / temperature).

    NOTE: the losses take the sampler's log-probs ("behav_logp") as the old
    policy. They agree with these when generation samples from the full
    softmax; with top_k / top_p / min_new_tokens the sampler's distribution is
    truncated, so the first update's ratio differs from 1 on those tokens."""
    targets, _ = next_token_targets(mb.input_ids, mb.cu_seqlens)
    return model.token_logprobs(hidden, targets, temperature)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def train_minibatches(ctx, batch: PackedBatch, loss_fn, n_minibatches: int, *, weight=None,
                      group_key: str | None = None) -> dict:
    """One optimizer update per mini-batch (whole sequences, token-balanced), each
    weighted by ``weight(mb)`` (default: its masked tokens); returns the last
    update's statistics plus the mean loss over updates. With ``group_key`` (a
    per-sequence key such as "sample_id") sequences sharing it stay in one
    mini- and micro-batch (e.g. a chosen/rejected pair). Under args "eval",
    the loss on the whole share without an update."""
    weight = weight or (lambda m: float(m.token_data["mask"].sum()))
    if ctx.args.get("eval"):   # evaluation: the loss on the whole share, no update
        return ctx.trainer.evaluate(batch, loss_fn, n_microbatches=ctx.mfc.allocation.n_microbatches,
                                    loss_weight=weight, group_key=group_key)
    # Every data-parallel rank must run the same number of updates (they are collectives).
    if batch.n_groups(group_key) < n_minibatches:
        raise ValueError(f"MFC {ctx.mfc.name!r}: {batch.n_seqs} sequences on this data-parallel rank cannot "
                         f"make {n_minibatches} mini-batches; raise the batch size or lower n_minibatches")
    n = n_minibatches
    stats, losses = {}, []
    for mb in batch.split(n, group_key):
        stats = ctx.trainer.train_step(mb, loss_fn, n_microbatches=ctx.mfc.allocation.n_microbatches,
                                       loss_weight=weight, group_key=group_key)
        losses.append(stats["loss"])
    stats["loss"] = sum(losses) / len(losses)
    return stats
