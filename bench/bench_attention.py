"""Packed attention: real_ext.ops.varlen_attention against what users run today,
in the same process, on RLHF-like packed batches (causal).

Anchors: (a) SDPA on the padded batch with a causal+padding mask (what HF
models do), (b) flex_attention with a document-causal block mask, compiled
(forward only on CPU: torch has no CPU flex backward), (c) a per-sequence loop
of SDPA(is_causal=True), and on CUDA (d) torch.nn.attention.varlen.varlen_attn
(PyTorch's FlashAttention-2 path). Ratios are anchor time / our time (> 1: we
are faster). GFLOP/s counts useful causal work only; "% mm" compares it with a
large torch.mm measured in the same run.

    python bench/bench_attention.py                   # CPU, float32 + bfloat16
    python bench/bench_attention.py --device cuda     # GPU, bfloat16
"""
import argparse
import inspect
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit, machine, markdown_table, matmul_ceiling, median_times  # noqa: E402

import real_ext  # noqa: E402


def packed_batch(lengths, heads, head_dim, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    t = sum(lengths)
    q, k, v, dout = (torch.randn(t, heads, head_dim, generator=g).to(device, dtype) for _ in range(4))
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)
    return q, k, v, dout, cu


def to_padded(x, lengths):
    """(total, H, D) packed -> (B, H, Lmax, D) zero-padded."""
    out = x.new_zeros(len(lengths), max(lengths), x.shape[1], x.shape[2])
    s = 0
    for i, n in enumerate(lengths):
        out[i, :n] = x[s:s + n]
        s += n
    return out.transpose(1, 2).contiguous()


def run_pass(fn, inputs, dout, backward):
    """Returns a closure running fn forward (and backward with dout)."""
    def step():
        leaves = [x.detach().requires_grad_(backward) for x in inputs]
        out = fn(*leaves)
        if backward:
            torch.autograd.backward(out, dout)
    return step


def anchors(lengths, q, k, v, dout, cu, device, backward, use_flex):
    """name -> closure for every anchor that runs on this device and pass."""
    lmax = max(lengths)
    result = {}
    qp, kp, vp, dp = (to_padded(x, lengths) for x in (q, k, v, dout))
    pad = torch.arange(lmax, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
    causal = torch.tril(torch.ones(lmax, lmax, dtype=torch.bool, device=device))
    # Padded query rows may see everything so that no row is fully masked (no NaN).
    mask = (causal[None] & pad[:, None, :]) | ~pad[:, :, None]
    result["padded SDPA"] = run_pass(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=mask[:, None]),
                                     (qp, kp, vp), dp, backward)

    if use_flex and (device == "cuda" or not backward):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        doc = torch.repeat_interleave(torch.arange(len(lengths), device=device),
                                      torch.tensor(lengths, device=device))

        def document_causal(b, h, qi, ki):
            return (doc[qi] == doc[ki]) & (qi >= ki)

        t = q.shape[0]
        block_mask = create_block_mask(document_causal, 1, None, t, t, device=device)
        flex = torch.compile(flex_attention)
        to_bhtd = lambda x: x.transpose(0, 1).unsqueeze(0)  # noqa: E731
        result["flex (compiled)"] = run_pass(lambda a, b, c: flex(to_bhtd(a), to_bhtd(b), to_bhtd(c),
                                                                  block_mask=block_mask).squeeze(0).transpose(0, 1),
                                             (q, k, v), dout, backward)

    def loop(a, b, c):
        outs, s = [], 0
        for n in lengths:
            sl = slice(s, s + n)
            outs.append(F.scaled_dot_product_attention(a[sl].transpose(0, 1), b[sl].transpose(0, 1),
                                                       c[sl].transpose(0, 1), is_causal=True).transpose(0, 1))
            s += n
        return torch.cat(outs)
    result["SDPA loop"] = run_pass(loop, (q, k, v), dout, backward)

    if device == "cuda":
        from torch.nn.attention.varlen import varlen_attn
        params = inspect.signature(varlen_attn).parameters
        causal_kw = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
        result["varlen_attn (FA2)"] = run_pass(lambda a, b, c: varlen_attn(a, b, c, cu, cu, lmax, lmax, **causal_kw),
                                               (q, k, v), dout, backward)
    return result


