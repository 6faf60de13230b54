"""Row-major copies of the row-parallel weights, for the length of one CPU
generate() call.

The flat buffer stores o_proj and down_proj transposed, as (in / tp, out) rows
(ParamSpec.transposed, real_ext/model/params.py), so that every tensor-parallel
split of them is one contiguous run for the reallocation engine. The CPU decode
products read such a weight a block of 16 columns at a time, from rows that lie
a page apart, which the hardware prefetchers do not follow: with the weights
cold, as in a decode step that reads every layer's in turn, those products ran
at 42-86% of the row-major rate on a Zen 3 (bench/RESULTS.md, stops 27-28), and on
AVX-512 CPUs a transposed weight leaves the compiled kernels for ATen. A
generate() call reads each weight once per decode step; one copy per call
costs a single read and write of those weights (a third of a LLaMA layer's).

The copies exist only inside row_major_products(): the reallocation engine
writes the flat buffer from C++ without bumping version counters, so a copy
kept across calls could go stale unnoticed. Products with autograd on always
read the parameter itself (Linear.product_weight).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from real_ext.model.layers import Linear


def _transposed(weight: torch.Tensor) -> bool:
    return weight.dim() == 2 and weight.stride(0) == 1 and weight.stride(1) != 1


@contextlib.contextmanager
def row_major_products(model: nn.Module):
    """Within the block, the CPU model's transposed Linear weights are read
    from row-major copies by products without autograd; dropped on exit. A
    nested use leaves the outer one's copies alone."""
    linears = [m for m in model.modules()
               if isinstance(m, Linear) and m.weight.device.type == "cpu" and _transposed(m.weight)
               and m.row_major is None]
    try:
        for m in linears:
            m.row_major = m.weight.detach().contiguous()
        yield
    finally:
        for m in linears:
            m.row_major = None
