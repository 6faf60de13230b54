"""The ReaL paper's comparison re-estimated with our cost model, simulator and
search (real_ext/plan): PPO with four equal LLaMA-2 models (actor, critic,
reference, reward) on clusters of 80 GB GPUs (8 per node, NVLink within a
node, InfiniBand between), under three plan shapes:

- symmetric: every MFC on every GPU with one strategy (DeepSpeed-Chat's shape)
- disjoint: each model on its own GPUs (OpenRLHF's shape)
- searched: our search (simulated annealing over every MFC's mesh and strategy)

Prints (and writes to docs/plan_search.md) the full-scale 4 x 70B estimate
(4 iterations x 400 steps, as the paper's) next to the paper's hours, and
draws the throughput picture (7B on 16 GPUs ... 70B on 128) to
docs/plan_throughput.png.

    python bench/plan_paper.py [--time 60] [--gpu H100] [--out docs]
"""
import argparse
import os
import time

from real_ext.algo import PPO, PPOConfig
from real_ext.model.config import ModelConfig
from real_ext.plan.cost import AnalyticCost, ModelInfo
from real_ext.plan.hardware import parse_cluster
from real_ext.plan.search import Problem, search
from real_ext.plan.simulate import works_for
from real_ext.runtime.spec import Allocation

# LLaMA-2 / CodeLlama shapes (their Hugging Face config.json values).
LLAMA = {
    "7B": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32),
    "13B": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                num_key_value_heads=40),
    "34B": dict(hidden_size=8192, intermediate_size=22016, num_hidden_layers=48, num_attention_heads=64,
                num_key_value_heads=8),
    "70B": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8),
}
SCALES = [("7B", 2), ("13B", 4), ("34B", 8), ("70B", 16)]   # model, nodes of 8 GPUs (the paper's pairs)
PAPER_HOURS = {"symmetric": 141.5, "disjoint": 152.8, "searched": 17.0}   # DeepSpeed-Chat, OpenRLHF, ReaL

# Assumptions of the workload (stated in the output): prompts per step, tokens.
BATCH, PROMPT_LEN, GEN_LEN, MINIBATCHES = 512, 128, 896, 4
ITERATIONS, STEPS = 4, 400


def config(size: str) -> ModelConfig:
    return ModelConfig.from_hf_dict(dict(model_type="llama", vocab_size=32000, max_position_embeddings=4096,
                                         rms_norm_eps=1e-5, tie_word_embeddings=False, **LLAMA[size]))


def problem(size: str, nodes: int, gpu: str, time_budget: float) -> Problem:
    cfg = config(size)
    models = {"actor": ModelInfo(cfg, "lm", "bfloat16", trains=True, activation_checkpointing=True),
              "critic": ModelInfo(cfg, "value", "bfloat16", trains=True, activation_checkpointing=True),
              "ref": ModelInfo(cfg, "lm", "bfloat16"), "reward": ModelInfo(cfg, "value", "bfloat16")}
    placeholder = Allocation((0,))
    names = ("actor_gen", "reward_inf", "ref_inf", "critic_inf", "actor_train", "critic_train")
    ppo = PPO(PPOConfig(batch_size=BATCH, generation=dict(max_new_tokens=GEN_LEN), n_minibatches=MINIBATCHES,
                        allocations={n: placeholder for n in names}))
    works = works_for("ppo", BATCH, PROMPT_LEN, GEN_LEN, n_minibatches=MINIBATCHES)
    return Problem(ppo.mfcs(), models, works, AnalyticCost(parse_cluster(f"{nodes}x8x{gpu}")))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--time", type=float, default=60.0, help="search budget per cluster (s)")
    p.add_argument("--gpu", default="H100")
    p.add_argument("--out", default="docs")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows, throughput = [], {}
    for size, nodes in SCALES:
        t0 = time.time()
        found = search(problem(size, nodes, args.gpu, args.time), time_budget_s=args.time)
        times = {"searched": found.result.iteration_time}
        for name in ("symmetric", "disjoint"):
            b = found.baselines[name]
            times[name] = b[1].iteration_time if b else float("inf")
        tokens = BATCH * (PROMPT_LEN + GEN_LEN)
        throughput[size] = {k: tokens / v for k, v in times.items()}
        rows.append((size, nodes * 8, times, found, time.time() - t0))
        print(f"{size} on {nodes * 8} GPUs: " + ", ".join(f"{k} {v:.1f} s/step" for k, v in times.items())
              + f" ({found.evaluated} plans, {time.time() - t0:.0f} s)", flush=True)
    size, gpus, times, found, secs = rows[-1]
    hours = {k: v * ITERATIONS * STEPS / 3600 for k, v in times.items()}
    lines = [f"Full-scale RLHF of 4 x LLaMA-2-{size} on {gpus} {args.gpu} (80 GB) GPUs, {ITERATIONS} iterations x "
             f"{STEPS} steps:", "",
             "| plan shape | system it stands for | est. s/step | est. hours | paper's hours |", "|---|---|---|---|---|"]
    who = {"symmetric": "DeepSpeed-Chat", "disjoint": "OpenRLHF", "searched": "ReaL (our search)"}
    for k in ("symmetric", "disjoint", "searched"):
        lines.append(f"| {k} | {who[k]} | {times[k]:.1f} | {hours[k]:.1f} | {PAPER_HOURS[k]} |")
    lines += ["", f"Searched plan ({found.evaluated} plans simulated in {secs:.0f} s):", "",
              "| MFC | GPUs | dp | tp | pp | micro-batches |", "|---|---|---|---|---|---|"]
    for name, a in found.allocations.items():
        lines.append(f"| {name} | {a.mesh[0]}-{a.mesh[-1]} | {a.dp} | {a.tp} | {a.pp} | {a.n_microbatches} |")
    lines += ["", f"Assumptions: {BATCH} prompts per step, {PROMPT_LEN} prompt + {GEN_LEN} generated tokens, "
              f"{MINIBATCHES} PPO mini-batches, bfloat16 weights with fp32 Adam state and master weights, activation "
              f"checkpointing in training, GPipe pipelines (as the runtime runs them), the analytic cost model's "
              f"constants for {args.gpu} (real_ext/plan/hardware.py, cost.py)."]
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.out, "plan_table.md"), "w") as f:
        f.write(table + "\n")
    _draw(throughput, os.path.join(args.out, "plan_throughput.png"), args.gpu)


def _draw(throughput: dict, path: str, gpu: str) -> None:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(8, 4), dpi=120)
    ax = fig.add_subplot()
    sizes = list(throughput)
    shapes = ("symmetric", "disjoint", "searched")
    labels = {"symmetric": "DeepSpeed-Chat shape", "disjoint": "OpenRLHF shape", "searched": "ReaL (searched)"}
    width = 0.8 / len(shapes)
    for i, k in enumerate(shapes):
        xs = [x + i * width for x in range(len(sizes))]
        ax.bar(xs, [throughput[s][k] for s in sizes], width, label=labels[k])
        for x, s in zip(xs, sizes):
            if throughput[s][k] == 0:   # no plan of this shape fits the memory
                ax.text(x, 0, "does not\nfit", ha="center", va="bottom", fontsize="x-small")
    ax.set_xticks([x + width for x in range(len(sizes))],
                  [f"{s}\n{n * 8} GPUs" for s, n in SCALES])
    ax.set_ylabel("estimated tokens / s")
    ax.set_title(f"PPO with 4 equal LLaMA-2 models, {gpu} clusters (simulated)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
