"""PPO (actor, critic, reference, reward): the dataflow graph and its losses.

Per step: the actor generates one response per prompt; the reward (a reward
model's score or a Python function) is given at the last token; the per-token
reward is -kl_coef * (log pi_behaviour - log pi_ref), plus the final reward;
GAE (the compiled op) turns rewards and critic values into advantages and
returns; advantages are normalized over the whole batch (all data-parallel
ranks); the actor takes clipped-surrogate updates, the critic clipped value
updates, over mini-batches. The KL coefficient is fixed or adaptive (Ziegler
et al.'s controller, updated by the master after each step).
"""
from __future__ import annotations

import dataclasses

import torch

from real_ext import ops
from real_ext.algo.common import (action_mask, global_mean_std, masked_mean, policy_logprobs, prompts_for_step,
                                  train_minibatches)
from real_ext.runtime.spec import Allocation, AllocationError, MFCSpec

GEN_OUTPUTS = ("input_ids", "prompt_len", "behav_logp", "stopped")


@dataclasses.dataclass
class PPOConfig:
    batch_size: int                              # prompts per step
    generation: dict                             # GenerationConfig fields
    allocations: dict                            # MFC name -> Allocation
    reward: str = "model"                        # "model" (a reward model) or a rule (runtime/rewards.py)
    kl_coef: float = 0.05
    adaptive_kl: bool = False
    kl_target: float = 6.0
    kl_horizon: int = 10000
    gamma: float = 1.0
    lam: float = 0.95
    eps_clip: float = 0.2
    value_eps_clip: float = 0.2
    n_minibatches: int = 1
    adv_norm: bool = True
    # A response cut at max_new_tokens: by default its reward is final (the
    # episode ends there, as in TRL and OpenRLHF); True bootstraps from the
    # critic's value after the last token, as for a time limit in control.
    bootstrap_truncated: bool = False
    # Subtracted from the reward of a response cut at max_new_tokens (as TRL's
    # missing_eos_penalty): a reward model scores such unfinished text off its
    # training distribution, and the policy learns to exploit that.
    missing_eos_penalty: float = 0.0
    shuffle_seed: int | None = None              # None: prompts in file order; else a seeded order per epoch
    # A rule (runtime/rewards.py) scored on every response for watching only
    # ("monitor_reward/mean"), e.g. the task's true reward while training on a reward model.
    monitor_reward: str | None = None


def advantages_and_returns(ctx, batch, kl_coef: float, gamma: float, lam: float):
    """Per-token advantages and returns (zero outside actions) from the stored
    rewards, log-probs and values, with the GAE op."""
    mask = action_mask(batch)
    act = mask.bool()
    cu = batch.cu_seqlens.tolist()
    plens = batch.seq_data["prompt_len"].tolist()
    kl = (batch.token_data["behav_logp"] - batch.token_data["ref_logp"]) * mask
    rewards = -kl_coef * kl
    n_actions = [cu[i + 1] - 1 - (cu[i] + p - 1) for i, p in enumerate(plens)]
    last = torch.tensor([cu[i + 1] - 2 for i in range(len(plens))], device=rewards.device)
    unfinished = 1.0 - batch.seq_data["stopped"].to(rewards.dtype)
    penalty = float(ctx.mfc.args.get("missing_eos_penalty", 0.0))
    rewards[last] += batch.seq_data["reward"].to(rewards.dtype) - penalty * unfinished
    values = batch.token_data["values"]
    # Values of the states before each action, then the value after the last token.
    value_rows = []
    for i, p in enumerate(plens):
        value_rows.append(values[cu[i] + p - 1:cu[i + 1]])
    cu_actions = torch.tensor([0] + torch.tensor(n_actions).cumsum(0).tolist(), dtype=torch.int32)
    bootstrap = ~batch.seq_data["stopped"].bool().cpu() & bool(ctx.mfc.args.get("bootstrap_truncated", False))
    adv, ret = ops.gae(rewards[act].double().cpu(), torch.cat(value_rows).double().cpu(), cu_actions, bootstrap,
                       gamma, lam)
    advantages = torch.zeros_like(rewards)
    returns = torch.zeros_like(rewards)
    advantages[act] = adv.to(rewards.device, rewards.dtype)
    returns[act] = ret.to(rewards.device, rewards.dtype)
    return advantages, returns, mask, kl


