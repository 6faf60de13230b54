"""Paged decode attention (one query per sequence over its cached keys and
values) against two anchors timed in the same run, turn by turn:
  - "read": a plain read (sum) of the same cache bytes, the memory floor;
  - "torch": what PyTorch offers for a paged cache: gather each sequence's
    rows by its block table into a padded batch, then
    scaled_dot_product_attention with a length mask (GQA heads expanded).
Cases cycle through several layers' pools, as a decode step does, so the
caches come from DRAM unless noted. "GB/s" counts the K and V bytes read.

    python bench/bench_decode_attention.py                 # CPU
    python bench/bench_decode_attention.py --device cuda --dtype bfloat16
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit, machine, markdown_table, median_times  # noqa: E402

from real_ext import ops  # noqa: E402

BLOCK = 16
# (name, sequences, layers' pools cycled, heads_q, heads_kv, head_dim)
CASES = [
    ("generate bench's decode step: 64 seqs x 8 layers", 64, 8, 8, 4, 64),
    ("16 seqs, 1 pool (fits in L3 on CPU)", 16, 1, 8, 4, 64),
    ("4 seqs x 8 layers, GQA 8:1, head_dim 128", 4, 8, 16, 2, 128),
]


def paged(seqs, layers, hq, hkv, d, dtype, device, g):
    """Pools whose blocks are scattered over the sequences (random order)."""
    lens = torch.randint(80, 321, (seqs,), generator=g)
    blocks = (lens + BLOCK - 1) // BLOCK
    perm = torch.randperm(int(blocks.sum()), generator=g).to(torch.int32)
    tables = torch.zeros(seqs, int(blocks.max()), dtype=torch.int32)
    first = 0
    for b, n in enumerate(blocks.tolist()):
        tables[b, :n] = perm[first:first + n]
        first += n
    rows = int(blocks.sum()) * BLOCK
    pools = [(torch.randn(rows, hkv, d, generator=g).to(device, dtype),
              torch.randn(rows, hkv, d, generator=g).to(device, dtype)) for _ in range(layers)]
    q = torch.randn(seqs, hq, d, generator=g).to(device, dtype)
    return q, pools, tables.to(device), lens.to(torch.int32).to(device)


def torch_paged(q, k_cache, v_cache, tables, lens, width):
    """Gather into (B, heads_kv, width, d), mask past each length, SDPA."""
    pos = torch.arange(width, device=q.device)
    slots = (tables[:, pos // BLOCK].long() * BLOCK + pos % BLOCK).clamp(max=k_cache.shape[0] - 1)
    k = k_cache[slots].transpose(1, 2)
    v = v_cache[slots].transpose(1, 2)
    mask = (pos[None, :] < lens[:, None].long())[:, None, None, :]
    out = F.scaled_dot_product_attention(q[:, :, None, :], k, v, attn_mask=mask, enable_gqa=True)
    return out[:, :, 0, :]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    g = torch.Generator().manual_seed(0)
    rows = []
    for name, seqs, layers, hq, hkv, d in CASES:
        q, pools, tables, lens = paged(seqs, layers, hq, hkv, d, dtype, args.device, g)
        width = int(lens.max())
        nbytes = 2 * int(lens.sum()) * hkv * d * q.element_size()  # K and V rows read, per layer

        def ours():
            for k, v in pools:
                ops.decode_attention(q, k, v, tables, lens, BLOCK)

        def read():
            for k, v in pools:
                k.sum(), v.sum()

        def reference():
            for k, v in pools:
                torch_paged(q, k, v, tables, lens, width)

        k0, v0 = pools[0]
        err = (ops.decode_attention(q, k0, v0, tables, lens, BLOCK).float()
               - torch_paged(q, k0, v0, tables, lens, width).float()).abs().max().item()
        t_ours, t_read, t_torch = (t / layers for t in median_times([ours, read, reference], args.device, 2,
                                                                     args.repeats))
        rows.append([name, t_ours * 1e3, t_read * 1e3, t_torch * 1e3, nbytes / t_ours / 1e9, t_read / t_ours,
                     t_torch / t_ours, f"{err:.1e}"])
        print(rows[-1], flush=True)
    table = markdown_table(["case", "ours ms", "read ms", "torch ms", "ours GB/s", "x of read speed", "x vs torch",
                            "max diff vs torch"], rows)
    note = (f"Machine: {machine(args.device)}; {args.dtype}, block size {BLOCK}, sequences of 80..320 tokens; "
            f"times per layer (median of {args.repeats}, the three taking turns).")
    emit(table + "\n\n" + note + "\n", args.out)


if __name__ == "__main__":
    main()
