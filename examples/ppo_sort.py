"""PPO end to end on the built-in sort task with a ReaL allocation on 4 local
workers: a short supervised warm start, then PPO steps where the actor
generates on all 4 workers (dp=4) and trains on workers 0-1 (tp=2), the critic
lives on workers 2-3 (tp=2) and the reference model runs there too (pp=2),
offloaded between its calls. The actor is reallocated between its training and
generation layouts every step. Prints one line per step and writes the
Chrome trace (open in https://ui.perfetto.dev) and the trained actor (HF
format) to --out.

    python examples/ppo_sort.py --out runs/ppo_sort [--steps 150]
"""
import argparse
import os
import time

from real_ext.algo import PPO, PPOConfig
from real_ext.data.prompts import PromptDataset
from real_ext.model.train import OptimConfig
from real_ext.runtime import Allocation, Master, ModelSpec
from real_ext.tasks import get_task
from real_ext.tasks.warm_start import warm_start


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/ppo_sort")
    p.add_argument("--steps", type=int, default=150)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    task = get_task("sort", min_len=3, max_len=5)
    sft = warm_start(task, os.path.join(args.out, "sft"), steps=20)
    models = {"actor": ModelSpec("actor", path=sft, optimizer=OptimConfig(lr=5e-4)),
              "critic": ModelSpec("critic", path=sft, head="value", optimizer=OptimConfig(lr=1e-3)),
              "ref": ModelSpec("ref", path=sft)}
    A = Allocation
    allocations = {"actor_gen": A((0, 1, 2, 3), dp=4), "reward_fn": A((0, 1, 2, 3), dp=4),
                   "actor_train": A((0, 1), tp=2), "critic_inf": A((2, 3), tp=2), "critic_train": A((2, 3), tp=2),
                   "ref_inf": A((2, 3), pp=2)}
    ppo = PPO(PPOConfig(batch_size=64, allocations=allocations, reward="task:sort", kl_coef=0.01, lam=1.0,
                        n_minibatches=4, generation=dict(max_new_tokens=8, seed=3, stop_token_ids=(task.eos_id,))))
    t0 = time.time()
    with Master(models, ppo, PromptDataset.from_task(task, 1024, seed=0), 4, offload=("ref",)) as master:
        for _ in range(args.steps):
            s = master.step()
            print(f"step {s['step']:3d}  reward {s['reward/mean']:.3f}  kl {s['actor_train/kl']:.3f}  "
                  f"critic loss {s['critic_train/loss']:.4f}  {s['time_s']:.2f} s", flush=True)
        master.save("actor", os.path.join(args.out, "actor"))
        master.trace.write(os.path.join(args.out, "trace.json"))
    print(f"done in {time.time() - t0:.0f} s; trace: {args.out}/trace.json, actor: {args.out}/actor")


if __name__ == "__main__":
    main()