def ppo_actor_step(ctx) -> dict:
    a = ctx.mfc.args
    _, batch = ctx.batch(token_keys=("behav_logp", "ref_logp", "values"), seq_keys=("prompt_len", "reward", "stopped"))
    adv, _, mask, kl = advantages_and_returns(ctx, batch, ctx.args["kl_coef"], a["gamma"], a["lam"])
    dp_group = ctx.trainer.ctx.dp_group
    if a.get("adv_norm", True):
        mean, std = global_mean_std(adv, mask, dp_group)
        adv = (adv - mean) / (std + 1e-8) * mask
    batch.token_data.update(adv=adv, mask=mask, old_logp=batch.token_data["behav_logp"])
    kl_mean, _ = global_mean_std(kl, mask, dp_group)
    temp, eps = a.get("temperature", 1.0), a["eps_clip"]

    def loss_fn(model, hidden, mb):
        m = mb.token_data["mask"]
        logp = policy_logprobs(model, hidden, mb, temp)
        ratio = torch.exp((logp - mb.token_data["old_logp"]) * m)
        adv_mb = mb.token_data["adv"]
        surrogate = torch.minimum(ratio * adv_mb, ratio.clamp(1 - eps, 1 + eps) * adv_mb)
        clipped = ((ratio - 1).abs() > eps).float()
        return -masked_mean(surrogate, m), {"clip_frac": float(masked_mean(clipped, m)),
                                             "approx_kl": float(masked_mean(mb.token_data["old_logp"] - logp.detach(), m))}

    stats = train_minibatches(ctx, batch, loss_fn, a.get("n_minibatches", 1))
    stats["kl"] = kl_mean
    return stats


def ppo_critic_step(ctx) -> dict:
    a = ctx.mfc.args
    _, batch = ctx.batch(token_keys=("behav_logp", "ref_logp", "values"), seq_keys=("prompt_len", "reward", "stopped"))
    _, returns, mask, _ = advantages_and_returns(ctx, batch, ctx.args["kl_coef"], a["gamma"], a["lam"])
    batch.token_data.update(returns=returns, mask=mask, old_values=batch.token_data["values"])
    eps = a["value_eps_clip"]

    def loss_fn(model, hidden, mb):
        m = mb.token_data["mask"]
        v = model.head_output(hidden).float()
        old, ret = mb.token_data["old_values"], mb.token_data["returns"]
        v_clip = old + (v - old).clamp(-eps, eps)
        loss = 0.5 * torch.maximum((v - ret) ** 2, (v_clip - ret) ** 2)
        return masked_mean(loss, m), {"value_mean": float(masked_mean(v.detach(), m))}

    return train_minibatches(ctx, batch, loss_fn, a.get("n_minibatches", 1))


def reward_stats(state) -> dict:
    """Mean reward and response length over a step's sequences."""
    metas = [m for _, m in sorted(state.meta.items())]   # one summation order, whatever order replies came in
    lengths = [n - m["prompt_len"] for m in metas for n in m["lengths"]]
    stats = {"response_len/mean": sum(lengths) / len(lengths)}
    for key in ("reward", "monitor_reward"):
        values = [r for m in metas for r in m.get(key, ())]
        if values:
            stats[f"{key}/mean"] = sum(values) / len(values)
    return stats


