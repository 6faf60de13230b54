"""The CPU kernels' two register blockings both run here.

Register-blocked kernels (short-sequence attention, decode attention, the
linear op's products, the vector steps of rms_norm and rope) pick their
blocking once per process from the CPU
(wide_vectors() in csrc/common/cpu_math.h: AVX-512's 32 registers of 16
floats, or AVX2's 16 of 8). Any machine runs only one of them by default, so
the kernel tests run again here under each, forced by REAL_EXT_VECTOR_BLOCKING
in a subprocess; both are correct on any x86-64 CPU, only the CPU's own is fast.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KERNEL_TESTS = ["python_tests/ops/test_varlen_attention.py", "python_tests/ops/test_generation_kv.py",
                "python_tests/ops/test_layers.py"]


@pytest.mark.parametrize("blocking", ["wide", "narrow"])
def test_kernels_under_blocking(blocking):
    env = dict(os.environ, REAL_EXT_VECTOR_BLOCKING=blocking)
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *KERNEL_TESTS,
           "-k", "attention or decode or linear or varlen or rms_norm or rope or silu"]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and " failed" not in out.stdout, out.stdout[-2000:]
