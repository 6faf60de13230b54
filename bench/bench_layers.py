"""The decoder layer's compiled ops against what they replace: RMSNorm, rope
and SwiGLU (forward, and forward + backward) against the HF-style torch
compositions in real_ext.ref, and the no-autograd linear of decode steps
against F.linear, at the shapes of a training step (T = 1024 tokens) and of a
decode step (a few rows to a batch of sequences): one weight at a time (it
stays in cache between calls), and a whole decode step's products (every
layer's weights in turn, as generation reads them: they stream from memory).
Ratios are anchor time / our time.

    python bench/bench_layers.py                          # CPU, bfloat16 and float32
    python bench/bench_layers.py --device cuda --dtypes bfloat16
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit, machine, markdown_table, median_times  # noqa: E402

from real_ext import ops, ref  # noqa: E402


def fwd_bwd(fn, inputs):
    """A closure running fn forward and backward (inputs require grad)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    grad = None

    def run():
        nonlocal grad
        out = fn(*leaves)
        grad = torch.ones_like(out) if grad is None else grad
        out.backward(grad)
    return run


def layer_cases(tokens, hidden, heads, head_dim, inter, dtype, device):
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)
    x, w = rand(tokens, hidden), rand(hidden)
    q = rand(tokens, heads, head_dim)
    angles = torch.randn(tokens, head_dim, generator=g)
    cos, sin = angles.cos().to(device, dtype), angles.sin().to(device, dtype)
    gate, up = rand(tokens, inter), rand(tokens, inter)
    return [
        ("rms_norm", lambda a, b: ops.rms_norm(a, b, 1e-6), lambda a, b: ref.rms_norm(a, b, 1e-6), [x, w]),
        ("rope", lambda a: ops.rope(a, cos, sin), lambda a: ref.rope(a, cos, sin), [q]),
        ("silu_mul", ops.silu_mul, ref.silu_mul, [gate, up]),
    ]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--tokens", default="1024,4", help="token counts of the element-wise cases")
    p.add_argument("--linear-rows", default="1,4,16,24,32,64,128")
    p.add_argument("--step-layers", type=int, default=8, help="layers of the whole-decode-step linear case")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device, rows = args.device, []
    # A ~32M LLaMA's layer (hidden 512, 8 heads of 64, intermediate 1408) on one tp rank.
    hidden, heads, head_dim, inter = 512, 8, 64, 1408
    for dtype in [getattr(torch, d) for d in args.dtypes.split(",")]:
        name = str(dtype).replace("torch.", "")
        for tokens in (int(t) for t in args.tokens.split(",")):
            for op, ours, anchor, inputs in layer_cases(tokens, hidden, heads, head_dim, inter, dtype, device):
                with torch.no_grad():
                    t_ours, t_ref = median_times([lambda: ours(*inputs), lambda: anchor(*inputs)], device, 5,
                                                 args.repeats)
                b_ours, b_ref = median_times([fwd_bwd(ours, inputs), fwd_bwd(anchor, inputs)], device, 3,
                                             args.repeats)
                rows.append([op, name, tokens, t_ours * 1e6, t_ref * 1e6, t_ref / t_ours, b_ours * 1e6,
                             b_ref * 1e6, b_ref / b_ours])
                print(rows[-1], flush=True)
        g = torch.Generator().manual_seed(1)
        for n, k in [(3 * hidden, hidden), (2 * inter, hidden), (hidden, inter)]:
            weight = torch.randn(n, k, generator=g).to(device, dtype)
            for m in (int(r) for r in args.linear_rows.split(",")):
                x = torch.randn(m, k, generator=g).to(device, dtype)
                with torch.no_grad():
                    t_ours, t_ref = median_times([lambda: ops.linear(x, weight), lambda: F.linear(x, weight)],
                                                 device, 5, args.repeats)
                rows.append([f"linear {n}x{k}", name, m, t_ours * 1e6, t_ref * 1e6, t_ref / t_ours, "", "", ""])
                print(rows[-1], flush=True)
        # A decode step's products: q/k/v, o, gate/up and down of every layer, each weight once.
        shapes = [(3 * hidden, hidden), (hidden, hidden), (2 * inter, hidden), (hidden, inter)] * args.step_layers
        weights = [torch.randn(n, k, generator=g).to(device, dtype) for n, k in shapes]
        for m in (int(r) for r in args.linear_rows.split(",")):
            xs = {k: torch.randn(m, k, generator=g).to(device, dtype) for k in (hidden, inter)}
            with torch.no_grad():
                t_ours, t_ref = median_times([lambda: [ops.linear(xs[w.shape[1]], w) for w in weights],
                                              lambda: [F.linear(xs[w.shape[1]], w) for w in weights]],
                                             device, 2, max(5, args.repeats // 5))
            rows.append([f"decode step: {len(weights)} products", name, m, t_ours * 1e6, t_ref * 1e6, t_ref / t_ours,
                         "", "", ""])
            print(rows[-1], flush=True)
    table = markdown_table(["op", "dtype", "tokens (rows)", "ours us", "torch us", "x vs torch",
                            "ours fwd+bwd us", "torch fwd+bwd us", "x vs torch fwd+bwd"], rows)
    text = (table + f"\n\nMachine: {machine(device)}. Element-wise ops: a layer of hidden {hidden}, {heads} heads "
            f"of {head_dim}, intermediate {inter}; torch: real_ext.ref (HF's compositions). linear: "
            f"real_ext.ops.linear (no autograd) against F.linear, weight (out x in); 'decode step': the 4 products of "
            f"each of {args.step_layers} such layers in turn ({len(weights)} distinct weights); median of "
            f"{args.repeats} ({max(5, args.repeats // 5)} for decode steps), ours and torch taking turns.\n")
    emit(text, args.out)


if __name__ == "__main__":
    main()
