"""One PPO iteration on one GPU: actor, critic, reference and reward model
(random weights of a ~0.44B LLaMA, bfloat16 with float32 master weights),
every MFC on the one worker, through the runtime (master, worker process,
NCCL). Prints where the iteration's time goes (per MFC, from the runtime's
trace) and its matrix-product FLOPs against the bf16 torch.mm rate measured
in the same run (the anchor: "% of mm" is the model FLOP utilisation of the
whole iteration); writes the trace (Chrome JSON) and its timeline PNG.

    python bench/bench_ppo_gpu.py --out-dir OUT            # on a GPU
    python bench/bench_ppo_gpu.py --device cpu --model tiny --batch 8 --new-tokens 16 --out-dir /tmp/ppo
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
    args = p.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    config = CONFIGS[args.model]
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, config["vocab_size"], (int(n),), generator=g).tolist()
               for n in torch.randint(args.min_len, args.max_len + 1, ((args.steps + 1) * args.batch,), generator=g)]
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
    prompt_tokens = sum(len(q) for q in prompts[:args.batch])
    flops = iteration_flops(params, prompt_tokens, args.batch * args.new_tokens)
    rows = [[m, spans.get(m, 0.0), 100 * spans.get(m, 0.0) / time_s] for m in MFCS]
    other = time_s - sum(spans.get(m, 0.0) for m in MFCS)
    rows += [["other (data transfer, master)", other, 100 * other / time_s], ["iteration", time_s, 100.0]]
    table = markdown_table(["MFC", "s", "% of iteration"], rows)
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
