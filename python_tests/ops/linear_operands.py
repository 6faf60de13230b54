"""ops.linear's operands as the model passes them, with a float64 reference
(shared by the tests of the products' library paths)."""
import contextlib

import torch

from real_ext.ops import cpu_blas

K, N = 96, 200


def linear_operands(rows: int, stored: str, bias: bool):
    """x (rows, K), row-strided as a fused product's slice; w (N, K), row-major
    (stored="rows") or a transposed view as a row-parallel weight of the flat
    buffer ("transposed"); b (N,) or None; and x w^T + b in float64."""
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, K + 8, generator=g)[:, 3:3 + K]
    w = torch.randn(N, K, generator=g)
    if stored == "transposed":
        w = w.t().contiguous().t()
    b = torch.randn(N, generator=g) if bias else None
    ref = x.double() @ w.double().t() + (0 if b is None else b.double())
    return x, w, b, ref


@contextlib.contextmanager
def using_blas(choice: str):
    """The products on ``choice`` (cpu_blas.use) inside the block, the previous choice after."""
    before = cpu_blas.current()
    cpu_blas.use(choice)
    try:
        yield
    finally:
        cpu_blas.use(before)
