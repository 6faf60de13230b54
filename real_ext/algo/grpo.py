"""GRPO and ReMax: critic-free policy gradient with per-sample advantages the
master computes from the rewards (metadata), and the "pg" loss on workers.

GRPO: n samples per prompt; advantage = (r - group mean) / (group std + eps);
loss = clipped surrogate against the behaviour policy + beta * k3 KL to the
reference (exp(ref - logp) - (ref - logp) - 1 per token).
ReMax: one sample per prompt plus a greedy one; advantage = r - r_greedy.
"""
from __future__ import annotations

import dataclasses

import torch

from real_ext.algo.common import action_mask, masked_mean, policy_logprobs, prompts_for_step, train_minibatches
from real_ext.algo.ppo import GEN_OUTPUTS, reward_stats
from real_ext.runtime.spec import AllocationError, MFCSpec

GREEDY_OUTPUTS = tuple(f"greedy_{k}" for k in GEN_OUTPUTS)


def pg_step(ctx) -> dict:
    a = ctx.mfc.args
    use_ref = a.get("beta", 0.0) > 0
    _, batch = ctx.batch(token_keys=("behav_logp",) + (("ref_logp",) if use_ref else ()), seq_keys=("prompt_len",))
    mask = action_mask(batch)
    advantages = ctx.args["advantages"]   # sample id -> one advantage per sequence
    seq_adv = torch.tensor([advantages[s][k] for s, k in zip(batch.seq_data["sample_id"].tolist(),
                                                             batch.seq_data["seq_index"].tolist())],
                           dtype=torch.float32, device=mask.device)
    lengths = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).long()
    batch.token_data.update(adv=torch.repeat_interleave(seq_adv, lengths) * mask, mask=mask)
    temp, eps, beta = a.get("temperature", 1.0), a["eps_clip"], a.get("beta", 0.0)

    def loss_fn(model, hidden, mb):
        m = mb.token_data["mask"]
        logp = policy_logprobs(model, hidden, mb, temp)
        ratio = torch.exp((logp - mb.token_data["behav_logp"]) * m)
        adv = mb.token_data["adv"]
        loss = -torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
        stats = {"clip_frac": float(masked_mean(((ratio - 1).abs() > eps).float(), m))}
        if beta > 0:
            d = (mb.token_data["ref_logp"] - logp) * m
            k3 = torch.exp(d) - d - 1
            loss = loss + beta * k3
            stats["kl"] = float(masked_mean(k3.detach(), m))
        return masked_mean(loss, m), stats

    return train_minibatches(ctx, batch, loss_fn, a.get("n_minibatches", 1))


@dataclasses.dataclass
class GRPOConfig:
    batch_size: int                          # prompts per step
    group_size: int                          # samples per prompt
    generation: dict
    allocations: dict
    reward: str                              # "task:<name>" or "fn:<module>.<function>" (runtime/rewards.py)
    beta: float = 0.0                        # k3 KL to the reference model (0: no reference model)
    eps_clip: float = 0.2
    n_minibatches: int = 1
    std_eps: float = 1e-4
    shuffle_seed: int | None = None          # None: prompts in file order; else a seeded order per epoch


class GRPO:
    def __init__(self, config: GRPOConfig, *, remax: bool = False):
        self.config, self.remax = config, remax
        self.eval_mfcs = ("actor_gen", "reward_fn")   # sample and score; nothing trains

    def mfcs(self) -> list[MFCSpec]:
        c = self.config
        needed = {"actor_gen", "reward_fn", "actor_train"} | ({"ref_inf"} if c.beta > 0 else set())
        missing = needed - set(c.allocations)
        if missing:
            raise AllocationError(f"{'ReMax' if self.remax else 'GRPO'} needs allocations for MFCs {sorted(missing)}; "
                                  f"given: {sorted(c.allocations)}")
        alloc = c.allocations
        n = 1 if self.remax else c.group_size
        gen = dict(c.generation, n_samples=n)
        mfcs = [MFCSpec("actor_gen", "actor", "generate", ("prompt",), GEN_OUTPUTS, alloc["actor_gen"],
                        {"generation": gen}),
                MFCSpec("reward_fn", None, "reward_fn", ("input_ids", "prompt_len"), ("reward",), alloc["reward_fn"],
                        {"reward": c.reward})]
        if self.remax:
            greedy = dict(gen, greedy=True)
            mfcs += [MFCSpec("actor_greedy", "actor", "generate", ("prompt",), GREEDY_OUTPUTS, alloc["actor_gen"],
                             {"generation": greedy}),
                     MFCSpec("greedy_reward_fn", None, "reward_fn", GREEDY_OUTPUTS[:2], ("greedy_reward",),
                             alloc["reward_fn"], {"reward": c.reward})]
        inputs, waits_for = GEN_OUTPUTS, ("reward",)  # rewards reach the loss as advantages from the master
        if c.beta > 0:
            mfcs.append(MFCSpec("ref_inf", "ref", "inference", ("input_ids",), ("ref_logp",), alloc["ref_inf"],
                                {"kind": "logprobs", "temperature": gen.get("temperature", 1.0)}))
            inputs += ("ref_logp",)
        if self.remax:
            waits_for += ("greedy_reward",)
        mfcs.append(MFCSpec("actor_train", "actor", "train_step", inputs, (), alloc["actor_train"],
                            {"loss": "pg", "eps_clip": c.eps_clip, "beta": c.beta, "n_minibatches": c.n_minibatches,
                             "temperature": gen.get("temperature", 1.0)}, meta_inputs=waits_for))
        for m in mfcs:  # a sample is a prompt with its responses: every call sees batch_size samples
            m.n_seqs = c.batch_size
        return mfcs

    def prompts_for_step(self, step: int, dataset) -> list[int]:
        return prompts_for_step(step, self.config.batch_size, dataset, self.config.shuffle_seed)

    def _advantages(self, state) -> dict[int, list[float]]:
        out = {}
        for p, m in state.meta.items():
            rewards = torch.tensor(m["reward"], dtype=torch.float64)
            if self.remax:
                out[p] = (rewards - m["greedy_reward"][0]).tolist()
            else:
                out[p] = ((rewards - rewards.mean()) / (rewards.std(unbiased=False) + self.config.std_eps)).tolist()
        return out

    def args_for(self, mfc, state, split) -> dict:
        return {"advantages": self._advantages(state)} if mfc.interface == "train_step" else {}

    def eval_stats(self, state) -> dict:
        return reward_stats(state)

    def finish_step(self, state) -> dict:
        stats = dict(state.stats, **reward_stats(state))
        if self.remax:
            greedy = [m["greedy_reward"][0] for _, m in sorted(state.meta.items())]
            stats["greedy_reward/mean"] = sum(greedy) / len(greedy)
        return stats
