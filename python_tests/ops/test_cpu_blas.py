"""ops.linear's products of many float32 rows through OpenBLAS
(csrc/layers/cpu_blas.cpp, real_ext/ops/cpu_blas.py) against a float64
reference and ATen's, and the errors of a bad choice or library."""
import os
import subprocess
import sys

import pytest
import torch

from python_tests.ops.linear_operands import linear_operands, using_blas
from real_ext import ops
from real_ext.ops import cpu_blas


@pytest.fixture
def openblas():
    with using_blas("openblas"):
        yield


def test_the_wheel_is_installed_where_it_is_a_dependency():
    if not cpu_blas._linux_x86():
        pytest.skip("scipy-openblas32 is a dependency on x86-64 Linux only")
    assert cpu_blas._openblas_path() is not None
    assert cpu_blas.current() == ("aten" if cpu_blas._intel_cpu() else "openblas")


@pytest.mark.parametrize("rows", [129, 300, 1000])
@pytest.mark.parametrize("stored", ["rows", "transposed"])
@pytest.mark.parametrize("bias", [False, True])
def test_openblas_linear_matches_float64(openblas, rows, stored, bias):
    x, w, b, ref = linear_operands(rows, stored, bias)
    y = ops.linear(x, w, b)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-4)
    cpu_blas.use("aten")
    torch.testing.assert_close(y, ops.linear(x, w, b), rtol=1e-5, atol=1e-4)


def test_bad_choice_and_library_are_clear_errors():
    with pytest.raises(ValueError, match="REAL_EXT_CPU_BLAS='mkl': expected one of openblas, aten"):
        cpu_blas.use("mkl")
    error = torch.ops.real_ext.use_cpu_blas("/no/such/libblas.so", "")
    assert "cannot load /no/such/libblas.so" in error
    path = cpu_blas._openblas_path()
    if path is not None:
        assert "wrong prefix" in torch.ops.real_ext.use_cpu_blas(path, "nosuchprefix_")
    env = {**os.environ, "REAL_EXT_CPU_BLAS": "fastest"}
    run = subprocess.run([sys.executable, "-c", "import real_ext"], env=env, capture_output=True, text=True)
    assert run.returncode != 0 and "REAL_EXT_CPU_BLAS='fastest'" in run.stderr


def test_an_unloadable_wheel_falls_back_to_aten_with_a_warning(monkeypatch):
    """Unset REAL_EXT_CPU_BLAS: a wheel that is installed but cannot be loaded
    leaves the products on ATen and says so; it does not stop the import."""
    if not cpu_blas._linux_x86():
        pytest.skip("the automatic choice considers OpenBLAS on x86-64 Linux only")
    before = cpu_blas.current()
    monkeypatch.delenv("REAL_EXT_CPU_BLAS", raising=False)
    monkeypatch.setattr(cpu_blas, "_intel_cpu", lambda: False)
    monkeypatch.setattr(cpu_blas, "_openblas_path", lambda: "/no/such/libscipy_openblas.so")
    try:
        with pytest.warns(RuntimeWarning, match="cannot load /no/such/libscipy_openblas.so.*REAL_EXT_CPU_BLAS=aten"):
            cpu_blas.choose_at_import()
        assert cpu_blas.current() == "aten"
    finally:
        monkeypatch.undo()  # the real wheel's path again, to restore the choice
        cpu_blas.use(before)
