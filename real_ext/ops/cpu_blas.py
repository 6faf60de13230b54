"""Which BLAS the CPU float32 products of many rows use (``ops.linear`` past
its own kernels' sizes: a prefill, an inference forward; csrc/layers/cpu_blas.cpp).

torch's CPU wheels multiply with MKL, tuned for Intel's CPUs; on others
OpenBLAS from the ``scipy-openblas32`` wheel (a dependency on x86-64 Linux) is
faster: 120-150 GFLOP/s against 80-131 at a prefill's shapes on a 2-core Zen 3. ``REAL_EXT_CPU_BLAS`` picks: ``openblas`` or ``aten``;
unset, OpenBLAS where the wheel is installed and the CPU is not Intel's
(ATen, with a warning, if that wheel cannot be loaded).

Where ATen's products are MKL's, ``packed_weights()`` lets a block of work
that multiplies by the same weights many times (a generate() call) pack each
weight once instead of in every product (csrc/layers/mkl_packed.cpp).
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings

import torch

CHOICES = ("openblas", "aten")


def _intel_cpu() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("vendor_id") and "GenuineIntel" in line for line in f)
    except OSError:
        return False


def _linux_x86() -> bool:
    """Where the wheel is a dependency and the automatic choice considers it."""
    return sys.platform == "linux" and os.uname().machine == "x86_64"


def _load_openblas(path: str) -> str:
    """Points the products at the wheel's library; "" on success, else why not."""
    return torch.ops.real_ext.use_cpu_blas(path, "scipy_")


def _openblas_path() -> str | None:
    try:
        import scipy_openblas32
    except ImportError:
        return None
    return os.path.join(scipy_openblas32.get_lib_dir(), f"lib{scipy_openblas32.get_library()}.so")


def use(choice: str) -> None:
    """Switch the products to ``openblas`` or back to ``aten``; an unknown
    choice or a missing wheel is a ValueError that says what to do."""
    if choice not in CHOICES:
        raise ValueError(f"REAL_EXT_CPU_BLAS={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "aten":
        torch.ops.real_ext.use_cpu_blas("", "")
        return
    path = _openblas_path()
    if path is None:
        raise ValueError("REAL_EXT_CPU_BLAS=openblas needs the scipy-openblas32 wheel: "
                         "pip install scipy-openblas32 (or set REAL_EXT_CPU_BLAS=aten)")
    error = _load_openblas(path)
    if error:
        raise ValueError(f"REAL_EXT_CPU_BLAS=openblas: {error}")


def current() -> str:
    """``openblas`` or ``aten``: what the products use now."""
    return "openblas" if torch.ops.real_ext.cpu_blas() else "aten"


def choose_at_import() -> None:
    """REAL_EXT_CPU_BLAS's choice (a bad one, or an openblas that cannot be
    loaded, fails the import); unset, OpenBLAS where it pays, and ATen with a
    warning where its wheel is installed but cannot be loaded (a broken or
    foreign install must not stop real_ext from importing)."""
    choice = os.environ.get("REAL_EXT_CPU_BLAS")
    if choice is not None:
        use(choice)
        return
    path = _openblas_path() if _linux_x86() and not _intel_cpu() else None
    if path is None:
        use("aten")
        return
    error = _load_openblas(path)
    if error:
        use("aten")
        warnings.warn(f"real_ext: the scipy-openblas32 wheel is installed but unusable ({error}); the CPU float32 "
                      f"products use ATen. Reinstall it (pip install --force-reinstall scipy-openblas32), or set "
                      f"REAL_EXT_CPU_BLAS=aten to choose ATen without this warning.", RuntimeWarning, stacklevel=2)


@contextlib.contextmanager
def packed_weights():
    """Within the block, the CPU float32 products past the compiled kernels'
    sizes that would go to ATen read MKL-packed copies of their weights, each
    packed at its first product and dropped on exit (the outermost exit of
    nested blocks). The weights must not change inside the block, except
    through in-place ops that bump their version counter. Without MKL, or
    with OpenBLAS loaded, the block changes nothing."""
    torch.ops.real_ext.packed_weights_scope(True)
    try:
        yield
    finally:
        torch.ops.real_ext.packed_weights_scope(False)
