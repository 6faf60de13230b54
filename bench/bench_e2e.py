"""End-to-end RLHF iterations through the runtime (master, worker processes,
MFCs on their meshes), on this machine, in one run:

1. GRPO: our step against TRL's `GRPOTrainer` step (bench/trl_grpo_anchor.py):
   same checkpoint (the sort task's warm start), prompts, group size, learning
   rate, fixed generation length (min_new_tokens = max_new_tokens on both
   sides; --stop-at-eos: both stop at EOS instead), one optimizer update per
   step, beta = 0 (no reference model), float32. Ours runs as 1 worker x 2
   threads and as 2 workers x 1 thread (dp=2). "FLOP floor" is the step's
   matrix-product FLOPs (2 * params per prefilled or generated token, 6 *
   params per trained token) at the torch.mm rate measured here, with every
   sequence run whole (TRL's work) and with each prompt run once (ours: the
   prefill runs a prompt once for its group, and training shares it between
   the group's samples, real_ext/model/shared_prefix.py).
2. PPO (actor, critic, reference, reward model) on 4 workers under three
   shapes of allocation: symmetric (every MFC dp=4 on all workers: the
   DeepSpeed-Chat shape), disjoint (each model on its own workers: the
   OpenRLHF shape) and ReaL plans (a layout per MFC, the actor reallocated
   between its training and generation layouts); the best ReaL plan counts.

Cases run in `--rounds` interleaved rounds and each keeps its best round (the
median step of a round): this machine's load changes over minutes.

    python bench/bench_e2e.py                          # both parts, ~5 min on 2 cores
    python bench/bench_e2e.py --part grpo --sizes small --group-size 16
    python bench/bench_e2e.py --part grpo --sizes small --stop-at-eos --new-tokens 48
    python bench/bench_e2e.py --part ppo --ppo-batch 32
"""
import argparse
import contextlib
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit, machine, markdown_table, matmul_ceiling  # noqa: E402
from trl_grpo_anchor import trl_grpo_step_time  # noqa: E402  (sets the HF offline variables first)

from real_ext.algo import GRPO, PPO, GRPOConfig, PPOConfig  # noqa: E402
from real_ext.data.prompts import PromptDataset  # noqa: E402
from real_ext.model.train import OptimConfig  # noqa: E402
from real_ext.runtime import Allocation, Master, ModelSpec  # noqa: E402
from real_ext.tasks import get_task  # noqa: E402
from real_ext.tasks.warm_start import warm_start  # noqa: E402

N_PROMPTS = 256     # the prompt pool; step i takes the i-th slice of it


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def count_params(model_dir: str) -> int:
    from safetensors.torch import load_file
    return sum(t.numel() for t in load_file(os.path.join(model_dir, "model.safetensors")).values())


def checkpoint(task, workdir: str, size: str) -> str:
    """The task's warm-started checkpoint of this size (made once per run)."""
    path = os.path.join(workdir, size)
    if not os.path.exists(os.path.join(path, "config.json")):
        warm_start(task, path, size=size, steps=20)
    return path


def spans_of_step(events) -> dict[str, float]:
    """Per op name: the longest span over workers (s); "busy": all spans summed."""
    out = {"busy": 0.0}
    for e in events:
        d = e["dur"] / 1e6
        out[e["name"]] = max(out.get(e["name"], 0.0), d)
        out["busy"] += d
    return out


def run_master(models, algo, prompts, n_workers, threads, steps, warmup) -> dict:
    """Median step seconds after `warmup` steps, and the per-op spans of the
    median step (so that its parts add up to its time)."""
    with Master(models, algo, PromptDataset(prompts), n_workers=n_workers, threads_per_worker=threads) as m:
        measured = []
        for i in range(warmup + steps):
            first = len(m.trace.events)
            stats = m.step()
            if i >= warmup:
                measured.append((stats["time_s"], spans_of_step(m.trace.events[first:]), stats))
    measured.sort(key=lambda t: t[0])
    step_s, spans, stats = measured[len(measured) // 2]
    return {"step_s": step_s, "stats": stats, "spans": spans}


def best_rounds(rounds: list[dict]) -> dict:
    return min(rounds, key=lambda r: r["step_s"])


# ---------------------------------------------------------------- GRPO vs TRL

OURS_GRPO = ((1, 2), (2, 1))    # (workers, threads per worker)
BF16_NOTE = (" (ours: bfloat16 weights and compute with float32 master weights; TRL: its default bf16 "
             "autocast over float32 weights)")


def grpo_ours(model_dir, task, prompts, args, n_workers, threads) -> dict:
    allw = Allocation(tuple(range(n_workers)), dp=n_workers)
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=0 if args.stop_at_eos else args.new_tokens, seed=0,
               stop_token_ids=(task.eos_id,))
    algo = GRPO(GRPOConfig(batch_size=args.prompts, group_size=args.group_size, generation=gen, reward="task:sort",
                           allocations={"actor_gen": allw, "reward_fn": allw, "actor_train": allw}))
    models = {"actor": ModelSpec("actor", path=model_dir, optimizer=OptimConfig(lr=args.lr), dtype=args.dtype)}
    return run_master(models, algo, prompts, n_workers, threads, args.steps, args.warmup)