def fa2_difference(q, k, v, cu, lengths):
    """Largest absolute difference between our forward output and varlen_attn's."""
    from torch.nn.attention.varlen import varlen_attn
    params = inspect.signature(varlen_attn).parameters
    causal_kw = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    lmax = max(lengths)
    theirs = varlen_attn(q, k, v, cu, cu, lmax, lmax, **causal_kw)
    ours = real_ext.ops.varlen_attention(q, k, v, cu, cu, lmax, lmax)
    return (ours.float() - theirs.float()).abs().max().item()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtypes", default=None, help="comma list; default float32,bfloat16 (CPU) or bfloat16 (CUDA)")
    p.add_argument("--head-dims", default="64,128")
    p.add_argument("--batch", type=int, default=16, help="sequences per packed batch")
    p.add_argument("--min-len", type=int, default=32)
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-flex", action="store_true", help="skip flex_attention (its first compile takes ~30 s)")
    p.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = p.parse_args()

    device = args.device
    dtypes = args.dtypes or ("bfloat16" if device == "cuda" else "float32,bfloat16")
    dtypes = [getattr(torch, d) for d in dtypes.split(",")]
    g = torch.Generator().manual_seed(args.seed)
    lengths = torch.randint(args.min_len, args.max_len + 1, (args.batch,), generator=g).tolist()
    warmup, repeats = (3, max(args.repeats, 20)) if device == "cuda" else (1, args.repeats)

    rows, names, agreement = [], None, []
    ceilings = {}
    for dtype in dtypes:
        ceilings[dtype] = matmul_ceiling(device, dtype)
        for head_dim in [int(d) for d in args.head_dims.split(",")]:
            q, k, v, dout, cu = packed_batch(lengths, args.heads, head_dim, dtype, device, args.seed)
            fwd_flops = 4 * head_dim * args.heads * sum(n * (n + 1) / 2 for n in lengths)
            for backward in (False, True):
                ours = run_pass(lambda a, b, c: real_ext.ops.varlen_attention(a, b, c, cu, cu, max(lengths),
                                                                               max(lengths)),
                                (q, k, v), dout, backward)
                flops = fwd_flops * (3.5 if backward else 1.0)  # bwd: 5 matmuls to the forward's 2
                others = anchors(lengths, q, k, v, dout, cu, device, backward, not args.no_flex)
                t_ours, *t_others = median_times([ours, *others.values()], device, warmup, repeats)
                timed = dict(zip(others, t_others))
                all_names = ["padded SDPA", "flex (compiled)", "SDPA loop"] + (
                    ["varlen_attn (FA2)"] if device == "cuda" else [])
                names = all_names
                row = [str(dtype).replace("torch.", ""), head_dim, "fwd+bwd" if backward else "fwd",
                       t_ours * 1e3, flops / t_ours / 1e9, 100 * flops / t_ours / ceilings[dtype]]
                row += [timed[n] * 1e3 if n in timed else "n/a" for n in all_names]
                row += [timed[n] / t_ours if n in timed else "n/a" for n in all_names]
                row.append(min(timed.values()) / t_ours)
                rows.append(row)
                if device == "cuda" and not backward:
                    agreement.append(f"{str(dtype).replace('torch.', '')} hdim {head_dim}: "
                                     f"{fa2_difference(q, k, v, cu, lengths):.2e}")
                print(" ".join(str(x) for x in row), flush=True)

    header = (["dtype", "hdim", "pass", "ours ms", "GFLOP/s", "% mm"] + [f"{n} ms" for n in names]
              + [f"x vs {n}" for n in names] + ["x vs best"])
    table = markdown_table(header, rows)
    notes = [f"Machine: {machine(device)}.",
             f"Batch: {args.batch} sequences, lengths uniform in {args.min_len}..{args.max_len} "
             f"(total {sum(lengths)} tokens), {args.heads} heads, causal; median of {repeats} runs, ours and the anchors taking turns.",
             "mm ceiling: " + ", ".join(f"{str(d).replace('torch.', '')} {c / 1e9:.0f} GFLOP/s"
                                        for d, c in ceilings.items()) + "."]
    if agreement:
        notes.append("max |ours - varlen_attn| on the forward output (sanity check): " + ", ".join(agreement) + ".")
    if device == "cpu" and not args.no_flex:
        notes.append("flex fwd+bwd: n/a, torch has no flex_attention backward on CPU.")
    text = table + "\n\n" + "\n".join(notes) + "\n"
    emit(text, args.out)


if __name__ == "__main__":
    main()
