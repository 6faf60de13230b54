"""RLHF algorithms on the runtime: each defines its dataflow graph (MFCs) and
the master-side logic, plus the losses its train_step MFCs run on workers."""
from real_ext.algo.dpo import DPO, DPOConfig, dpo_step
from real_ext.algo.grpo import GRPO, GRPOConfig, pg_step
from real_ext.algo.ppo import PPO, PPOConfig, ppo_actor_step, ppo_critic_step
from real_ext.algo.rw import RW, RWConfig, rw_step
from real_ext.algo.sft import SFT, SFTConfig, sft_step

# train_step MFCs name their loss with args["loss"].
TRAIN_STEPS = {"ppo_actor": ppo_actor_step, "ppo_critic": ppo_critic_step, "pg": pg_step,
               "sft": sft_step, "rw": rw_step, "dpo": dpo_step}

__all__ = ["DPO", "DPOConfig", "GRPO", "GRPOConfig", "PPO", "PPOConfig", "RW", "RWConfig", "SFT", "SFTConfig",
           "TRAIN_STEPS"]