def grpo_trl(model_dir, task, prompts, args) -> dict:
    from transformers import AutoTokenizer
    text = [task.decode(p) for p in prompts]
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    assert tok(text[0], add_special_tokens=False)["input_ids"] == prompts[0], "TRL would see other prompt ids"

    def reward(prompt: str, completion: str) -> float:
        return task.reward(task.encode(prompt), task.encode(completion))

    with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its final metrics
        return trl_grpo_step_time(model_dir, text, reward, group_size=args.group_size,
                                  max_new_tokens=args.new_tokens, prompts_per_step=args.prompts, steps=args.steps,
                                  warmup=args.warmup, lr=args.lr, seed=0,
                                  fixed_length=not args.stop_at_eos, bf16=args.dtype == "bfloat16")


def grpo_rows(size, model_dir, prompts, args, mm_rate, trl, ours) -> tuple[list, str]:
    n_seqs = args.prompts * args.group_size
    mean_prompt = sum(map(len, prompts)) / len(prompts)
    t_trl = trl["step_s"]
    rows = []
    for (n_workers, threads), r in ours.items():
        s, tokens = r["spans"], r["stats"]["actor_gen/response_tokens"]
        name = f"ours, {n_workers} worker{'s' * (n_workers > 1)} x {threads} thread{'s' * (threads > 1)}"
        other = r["step_s"] - s["actor_gen"] - s["actor_train"]
        rows.append([size, name, r["step_s"], 1 / r["step_s"], tokens, tokens / r["step_s"], s["actor_gen"],
                     s["actor_train"], other, t_trl / r["step_s"]])
    tokens = trl["generated_tokens_per_step"]
    rows.append([size, f"TRL {trl['trl_version']} GRPOTrainer", t_trl, 1 / t_trl, tokens, tokens / t_trl, "n/a",
                 "n/a", "n/a", 1.0])
    # The floors of our median step's work (with EOS stops the two sides sample different lengths):
    # every sequence run whole, as TRL does, and each prompt run once (as our prefill and
    # shared-prefix training do; training still runs every response).
    tokens = ours[OURS_GRPO[0]]["stats"]["actor_gen/response_tokens"]
    n_params = count_params(model_dir)
    floor = (2 + 6) * n_params * (n_seqs * mean_prompt + tokens) / mm_rate
    shared = (2 + 6) * n_params * (args.prompts * mean_prompt + tokens) / mm_rate
    rows.append([size, "FLOP floor, every sequence whole", floor, 1 / floor, tokens, tokens / floor, "", "", "",
                 t_trl / floor])
    rows.append([size, "FLOP floor, each prompt once", shared, 1 / shared, tokens, tokens / shared, "", "", "",
                 t_trl / shared])
    best = t_trl / min(r["step_s"] for r in ours.values())
    note = (f"{size} ({n_params / 1e6:.2f}M params): our best is {best:.2f}x TRL's steps/s, goal >= 3x "
            f"{'met' if best >= 3 else 'NOT met'}; the FLOP floor of the whole sequences is {t_trl / floor:.2f}x "
            f"TRL, of the prompts run once {t_trl / shared:.2f}x.")
    return rows, note