class PPO:
    """The master's side: the MFCs, per-step arguments, the KL controller."""

    def __init__(self, config: PPOConfig):
        self.config, self.kl_coef = config, config.kl_coef
        # Evaluation samples responses and scores them; nothing trains.
        self.eval_mfcs = ("actor_gen", "reward_inf" if config.reward == "model" else "reward_fn") + (
            ("monitor_fn",) if config.monitor_reward else ())

    def _alloc(self, name) -> Allocation:
        if name not in self.config.allocations:
            raise AllocationError(f"PPO needs an allocation for MFC {name!r}; given: {sorted(self.config.allocations)}")
        return self.config.allocations[name]

    def mfcs(self) -> list[MFCSpec]:
        c = self.config
        gen = dict(c.generation, n_samples=1)
        train_inputs = GEN_OUTPUTS + ("ref_logp", "reward", "values")
        hyper = dict(gamma=c.gamma, lam=c.lam, eps_clip=c.eps_clip, value_eps_clip=c.value_eps_clip,
                     n_minibatches=c.n_minibatches, adv_norm=c.adv_norm, bootstrap_truncated=c.bootstrap_truncated,
                     missing_eos_penalty=c.missing_eos_penalty, temperature=gen.get("temperature", 1.0))
        mfcs = [MFCSpec("actor_gen", "actor", "generate", ("prompt",), GEN_OUTPUTS, self._alloc("actor_gen"),
                        {"generation": gen})]
        if c.reward == "model":
            mfcs.append(MFCSpec("reward_inf", "reward", "inference", ("input_ids",), ("reward",),
                                self._alloc("reward_inf"), {"kind": "score"}))
        else:
            mfcs.append(MFCSpec("reward_fn", None, "reward_fn", ("input_ids", "prompt_len"), ("reward",),
                                self._alloc("reward_fn"), {"reward": c.reward}))
        if c.monitor_reward is not None:   # where the responses are: no data moves
            mfcs.append(MFCSpec("monitor_fn", None, "reward_fn", ("input_ids", "prompt_len"), ("monitor_reward",),
                                c.allocations.get("monitor_fn", self._alloc("actor_gen")),
                                {"reward": c.monitor_reward}))
        mfcs += [
            MFCSpec("ref_inf", "ref", "inference", ("input_ids",), ("ref_logp",), self._alloc("ref_inf"),
                    {"kind": "logprobs", "temperature": hyper["temperature"]}),
            MFCSpec("critic_inf", "critic", "inference", ("input_ids",), ("values",), self._alloc("critic_inf"),
                    {"kind": "values"}),
            MFCSpec("actor_train", "actor", "train_step", train_inputs, (), self._alloc("actor_train"),
                    dict(hyper, loss="ppo_actor")),
            MFCSpec("critic_train", "critic", "train_step", train_inputs, (), self._alloc("critic_train"),
                    dict(hyper, loss="ppo_critic")),
        ]
        for m in mfcs:  # one response per prompt: every call sees batch_size sequences
            m.n_seqs = c.batch_size
        return mfcs

    def prompts_for_step(self, step: int, dataset) -> list[int]:
        return prompts_for_step(step, self.config.batch_size, dataset, self.config.shuffle_seed)

    def args_for(self, mfc, state, split) -> dict:
        return {"kl_coef": self.kl_coef} if mfc.interface == "train_step" else {}

    def eval_stats(self, state) -> dict:
        return reward_stats(state)

    def state_dict(self) -> dict:
        return {"kl_coef": self.kl_coef}

    def load_state_dict(self, state: dict) -> None:
        self.kl_coef = state["kl_coef"]

    def finish_step(self, state) -> dict:
        stats = dict(state.stats, **reward_stats(state))
        stats["kl_coef"] = self.kl_coef
        if self.config.adaptive_kl and "actor_train/kl" in stats:
            error = min(max(stats["actor_train/kl"] / self.config.kl_target - 1, -0.2), 0.2)
            self.kl_coef *= 1 + error * self.config.batch_size / self.config.kl_horizon
        return stats
