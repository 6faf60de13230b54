"""RLHF algorithms on the runtime: each defines its dataflow graph (MFCs) and
the master-side logic, plus the losses its train_step MFCs run on workers."""
from real_ext.algo.grpo import GRPO, GRPOConfig, pg_step
from real_ext.algo.ppo import PPO, PPOConfig, ppo_actor_step, ppo_critic_step

# train_step MFCs name their loss with args["loss"].
TRAIN_STEPS = {"ppo_actor": ppo_actor_step, "ppo_critic": ppo_critic_step, "pg": pg_step}

__all__ = ["GRPO", "GRPOConfig", "PPO", "PPOConfig", "TRAIN_STEPS"]