def grpo_part(args, task, workdir, mm_rate) -> str:
    prompts = task.prompts(N_PROMPTS, 0)
    gen_tokens = args.prompts * args.group_size * args.new_tokens
    rows, notes = [], []
    for size in args.sizes.split(","):
        model_dir = checkpoint(task, workdir, size)
        trl_rounds, ours_rounds = [], {c: [] for c in OURS_GRPO}
        for rnd in range(args.rounds):
            log(f"[grpo {size} round {rnd}] TRL")
            trl_rounds.append(grpo_trl(model_dir, task, prompts, args))
            assert args.stop_at_eos or trl_rounds[-1]["generated_tokens_per_step"] == gen_tokens, trl_rounds[-1]
            for n_workers, threads in OURS_GRPO:
                log(f"[grpo {size} round {rnd}] ours {n_workers}x{threads}")
                r = grpo_ours(model_dir, task, prompts, args, n_workers, threads)
                assert args.stop_at_eos or r["stats"]["actor_gen/response_tokens"] == gen_tokens, r["stats"]
                ours_rounds[(n_workers, threads)].append(r)
        size_rows, note = grpo_rows(size, model_dir, prompts, args, mm_rate, best_rounds(trl_rounds),
                                    {c: best_rounds(rs) for c, rs in ours_rounds.items()})
        rows += size_rows
        notes.append(note)
    header = ["model", "case", "s/step", "steps/s", "gen tokens/step", "gen tokens/s", "generate s", "train s",
              "other s", "x vs TRL"]
    lengths = (f"up to {args.new_tokens} tokens, stopping at EOS (each side samples its own lengths; "
               f"'gen tokens/step' of the median step)" if args.stop_at_eos
               else f"exactly {args.new_tokens} tokens ({gen_tokens} generated tokens)")
    return (markdown_table(header, rows) + "\n\n"
            + f"GRPO step: {args.prompts} prompts x group {args.group_size} = {args.prompts * args.group_size} "
              f"completions of {lengths}, one AdamW update "
              f"(lr {args.lr}), beta 0, {args.dtype}{BF16_NOTE if args.dtype == 'bfloat16' else ''}; per case the best of {args.rounds} rounds, each the median of "
              f"{args.steps} steps after {args.warmup}. 'generate s' / 'train s': the longest worker span of "
              f"actor_gen / actor_train; 'other s': the rest of the step (reward function, data transfers, master "
              f"and messages). FLOP floor at {mm_rate / 1e9:.0f} GFLOP/s (torch.mm in {args.dtype}, this run).\n\n"
            + "\n".join(notes) + "\n")


# ---------------------------------------------------------------- PPO allocations

def alloc(mesh, dp=1, tp=1):
    return Allocation(tuple(mesh), dp=dp, tp=tp)


MFCS = ("actor_gen", "reward_inf", "ref_inf", "critic_inf", "actor_train", "critic_train")
ALL, LEFT, RIGHT = (0, 1, 2, 3), (0, 1), (2, 3)
PPO_PLANS = {
    "symmetric": ("every MFC dp=4 on workers 0-3", {m: alloc(ALL, dp=4) for m in MFCS}),
    "disjoint": ("actor (generation and training) dp=2 on 0-1, critic on 2, reference and reward on 3",
                 {"actor_gen": alloc(LEFT, dp=2), "actor_train": alloc(LEFT, dp=2), "critic_inf": alloc((2,)),
                  "critic_train": alloc((2,)), "ref_inf": alloc((3,)), "reward_inf": alloc((3,))}),
    "ReaL a": ("actor_gen dp=4 on 0-3, actor_train dp=2 on 0-1 (reallocated); critic dp=2 on 2-3; "
               "reference dp=2 on 0-1, reward dp=2 on 2-3",
               {"actor_gen": alloc(ALL, dp=4), "actor_train": alloc(LEFT, dp=2), "critic_inf": alloc(RIGHT, dp=2),
                "critic_train": alloc(RIGHT, dp=2), "ref_inf": alloc(LEFT, dp=2), "reward_inf": alloc(RIGHT, dp=2)}),
    "ReaL b": ("as ReaL a with tp=2 instead of dp=2 for actor_train (0-1) and the critic (2-3)",
               {"actor_gen": alloc(ALL, dp=4), "actor_train": alloc(LEFT, tp=2), "critic_inf": alloc(RIGHT, tp=2),
                "critic_train": alloc(RIGHT, tp=2), "ref_inf": alloc(LEFT, dp=2), "reward_inf": alloc(RIGHT, dp=2)}),
    "ReaL c": ("actor_train on 0 alone, actor_gen dp=2 on 0-1 (reallocated); reference on 1, critic on 2, "
               "reward on 3",
               {"actor_gen": alloc(LEFT, dp=2), "actor_train": alloc((0,)), "critic_inf": alloc((2,)),
                "critic_train": alloc((2,)), "ref_inf": alloc((1,)), "reward_inf": alloc((3,))}),
}


