"""Supervised fine-tuning (SFT): the mean negative log-likelihood of the given
answers' tokens (token-weighted over the global batch)."""
from __future__ import annotations

import dataclasses

from real_ext.algo.common import action_mask, masked_mean, policy_logprobs, train_minibatches
from real_ext.algo.supervised import Supervised, SupervisedConfig
from real_ext.runtime.spec import MFCSpec


def sft_loss(model, hidden, mb):
    return masked_mean(-policy_logprobs(model, hidden, mb, 1.0), mb.token_data["mask"]), {}


def sft_step(ctx) -> dict:
    _, batch = ctx.batch(seq_keys=("prompt_len",))
    batch.token_data["mask"] = action_mask(batch)   # the positions predicting answer tokens
    return train_minibatches(ctx, batch, sft_loss, ctx.mfc.args["n_minibatches"])


@dataclasses.dataclass
class SFTConfig(SupervisedConfig):
    """batch_size: prompts with their answers per step; allocations: "actor_train"."""


class SFT(Supervised):
    name, train_mfc, eval_mfcs = "SFT", "actor_train", ("actor_train",)

    def mfcs(self) -> list[MFCSpec]:
        alloc = self._allocations(["actor_train"])
        return self._per_step([MFCSpec("actor_train", "actor", "train_step", ("input_ids", "prompt_len"), (),
                                       alloc["actor_train"],
                                       {"loss": "sft", "n_minibatches": self.config.n_minibatches})])
