"""One PPO iteration on one GPU: actor, critic, reference and reward model
(random weights of a ~0.44B LLaMA, bfloat16 with float32 master weights),
every MFC on the one worker, through the runtime (master, worker process,
NCCL). Prints where the iteration's time goes (per MFC, from the runtime's
trace) and its matrix-product FLOPs against the bf16 torch.mm rate measured
in the same run (the anchor: "% of mm" is the model FLOP utilisation of the
whole iteration); writes the trace (Chrome JSON) and its timeline PNG.

    python bench/bench_ppo_gpu.py --out-dir OUT            # on a GPU
    python bench/bench_ppo_gpu.py --device cpu --model tiny --batch 8 --new-tokens 16 --out-dir /tmp/ppo
    python bench/bench_ppo_gpu.py --estimate-only H100 --out-dir /tmp/ppo   # the cost model's prediction only

On a card with a preset in real_ext/plan/hardware.py (H100, H200, A100) the
table also gives the plan search's analytic estimate of each MFC, so every
GPU run checks that cost model against a measurement.
"""
import argparse
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_generate import MODELS  # noqa: E402
from common import emit, machine, markdown_table, matmul_ceiling  # noqa: E402

from real_ext.algo import PPO, PPOConfig  # noqa: E402
from real_ext.data.prompts import PromptDataset  # noqa: E402
from real_ext.model.train import OptimConfig  # noqa: E402
from real_ext.runtime import Allocation, Master, ModelSpec  # noqa: E402
from real_ext.runtime.timeline import draw_timeline  # noqa: E402

CONFIGS = dict(MODELS, tiny=dict(MODELS["32m"], hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, vocab_size=512))
MFCS = ("actor_gen", "reward_inf", "ref_inf", "critic_inf", "actor_train", "critic_train")


def random_checkpoint(config: dict, path: str, device: str) -> int:
    """A seeded random LLaMA saved as a HF checkpoint; its parameter count."""
    import transformers
    torch.manual_seed(0)
    hf_config = transformers.LlamaConfig(**{k: v for k, v in config.items() if k != "model_type"})
    with torch.device(device):
        model = transformers.LlamaForCausalLM(hf_config)
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def iteration_flops(params: int, prompt_tokens: int, new_tokens: int) -> float:
    """Matrix-product FLOPs: 2 x params per token forward (generation's
    prefill and decode; reward, reference and critic inference over whole
    sequences), 6 x params per token trained (actor and critic)."""
    seq_tokens = prompt_tokens + new_tokens
    return 2 * params * seq_tokens + 3 * 2 * params * seq_tokens + 2 * 6 * params * seq_tokens


