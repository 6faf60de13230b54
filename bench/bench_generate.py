"""Generation throughput: real_ext's engine against Hugging Face generate (KV
cache on, left-padded batch), greedy, same weights and prompts, in one run.
Also the roofline floor of the same work: a decode step must read all weights
(bytes over the copy bandwidth measured here) and do 2 * params FLOPs per
sequence (over the torch.mm rate measured here), whichever is slower; prefill
does 2 * params FLOPs per prompt token. "x vs HF at floor" is how fast the
floor itself is against HF: no implementation can beat that ratio.

    python bench/bench_generate.py                 # CPU: 16 and 64 prompts, 128 new tokens
    python bench/bench_generate.py --device cuda --dtype bfloat16
"""
import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import copy_bandwidth, emit, machine, markdown_table, matmul_ceiling  # noqa: E402

from bench_model import CONFIG  # noqa: E402  (the same ~33M-parameter LLaMA)

from real_ext.generation import GenerationConfig, generate  # noqa: E402
from real_ext.model import ReaLModel  # noqa: E402


def prompts_for(n, args):
    g = torch.Generator().manual_seed(n)
    lengths = torch.randint(args.min_len, args.max_len + 1, (n,), generator=g).tolist()
    return [torch.randint(3, CONFIG["vocab_size"], (k,), generator=g).tolist() for k in lengths]


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def run_hf(model, prompts, new_tokens, device):
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding, as HF wants for generation
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0, use_cache=True)
    return out[:, width:].tolist()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batches", default="16,64")
    p.add_argument("--min-len", type=int, default=16)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    import transformers
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as path:
        torch.manual_seed(0)
        hf_config = transformers.LlamaConfig(**{k: v for k, v in CONFIG.items() if k != "model_type"})
        transformers.LlamaForCausalLM(hf_config).save_pretrained(path)
        hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
        hf = hf.to(args.device).eval()
        hf.generation_config.eos_token_id = None
        ours = ReaLModel.from_pretrained(path, dtype=dtype, device=args.device)
    params = sum(t.numel() for t in hf.parameters())
    weight_bytes = params * torch.empty((), dtype=dtype).element_size()
    bandwidth, flops = copy_bandwidth(args.device), matmul_ceiling(args.device, dtype)
    cfg = GenerationConfig(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, greedy=True)
    rows = []
    for n in [int(b) for b in args.batches.split(",")]:
        prompts = prompts_for(n, args)
        generate(ours, prompts[:2], GenerationConfig(max_new_tokens=4, greedy=True))  # warm-up
        sync(args.device)
        t0 = time.perf_counter()
        ours_out = generate(ours, prompts, cfg).output_ids
        sync(args.device)
        t_ours = time.perf_counter() - t0
        with torch.no_grad():
            run_hf(hf, prompts[:2], 4, args.device)
            sync(args.device)
            t0 = time.perf_counter()
            hf_out = run_hf(hf, prompts, args.new_tokens, args.device)
            sync(args.device)
        t_hf = time.perf_counter() - t0
        same = sum(a == b for a, b in zip(ours_out, hf_out))
        tokens = n * args.new_tokens
        # Each decode step reads every weight once and does 2 * params FLOPs per
        # sequence: whichever takes longer bounds it. Prefill is compute-bound.
        step_floor = max(weight_bytes / bandwidth, 2 * params * n / flops)
        floor = (args.new_tokens - 1) * step_floor + 2 * params * sum(map(len, prompts)) / flops
        rows.append([n, tokens, t_ours, t_hf, tokens / t_ours, tokens / t_hf, t_hf / t_ours, floor,
                     100 * floor / t_ours, 100 * floor / t_hf, t_hf / floor, f"{same}/{n}"])
        print(rows[-1], flush=True)
    table = markdown_table(["prompts", "new tokens", "ours s", "HF s", "ours tok/s", "HF tok/s", "x vs HF",
                            "roofline floor s", "floor % of ours", "floor % of HF", "x vs HF at floor",
                            "same tokens as HF"], rows)
    note = (f"Machine: {machine(args.device)}; LLaMA {params / 1e6:.0f}M params, {args.dtype}; prompts of "
            f"{args.min_len}..{args.max_len} tokens, greedy, {args.new_tokens} new tokens each. Floor: "
            f"{args.new_tokens - 1} decode steps x max({weight_bytes / 2 ** 20:.0f} MiB of weights at "
            f"{bandwidth / 1e9:.0f} GB/s (copy, read + write), the step's FLOPs at {flops / 1e9:.0f} GFLOP/s "
            f"(torch.mm)) + prefill FLOPs. "
            f"'same tokens as HF': sequences identical token for token (float32 rounding can flip a near tie).")
    emit(table + "\n\n" + note + "\n", args.out)


if __name__ == "__main__":
    main()
