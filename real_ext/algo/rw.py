"""Reward modelling (RW) on preference pairs: a value-head model scores each
sequence by its value at the last token (as PPO's "score" inference reads a
reward model), and the Bradley-Terry loss -log sigmoid(s_chosen - s_rejected)
is averaged over pairs. A pair never straddles a micro- or mini-batch, and
every micro-batch weighs as many pairs as it holds, so any split of the batch
gives the same loss and gradient."""
from __future__ import annotations

import dataclasses

import torch.nn.functional as F

from real_ext.algo.common import train_minibatches
from real_ext.algo.supervised import Supervised, SupervisedConfig
from real_ext.data.packed import PackedBatch
from real_ext.runtime.spec import MFCSpec

PAIR = "sample_id"   # the per-sequence key a chosen sequence shares with its rejected one


def pair_batch(ctx, token_keys=(), seq_keys=()) -> PackedBatch:
    """This rank's samples packed as chosen, rejected, chosen, rejected, ..."""
    _, batch = ctx.batch(token_keys=token_keys, seq_keys=seq_keys)
    if batch.seq_data["seq_index"].tolist() != [0, 1] * (batch.n_seqs // 2):
        raise ValueError(f"MFC {ctx.mfc.name!r} needs exactly two completions (chosen, rejected) per sample; "
                         f"use CompletionDataset.pairs_from_task or give [chosen, rejected] for every prompt")
    return batch


def n_pairs(mb: PackedBatch) -> float:
    return mb.n_seqs / 2


def rw_loss(model, hidden, mb):
    scores = model.head_output(hidden).float()[mb.cu_seqlens[1:].long() - 1]
    chosen, rejected = scores[0::2], scores[1::2]
    margin = chosen - rejected
    return -F.logsigmoid(margin).mean(), {"acc": float((margin.detach() > 0).float().mean()),
                                          "chosen_score": float(chosen.detach().mean()),
                                          "rejected_score": float(rejected.detach().mean())}


def rw_step(ctx) -> dict:
    if ctx.model.head != "value":
        raise ValueError(f"MFC {ctx.mfc.name!r} trains a scalar score: give model {ctx.mfc.model!r} a value head "
                         f"(ModelSpec(..., head=\"value\"))")
    batch = pair_batch(ctx)
    return train_minibatches(ctx, batch, rw_loss, ctx.mfc.args["n_minibatches"], weight=n_pairs, group_key=PAIR)


@dataclasses.dataclass
class RWConfig(SupervisedConfig):
    """batch_size: pairs per step; allocations: "rw_train"."""


class RW(Supervised):
    """Trains the model named "reward" (ModelSpec head="value")."""
    name, train_mfc, eval_mfcs, n_completions = "RW", "rw_train", ("rw_train",), 2

    def mfcs(self) -> list[MFCSpec]:
        alloc = self._allocations(["rw_train"])
        return self._per_step([MFCSpec("rw_train", "reward", "train_step", ("input_ids",), (), alloc["rw_train"],
                                       {"loss": "rw", "n_minibatches": self.config.n_minibatches})])
