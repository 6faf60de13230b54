"""Pack / unpack of strided boxes (the reallocation engine's staging kernels,
into a reused staging buffer as the executor does) against a plain device copy
of the same number of bytes in the same run.
"x of copy speed" = copy time / our time (goal on GPU: >= 0.8), for one call
timed from an idle GPU (the host's work per call counts: what a lone
reallocation message pays) and for 10 calls queued back to back (the kernels'
own speed: the host runs ahead of the GPU).

    python bench/bench_pack.py --device cuda
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import copy_bandwidth, emit, machine, markdown_table, median_times  # noqa: E402

import real_ext  # noqa: E402,F401


def cases(total_elems: int):
    """(name, boxes (n, 5), packed elements) over a flat buffer of total_elems."""
    cols = 4096
    rows = total_elems // cols
    half = torch.tensor([[0, cols, rows, cols // 2, 0]])                      # tp=2 column slice of a matrix
    whole = torch.tensor([[0, total_elems, 1, total_elems // 2, 0]])          # one contiguous half
    n = 4096
    size = total_elems // (2 * n)
    many = torch.tensor([[2 * i * size, size, 1, size, i * size] for i in range(n)])  # many small boxes
    narrow = torch.tensor([[0, cols, rows, 128, 0]])                          # 128-wide slices (hd-sized)
    return [("contiguous half", whole, total_elems // 2), ("column half (tp=2)", half, rows * cols // 2),
            (f"{n} small boxes", many, n * size), ("128-column slice", narrow, rows * 128)]


QUEUED = 10


def queued(fn):
    for _ in range(QUEUED):
        fn()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--mib", type=int, default=None, help="flat buffer size (default 1024 on GPU, 64 on CPU)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    mib = args.mib or (1024 if args.device == "cuda" else 64)
    total = (mib << 20) // torch.empty((), dtype=dtype).element_size()
    flat = torch.randn(total, device=args.device).to(dtype)
    repeats = 20 if args.device == "cuda" else 5
    rows = []
    for name, boxes, packed in cases(total):
        buf = real_ext.ops.pack(flat, boxes)
        src, dst = torch.empty_like(buf), torch.empty_like(buf)
        target = flat.clone()
        calls = [lambda: dst.copy_(src), lambda: real_ext.ops.pack(flat, boxes, out=dst),
                 lambda: real_ext.ops.unpack_(target, buf, boxes)]
        t_copy, t_pack, t_unpack = median_times(calls, args.device, 3, repeats)
        t_copy_q, t_pack_q, t_unpack_q = (t / QUEUED for t in median_times(
            [lambda fn=fn: queued(fn) for fn in calls], args.device, 1, repeats))
        nbytes = packed * flat.element_size()
        rows.append([name, len(boxes), nbytes / 2 ** 20, t_copy * 1e3, t_pack * 1e3, t_unpack * 1e3,
                     t_copy / t_pack, t_copy / t_unpack, t_copy_q / t_pack_q, t_copy_q / t_unpack_q,
                     2 * nbytes / t_pack_q / 1e9])
        print(rows[-1], flush=True)
    table = markdown_table(["case", "boxes", "MiB", "copy ms", "pack ms", "unpack ms", "pack x of copy",
                            "unpack x of copy", "pack x of copy (10 queued)", "unpack x of copy (10 queued)",
                            "pack GB/s (r+w, queued)"], rows)
    note = (f"Machine: {machine(args.device)}; {args.dtype}, flat buffer {mib} MiB; device copy bandwidth "
            f"{copy_bandwidth(args.device) / 1e9:.0f} GB/s (read + write) in this run.")
    emit(table + "\n\n" + note + "\n", args.out)


if __name__ == "__main__":
    main()
