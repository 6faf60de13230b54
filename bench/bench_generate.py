"""Generation throughput: real_ext's engine against Hugging Face generate (KV
cache on, left-padded batch), greedy, same weights and prompts, in one run.
Also two floors of the same work, from the model's shapes and the copy bandwidth
and product rate measured here: a decode step multiplies every running
sequence by every layer weight and the LM head and reads those weights plus
the running sequences' KV cache; prefill multiplies every prompt token by the
layer weights and each prompt's last token by the LM head; attention FLOPs
count too. "roofline floor" takes per step the slower of bytes over bandwidth
and FLOPs over the product rate (memory and compute perfectly overlapped);
"serial floor" their sum: a reference, not a bound, for a machine whose cores
stall while they stream memory (a 2-core CPU while attention reads the cache):
real code overlaps some of the two. "x vs HF at floor" is how fast the
roofline floor itself is against HF: no implementation can beat that ratio.

Ours and HF take turns for --repeats rounds (default 3): the times are the
medians, "x vs HF" the median of the rounds' ratios (each round's two runs
are close in time, so a machine whose speed drifts by 20% over minutes, as
the 2-core bench machine's does, moves both), and every round's ratio is
printed.

On CUDA, ours runs twice: decode steps replayed from CUDA graphs (the
default) and launched eagerly ("ours eager"). "ours GB/s": the bytes the decode
steps must read (all weights, plus the KV cache of every running sequence)
over our whole time (prefill included), against the copy bandwidth measured
here.

    python bench/bench_generate.py                 # CPU: 16 and 64 prompts, 128 new tokens
    python bench/bench_generate.py --device cuda --dtype bfloat16 --model 0.5b
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import copy_bandwidth, emit, machine, markdown_table, product_ceiling, sync  # noqa: E402

from bench_model import CONFIG as SMALL  # noqa: E402  (the training-step bench's ~33M-parameter LLaMA)

from real_ext.generation import GenerationConfig, generate  # noqa: E402
from real_ext.model import ReaLModel  # noqa: E402


MODELS = {
    "32m": SMALL,
    # ~0.44B parameters: the size class of Qwen2-0.5B, with LLaMA's layout.
    "0.5b": dict(model_type="llama", vocab_size=32000, hidden_size=1024, intermediate_size=4096,
                 num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=4096,
                 tie_word_embeddings=False),
}


class Work:
    """The bytes and FLOPs of one generate() call of a LLaMA-layout config:
    prefill, then new_tokens - 1 decode steps with every sequence running."""

    def __init__(self, config: dict, elem: int, prompts: list[list[int]], new_tokens: int):
        h, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
        heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
        d = h // heads
        layer_matmul = h * heads * d * 2 + h * kv_heads * d * 2 + 3 * h * inter  # q, o; k, v; gate, up, down
        self.matmul = layers * layer_matmul
        self.head = config["vocab_size"] * h
        self.weight_bytes = elem * (self.matmul + self.head + (2 * layers + 1) * h)  # + the norms
        self.kv_token_bytes = 2 * layers * kv_heads * d * elem
        self.attn_flops_per_key = 4 * layers * heads * d  # q.k and p.v of one query over one key
        self.lengths, self.new_tokens = [len(p) for p in prompts], new_tokens

    def steps(self):
        """(bytes, FLOPs) of the prefill, then of every decode step."""
        n, tokens = len(self.lengths), sum(self.lengths)
        causal_keys = sum(k * (k + 1) // 2 for k in self.lengths)
        yield (self.weight_bytes + tokens * self.kv_token_bytes,
               2 * self.matmul * tokens + 2 * self.head * n + self.attn_flops_per_key * causal_keys)
        for s in range(1, self.new_tokens):
            keys = tokens + n * s  # the new token of each sequence sees its prompt and s generated tokens
            yield (self.weight_bytes + keys * self.kv_token_bytes,
                   2 * (self.matmul + self.head) * n + self.attn_flops_per_key * keys)

    @property
    def decode_bytes(self) -> float:
        return sum(b for b, _ in list(self.steps())[1:])

    def floors(self, bandwidth: float, flops: float) -> tuple[float, float]:
        """(roofline, serial) seconds: per step max / sum of bytes / bandwidth and FLOPs / flops."""
        parts = [(b / bandwidth, f / flops) for b, f in self.steps()]
        return sum(max(p) for p in parts), sum(sum(p) for p in parts)


def prompts_for(n, args, vocab):
    g = torch.Generator().manual_seed(n)
    lengths = torch.randint(args.min_len, args.max_len + 1, (n,), generator=g).tolist()
    return [torch.randint(3, vocab, (k,), generator=g).tolist() for k in lengths]


def timed(device, fn):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


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
    p.add_argument("--model", default="32m", choices=sorted(MODELS))
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batches", default="16,64")
    p.add_argument("--min-len", type=int, default=16)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="rounds of ours then HF, taking turns (medians reported)")
    p.add_argument("--out", default=None)
    p.add_argument("--profile", action="store_true",
                   help="then profile one generate() of the largest batch (torch.profiler table on stdout)")
    args = p.parse_args()
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    import transformers
    dtype = getattr(torch, args.dtype)
    config = MODELS[args.model]
    with tempfile.TemporaryDirectory() as path:
        torch.manual_seed(0)
        hf_config = transformers.LlamaConfig(**{k: v for k, v in config.items() if k != "model_type"})
        with torch.device(args.device):  # random init where it is fast
            transformers.LlamaForCausalLM(hf_config).save_pretrained(path)
        hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
        hf = hf.to(args.device).eval()
        hf.generation_config.eos_token_id = None
        ours = ReaLModel.from_pretrained(path, dtype=dtype, device=args.device)
    params = sum(t.numel() for t in hf.parameters())
    elem = torch.empty((), dtype=dtype).element_size()
    bandwidth, (flops, flops_by) = copy_bandwidth(args.device), product_ceiling(args.device, dtype)
    cfg = GenerationConfig(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, greedy=True)
    eager = args.device == "cuda"
    rows = []
    for n in [int(b) for b in args.batches.split(",")]:
        prompts = prompts_for(n, args, config["vocab_size"])
        generate(ours, prompts, GenerationConfig(max_new_tokens=4, greedy=True))  # warm-up (graph capture)
        with torch.no_grad():
            run_hf(hf, prompts[:2], 4, args.device)
        times = {"ours": [], "eager": [], "hf": []}
        no_graphs = GenerationConfig(**{**cfg.__dict__, "cuda_graphs": False})
        for _ in range(args.repeats):
            ours_out, t = timed(args.device, lambda: generate(ours, prompts, cfg).output_ids)
            times["ours"].append(t)
            if eager:
                eager_out, t = timed(args.device, lambda: generate(ours, prompts, no_graphs).output_ids)
                times["eager"].append(t)
                assert eager_out == ours_out or args.dtype != "float32", "CUDA-graph and eager decoding disagree"
            with torch.no_grad():
                hf_out, t = timed(args.device, lambda: run_hf(hf, prompts, args.new_tokens, args.device))
            times["hf"].append(t)
        rounds = [h / o for h, o in zip(times["hf"], times["ours"])]
        t_ours, t_hf = statistics.median(times["ours"]), statistics.median(times["hf"])
        t_eager = statistics.median(times["eager"]) if eager else None
        same = sum(a == b for a, b in zip(ours_out, hf_out))
        tokens = n * args.new_tokens
        work = Work(config, elem, prompts, args.new_tokens)
        roofline, serial = work.floors(bandwidth, flops)
        embedding = config["vocab_size"] * config["hidden_size"]
        assert work.weight_bytes // elem + embedding == params, "the floors' shapes miss some of HF's parameters"
        rows.append([n, tokens, t_ours] + ([t_eager] if eager else []) + [
            t_hf, tokens / t_ours, tokens / t_hf, statistics.median(rounds), " / ".join(f"{r:.2f}" for r in rounds)] + (
            [t_eager / t_ours] if eager else []) + [
            work.decode_bytes / t_ours / 1e9, 100 * work.decode_bytes / t_ours / bandwidth, roofline, serial,
            100 * roofline / t_ours, t_hf / roofline, t_hf / serial, f"{same}/{n}"])
        print(rows[-1], flush=True)
    table = markdown_table(["prompts", "new tokens", "ours s"] + (["ours eager s"] if eager else []) + [
        "HF s", "ours tok/s", "HF tok/s", "x vs HF", "x vs HF by round"] + (["x graphs vs eager"] if eager else []) + [
        "ours GB/s", "% of copy", "roofline floor s", "serial floor s", "roofline % of ours", "x vs HF at floor",
        "x vs HF at serial floor", "same tokens as HF"],
        rows)
    note = (f"Machine: {machine(args.device)}; median of {args.repeats} rounds, ours and HF taking turns; "
            f"LLaMA {params / 1e6:.0f}M params ({args.model}), {args.dtype}; "
            f"prompts of {args.min_len}..{args.max_len} tokens, greedy, {args.new_tokens} new tokens each. Floors: "
            f"bytes at {bandwidth / 1e9:.0f} GB/s (copy, read + write), FLOPs at {flops / 1e9:.0f} GFLOP/s "
            f"({flops_by}, the faster product here); a decode step reads "
            f"{work.weight_bytes / 2 ** 20:.0f} MiB of weights plus the running sequences' KV cache. 'ours GB/s': "
            f"the decode steps' bytes over our whole time (prefill included). "
            f"'same tokens as HF': sequences identical token for token (rounding can flip a near tie; "
            f"in bfloat16 often).")
    emit(table + "\n\n" + note + "\n", args.out)
    if args.profile:
        profile(ours, prompts, cfg, args.device)


def profile(model, prompts, cfg, device):
    """Where one generate() spends its time: graph captures (count, seconds)
    and the profiler's top ops by host time."""
    from real_ext.generation import cuda_graphs
    captures = []
    capture = cuda_graphs.DecodeGraphs._capture

    def timed_capture(self, bucket):
        t0 = time.perf_counter()
        out = capture(self, bucket)
        captures.append((bucket, time.perf_counter() - t0))
        return out
    cuda_graphs.DecodeGraphs._capture = timed_capture
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        _, seconds = timed(device, lambda: generate(model, prompts, cfg))
    cuda_graphs.DecodeGraphs._capture = capture
    print(f"profiled generate(): {seconds:.3f} s for {len(prompts)} prompts; graph captures (bucket, s): "
          f"{[(b, round(t, 4)) for b, t in captures]}")
    averages = prof.key_averages()
    print(averages.table(sort_by="self_cpu_time_total", row_limit=20))
    if device == "cuda":  # the kernels a graph replays have no host time: rank them by device time too
        print(averages.table(sort_by="self_cuda_time_total", row_limit=25))


if __name__ == "__main__":
    main()
