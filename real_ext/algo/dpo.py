"""Direct preference optimisation (DPO, Rafailov et al. 2023) on preference pairs.

The reference model's per-token log-probs come from an inference MFC; the
actor's implicit reward of a sequence is beta * (log pi - log ref) summed over
its response tokens, and the loss is -log sigmoid(r_chosen - r_rejected)
averaged over pairs (pairs kept whole and weighted as in rw.py)."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from real_ext.algo.common import action_mask, policy_logprobs, train_minibatches
from real_ext.algo.rw import PAIR, n_pairs, pair_batch
from real_ext.algo.supervised import Supervised, check_config
from real_ext.data.packed import PackedBatch
from real_ext.runtime.spec import MFCSpec


def sequence_sums(x: torch.Tensor, mb: PackedBatch) -> torch.Tensor:
    """(T,) per token -> (B,) per sequence."""
    lengths = (mb.cu_seqlens[1:] - mb.cu_seqlens[:-1]).long()
    seq = torch.repeat_interleave(torch.arange(mb.n_seqs, device=x.device), lengths)
    return torch.zeros(mb.n_seqs, dtype=x.dtype, device=x.device).index_add(0, seq, x)


def dpo_step(ctx) -> dict:
    beta = ctx.mfc.args["beta"]
    batch = pair_batch(ctx, token_keys=("ref_logp",), seq_keys=("prompt_len",))
    batch.token_data["mask"] = action_mask(batch)   # the positions predicting response tokens

    def loss_fn(model, hidden, mb):
        log_ratio = (policy_logprobs(model, hidden, mb, 1.0) - mb.token_data["ref_logp"]) * mb.token_data["mask"]
        rewards = beta * sequence_sums(log_ratio, mb)
        chosen, rejected = rewards[0::2], rewards[1::2]
        margin = chosen - rejected
        return -F.logsigmoid(margin).mean(), {"reward_acc": float((margin.detach() > 0).float().mean()),
                                              "reward_margin": float(margin.detach().mean()),
                                              "chosen_reward": float(chosen.detach().mean()),
                                              "rejected_reward": float(rejected.detach().mean())}

    return train_minibatches(ctx, batch, loss_fn, ctx.mfc.args["n_minibatches"], weight=n_pairs, group_key=PAIR)


@dataclasses.dataclass
class DPOConfig:
    batch_size: int                  # pairs per step
    allocations: dict                # "ref_inf", "actor_train" -> Allocation
    beta: float = 0.1                # scale of the implicit reward (inverse strength of the KL tie to ref)
    n_minibatches: int = 1           # optimizer updates per step
    shuffle_seed: int | None = None  # None: the dataset in order; else a fresh permutation every epoch

    def __post_init__(self):
        check_config(self)
        if not isinstance(self.beta, (int, float)) or not self.beta > 0:
            raise ValueError(f"DPOConfig.beta must be a number > 0 (typically 0.01..0.5), got {self.beta!r}")


class DPO(Supervised):
    """Trains the model named "actor" against the frozen model named "ref"."""
    name, train_mfc, eval_mfcs, n_completions = "DPO", "actor_train", ("ref_inf", "actor_train"), 2

    def mfcs(self) -> list[MFCSpec]:
        c = self.config
        alloc = self._allocations(["ref_inf", "actor_train"])
        return self._per_step([
            MFCSpec("ref_inf", "ref", "inference", ("input_ids",), ("ref_logp",), alloc["ref_inf"],
                    {"kind": "logprobs"}),
            MFCSpec("actor_train", "actor", "train_step", ("input_ids", "prompt_len", "ref_logp"), (),
                    alloc["actor_train"], {"loss": "dpo", "beta": c.beta, "n_minibatches": c.n_minibatches}),
        ])
