"""Learning curves on the built-in sort task: PPO, GRPO and ReMax on 2 local
workers, each from the same short supervised warm start, the actor trained
under another layout than it generates with (reallocation every step). Prints
the mean reward every few steps (a running mean over that window) and the
wall time; the README shows the table.

    python bench/bench_learning.py                    # 150 steps each, ~3 minutes
    python bench/bench_learning.py --steps 60 --algos grpo
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit, machine, markdown_table  # noqa: E402

from real_ext.algo import GRPO, PPO, GRPOConfig, PPOConfig  # noqa: E402
from real_ext.data.prompts import PromptDataset  # noqa: E402
from real_ext.model.train import OptimConfig  # noqa: E402
from real_ext.runtime import Allocation, Master, ModelSpec  # noqa: E402
from real_ext.tasks import get_task  # noqa: E402
from real_ext.tasks.warm_start import warm_start  # noqa: E402

GEN_ALLOC, TRAIN_ALLOC = Allocation((0, 1), dp=2), Allocation((0, 1), tp=2)


def experiment(algo: str, sft: str, task):
    gen = dict(max_new_tokens=8, seed=3, stop_token_ids=(task.eos_id,))
    actor = ModelSpec("actor", path=sft, optimizer=OptimConfig(lr=3e-4 if algo != "ppo" else 5e-4))
    if algo == "ppo":
        models = {"actor": actor, "ref": ModelSpec("ref", path=sft),
                  "critic": ModelSpec("critic", path=sft, head="value", optimizer=OptimConfig(lr=1e-3))}
        allocations = {k: GEN_ALLOC for k in ("actor_gen", "reward_fn", "ref_inf", "critic_inf", "critic_train")}
        return models, PPO(PPOConfig(batch_size=64, generation=gen, reward="task:sort", kl_coef=0.01, lam=1.0,
                                     n_minibatches=4, allocations=dict(allocations, actor_train=TRAIN_ALLOC)))
    allocations = {"actor_gen": GEN_ALLOC, "reward_fn": GEN_ALLOC, "actor_train": TRAIN_ALLOC}
    if algo == "remax":
        return {"actor": actor}, GRPO(GRPOConfig(batch_size=64, group_size=1, generation=gen, reward="task:sort",
                                                 n_minibatches=4, allocations=allocations), remax=True)
    return ({"actor": actor, "ref": ModelSpec("ref", path=sft)},
            GRPO(GRPOConfig(batch_size=16, group_size=8, generation=gen, reward="task:sort", beta=0.01,
                            n_minibatches=4, allocations=dict(allocations, ref_inf=GEN_ALLOC))))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algos", default="ppo,grpo,remax")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    task = get_task("sort", min_len=3, max_len=5)
    algos = args.algos.split(",")
    curves, seconds = {}, {}
    with tempfile.TemporaryDirectory() as d:
        sft = warm_start(task, d, steps=20)
        for algo in algos:
            models, algorithm = experiment(algo, sft, task)
            with Master(models, algorithm, PromptDataset.from_task(task, 1024, seed=0), 2) as master:
                t0 = time.perf_counter()
                curves[algo] = [master.step()["reward/mean"] for _ in range(args.steps)]
                seconds[algo] = time.perf_counter() - t0
            print(f"{algo}: {seconds[algo]:.0f} s", flush=True)
    rows = []
    for start in range(0, args.steps, args.every):
        row = [f"{start}-{min(start + args.every, args.steps) - 1}"]
        for algo in algos:
            window = curves[algo][start:start + args.every]
            row.append(sum(window) / len(window))
        rows.append(row)
    rows.append(["wall time (s)"] + [seconds[a] for a in algos])
    text = (f"Mean reward on the sort task (3-5 digits, reward = fraction of answer positions right), "
            f"2 workers, {machine('cpu')}\n\n" + markdown_table(["steps"] + algos, rows))
    emit(text, args.out)


if __name__ == "__main__":
    main()