def ppo_part(args, task, workdir) -> str:
    model_dir = checkpoint(task, workdir, args.ppo_size)
    models = {"actor": ModelSpec("actor", path=model_dir, optimizer=OptimConfig(lr=args.lr)),
              "critic": ModelSpec("critic", path=model_dir, head="value", optimizer=OptimConfig(lr=args.lr)),
              "ref": ModelSpec("ref", path=model_dir),
              "reward": ModelSpec("reward", path=model_dir, head="value")}
    prompts = task.prompts(N_PROMPTS, 0)
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, seed=0,
               stop_token_ids=(task.eos_id,))
    rounds = {name: [] for name in PPO_PLANS}
    for rnd in range(args.rounds):
        for name, (_, allocations) in PPO_PLANS.items():
            log(f"[ppo round {rnd}] {name}")
            algo = PPO(PPOConfig(batch_size=args.ppo_batch, generation=gen, allocations=allocations, reward="model"))
            rounds[name].append(run_master(models, algo, prompts, 4, 1, args.ppo_steps, args.warmup))
    results = {name: best_rounds(rs) for name, rs in rounds.items()}
    real = min((n for n in results if n.startswith("ReaL")), key=lambda n: results[n]["step_s"])
    t_sym = results["symmetric"]["step_s"]
    rows = []
    for name, r in results.items():
        s = r["spans"]
        moved = sum(v for k, v in s.items() if k.endswith((":realloc", ":free")))
        data = sum(v for k, v in s.items() if k.endswith(":data"))
        rows.append([name + " (best ReaL)" * (name == real), r["step_s"], t_sym / r["step_s"]]
                    + [s.get(m, 0.0) for m in MFCS] + [moved, data, 100 * s["busy"] / (4 * r["step_s"])])
    header = (["allocation", "s/iteration", "x vs symmetric"] + [f"{m} s" for m in MFCS]
              + ["realloc + free s", "data transfer s", "worker busy %"])
    contenders = sorted(("symmetric", "disjoint", real), key=lambda n: results[n]["step_s"])
    win, second = contenders[0], contenders[1]
    plans = "\n".join(f"- {name}: {desc}" for name, (desc, _) in PPO_PLANS.items())
    return (markdown_table(header, rows) + "\n\n"
            + f"PPO iteration: {args.ppo_batch} prompts, one response each of exactly {args.new_tokens} tokens; four "
              f"'{args.ppo_size}' models (actor; critic and reward model with a value head; reference), float32, one "
              f"update each for actor and critic; 4 worker processes x 1 thread sharing this machine's "
              f"{os.cpu_count()} cores, so at most {os.cpu_count()} of them compute at once. Per allocation the best "
              f"of {args.rounds} rounds, each the median of {args.ppo_steps} iterations after {args.warmup}. MFC "
              f"columns: the longest worker span of each run (runs on disjoint workers overlap, so they do not add "
              f"up); 'worker busy %': all worker spans over 4 x the iteration (a worker waiting in a collective "
              f"counts as busy).\n\n" + plans + "\n\n"
            + f"Winner: {win}, {results[second]['step_s'] / results[win]['step_s']:.2f}x faster than {second} and "
              f"{t_sym / results[win]['step_s']:.2f}x faster than symmetric.\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", default="all", choices=["grpo", "ppo", "all"])
    p.add_argument("--sizes", default="tiny,small", help="sort-task model sizes for the GRPO comparison")
    p.add_argument("--prompts", type=int, default=8, help="GRPO prompts per step")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=16, help="generated tokens per response")
    p.add_argument("--stop-at-eos", action="store_true",
                   help="GRPO responses stop at EOS (up to --new-tokens) instead of having exactly --new-tokens")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="GRPO part: bfloat16 runs ours in bf16 and TRL with bf16 autocast")
    p.add_argument("--steps", type=int, default=5, help="measured GRPO steps per round (median)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--ppo-size", default="small")
    p.add_argument("--ppo-batch", type=int, default=64, help="PPO prompts per iteration")
    p.add_argument("--ppo-steps", type=int, default=3, help="measured PPO iterations per round (median)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    task = get_task("sort", min_len=3, max_len=5)
    mm_start = matmul_ceiling("cpu", torch.float32)
    blocks = []
    with tempfile.TemporaryDirectory() as workdir:
        if args.part in ("grpo", "all"):
            dtype = getattr(torch, args.dtype)
            blocks.append(grpo_part(args, task, workdir, mm_start if dtype == torch.float32
                                    else matmul_ceiling("cpu", dtype)))
        if args.part in ("ppo", "all"):
            blocks.append(ppo_part(args, task, workdir))
    mm_end = matmul_ceiling("cpu", torch.float32)
    head = (f"Machine: {machine('cpu')}; torch.mm float32 {mm_start / 1e9:.0f} GFLOP/s at the start of the run, "
            f"{mm_end / 1e9:.0f} at the end. Task: sort, 3..5 digits (prompts of 6..8 tokens); every model starts "
            f"from the task's warm start (20 SFT steps).")
    emit("\n\n".join([head] + blocks), args.out)


if __name__ == "__main__":
    main()
