"""Training throughput: forward + backward + AdamW step on mixed-length batches,
real_ext's packed ReaLModel against Hugging Face transformers (same LLaMA
config and weights, right-padded batch, sdpa attention, torch.optim.AdamW).
Each side runs in its own process so that its peak memory (max RSS) is its own.

    python bench/bench_model.py                      # ~33M-parameter LLaMA, 32 seqs of 32..512 tokens
    python bench/bench_model.py --device cuda --dtype bfloat16
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit, machine, markdown_table  # noqa: E402

CONFIG = dict(model_type="llama", vocab_size=8192, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
              num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=False)


def batches(args):
    g = torch.Generator().manual_seed(args.seed)
    for _ in range(args.warmup + args.steps):
        lengths = torch.randint(args.min_len, args.max_len + 1, (args.batch,), generator=g).tolist()
        yield [torch.randint(0, CONFIG["vocab_size"], (n,), generator=g) for n in lengths]


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def run_ours(args, path):
    from real_ext.data.packed import PackedBatch
    from real_ext.model import ReaLModel
    from real_ext.model.logprob import next_token_targets
    from real_ext.model.train import OptimConfig, Trainer
    model = ReaLModel.from_pretrained(path, dtype=getattr(torch, args.dtype), device=args.device)
    trainer = Trainer(model, OptimConfig(lr=1e-4, weight_decay=0.01, grad_clip=1.0))

    def loss_fn(m, hidden, mb):
        targets, valid = next_token_targets(mb.input_ids, mb.cu_seqlens)
        return -(m.token_logprobs(hidden, targets) * valid).sum() / valid.sum(), {}

    def step(seqs):
        batch = PackedBatch.from_sequences([s.tolist() for s in seqs]).to(args.device)
        return trainer.train_step(batch, loss_fn, loss_weight=lambda mb: mb.n_tokens - mb.n_seqs)["loss"]
    return step


def run_hf(args, path):
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa",
                                                              dtype=getattr(torch, args.dtype)).to(args.device)
    decay = [p for p in model.parameters() if p.dim() == 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}], lr=1e-4)

    def step(seqs):
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = s
            mask[i, :len(s)] = 1
        ids, mask = ids.to(args.device), mask.to(args.device)
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()
    return step


def side(args):
    """One side, in this process: prints a JSON line with its numbers."""
    torch.manual_seed(0)
    step = (run_ours if args.side == "ours" else run_hf)(args, args.checkpoint)
    times, tokens, losses = [], [], []
    for i, seqs in enumerate(batches(args)):
        sync(args.device)
        t0 = time.perf_counter()
        losses.append(step(seqs))
        sync(args.device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            tokens.append(sum(len(s) for s in seqs))
    peak = (torch.cuda.max_memory_allocated() if args.device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps(dict(step_s=statistics.median(times), tokens_per_s=sum(tokens) / sum(times),
                          peak_bytes=peak, first_loss=losses[0])))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--min-len", type=int, default=32)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--side", choices=["ours", "hf"], help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        return side(args)

    import transformers
    with tempfile.TemporaryDirectory() as path:
        torch.manual_seed(0)
        hf_config = transformers.LlamaConfig(**{k: v for k, v in CONFIG.items() if k != "model_type"})
        model = transformers.LlamaForCausalLM(hf_config)
        n_params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(path)
        del model
        results = {}
        for name in ("ours", "hf"):
            cmd = [sys.executable, os.path.abspath(__file__), "--side", name, "--checkpoint", path] + sys.argv[1:]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[name] = json.loads(out.strip().splitlines()[-1])
            print(name, results[name], flush=True)
    ours, hf = results["ours"], results["hf"]
    row = [f"LLaMA {n_params / 1e6:.0f}M, {args.batch} seqs of {args.min_len}..{args.max_len}", args.dtype,
           ours["tokens_per_s"], hf["tokens_per_s"], ours["tokens_per_s"] / hf["tokens_per_s"],
           ours["peak_bytes"] / 2 ** 20, hf["peak_bytes"] / 2 ** 20]
    table = markdown_table(["case", "dtype", "ours tokens/s", "HF tokens/s", "x vs HF", "ours peak MiB",
                            "HF peak MiB"], [row])
    notes = (f"Machine: {machine(args.device)}. Forward + backward + AdamW (clip 1.0) per step; median of "
             f"{args.steps} steps after {args.warmup} warm-up; tokens are real (unpadded) tokens. Peak memory: "
             f"{'max allocated' if args.device == 'cuda' else 'max RSS of each side`s process'}. First losses: "
             f"ours {ours['first_loss']:.4f}, HF {hf['first_loss']:.4f} (same weights and data).")
    emit(table + "\n\n" + notes + "\n", args.out)


if __name__ == "__main__":
    main()