def analytic_estimates(config: dict, dtype: str, batch: int, prompt_len: float, new_tokens: int,
                       card: str) -> dict[str, float] | None:
    """What the plan search's analytic cost model (real_ext/plan/cost.py,
    datasheet constants) predicts for each MFC of this iteration on one
    ``card``; None when the card has no preset."""
    from real_ext.model.config import ModelConfig
    from real_ext.plan.cost import AnalyticCost, ModelInfo, Strategy
    from real_ext.plan.hardware import parse_cluster
    from real_ext.plan.simulate import works_for
    try:
        cost = AnalyticCost(parse_cluster(f"1x1x{card}"))
    except ValueError:
        return None
    c = ModelConfig.from_hf_dict(config)
    models = {"actor_gen": ModelInfo(c, dtype=dtype, trains=True), "reward_inf": ModelInfo(c, "value", dtype=dtype),
              "ref_inf": ModelInfo(c, dtype=dtype), "critic_inf": ModelInfo(c, "value", dtype=dtype, trains=True)}
    models.update(actor_train=models["actor_gen"], critic_train=models["critic_inf"])
    works = works_for("ppo", batch, round(prompt_len), new_tokens)
    return {m: cost.mfc_time(models[m], works[m], Strategy(1, 1, 1)) for m in MFCS}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--model", default="0.5b", choices=sorted(CONFIGS))
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--batch", type=int, default=64, help="prompts per iteration")
    p.add_argument("--min-len", type=int, default=64)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="measured iterations (after one warm-up); the median counts")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--estimate-only", metavar="CARD", help="print the analytic cost model's estimate of each MFC on "
                   "one CARD (H100, H200, A100) for this workload, run nothing")
    args = p.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    config = CONFIGS[args.model]
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, config["vocab_size"], (int(n),), generator=g).tolist()
               for n in torch.randint(args.min_len, args.max_len + 1, ((args.steps + 1) * args.batch,), generator=g)]
    prompt_tokens = sum(len(q) for q in prompts[:args.batch])
    if args.estimate_only:
        estimates = analytic_estimates(config, args.dtype, args.batch, prompt_tokens / args.batch, args.new_tokens,
                                       args.estimate_only)
        if estimates is None:
            p.error(f"--estimate-only {args.estimate_only}: no such preset (H100, H200, A100)")
        print(markdown_table(["MFC", "analytic estimate s"], [[m, t] for m, t in estimates.items()]))
        print(f"| iteration (sum) | {sum(estimates.values()):.3g} |")
        return
    one = Allocation((0,))
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, seed=0)
    algo = PPO(PPOConfig(batch_size=args.batch, generation=gen, allocations={m: one for m in MFCS}, reward="model"))
    with tempfile.TemporaryDirectory() as path:
        params = random_checkpoint(config, path, args.device)
        opt = OptimConfig(lr=1e-6)
        models = {"actor": ModelSpec("actor", path=path, dtype=args.dtype, optimizer=opt),
                  "critic": ModelSpec("critic", path=path, head="value", dtype=args.dtype, optimizer=opt),
                  "ref": ModelSpec("ref", path=path, dtype=args.dtype),
                  "reward": ModelSpec("reward", path=path, head="value", dtype=args.dtype)}
        steps = []
        with Master(models, algo, PromptDataset(prompts), n_workers=1, device=args.device) as master:
            for i in range(args.steps + 1):
                first = len(master.trace.events)
                stats = master.step()
                spans = {}
                for e in master.trace.events[first:]:
                    spans[e["name"]] = spans.get(e["name"], 0.0) + e["dur"] / 1e6
                print(f"iteration {i}: {stats['time_s']:.2f} s", {k: round(v, 3) for k, v in spans.items()},
                      flush=True)
                if i > 0:
                    steps.append((stats["time_s"], spans))
            trace = os.path.join(args.out_dir, "ppo_trace.json")
            master.trace.write(trace)
    draw_timeline(trace, os.path.join(args.out_dir, "ppo_timeline.png"),
                  title=f"PPO iteration, {params / 1e9:.2f}B x 4 models, one {machine(args.device)}")
    time_s, spans = sorted(steps, key=lambda t: t[0])[len(steps) // 2]
    mm = matmul_ceiling(args.device, getattr(torch, args.dtype))
    flops = iteration_flops(params, prompt_tokens, args.batch * args.new_tokens)
    card = torch.cuda.get_device_name().split()[1] if args.device == "cuda" else "CPU"   # "NVIDIA H100 80GB HBM3"
    estimates = analytic_estimates(config, args.dtype, args.batch, prompt_tokens / args.batch, args.new_tokens, card)
    rows = [[m, spans.get(m, 0.0), 100 * spans.get(m, 0.0) / time_s] for m in MFCS]
    if estimates:
        rows = [row + [estimates[m], estimates[m] / max(row[1], 1e-9)] for row, m in zip(rows, MFCS)]
    other = time_s - sum(spans.get(m, 0.0) for m in MFCS)
    pad = [""] * (2 if estimates else 0)
    rows += [["other (data transfer, master)", other, 100 * other / time_s] + pad, ["iteration", time_s, 100.0] + pad]
    header = ["MFC", "s", "% of iteration"] + (["analytic estimate s", "estimate / measured"] if estimates else [])
    table = markdown_table(header, rows)
    note = (f"Machine: {machine(args.device)}. PPO iteration: {args.batch} prompts of {args.min_len}..{args.max_len} "
            f"tokens, one response each of exactly {args.new_tokens} tokens; four {params / 1e9:.2f}B LLaMA models "
            f"(random weights; critic and reward with a value head), {args.dtype}, all on one worker; one update "
            f"each for actor and critic. Median of {args.steps} iterations after a warm-up. Matrix-product FLOPs of "
            f"the iteration: {flops / 1e12:.1f} TFLOP = {flops / time_s / 1e12:.1f} TFLOP/s, "
            f"{100 * flops / time_s / mm:.1f}% of the {mm / 1e12:.0f} TFLOP/s torch.mm rate measured here. "
            f"Sequences per second: {args.batch / time_s:.1f}; generated tokens per second: "
            f"{args.batch * args.new_tokens / time_s:.0f}.")
    emit(table + "\n\n" + note + "\n", os.path.join(args.out_dir, "ppo.md"))


if __name__ == "__main__":
    main()
