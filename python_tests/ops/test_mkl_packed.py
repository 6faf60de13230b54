"""ops.linear inside cpu_blas.packed_weights() (csrc/layers/mkl_packed.cpp):
products of MKL-packed weights against a float64 reference, repacking after an
in-place change, nested scopes, and the error of leaving no scope."""
import pytest
import torch

from python_tests.ops.linear_operands import linear_operands, using_blas
from real_ext import ops
from real_ext.ops import cpu_blas

scope = torch.ops.real_ext.packed_weights_scope


@pytest.fixture
def aten():
    """ATen's products (MKL's where torch has it): OpenBLAS, where loaded, serves first."""
    with using_blas("aten"):
        yield


def held() -> int:
    """Weights packed in the current scope (entering and leaving one more level changes nothing)."""
    scope(True)
    return scope(False)


def test_packing_is_available_where_torch_has_mkl():
    assert torch.ops.real_ext.mkl_packing_available() == torch.backends.mkl.is_available()


# 1-64 rows: packed where the CPU has AVX-512 (else the AVX2 panels serve them);
# 129 and more: packed on every CPU (past the panels' 128).
@pytest.mark.parametrize("rows", [1, 3, 8, 64, 129, 300, 1000])
@pytest.mark.parametrize("stored", ["rows", "transposed"])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_matches_float64(aten, rows, stored, bias):
    x, w, b, ref = linear_operands(rows, stored, bias)
    with cpu_blas.packed_weights():
        first, again = ops.linear(x, w, b), ops.linear(x, w, b)
        if rows > 128:
            assert held() == (1 if torch.ops.real_ext.mkl_packing_available() else 0)
    assert held() == 0
    for y in (first, again):
        assert y.dtype == torch.float32 and y.shape == ref.shape
        torch.testing.assert_close(y.double(), ref, rtol=0, atol=2e-5 * x.shape[1] ** 0.5)
    torch.testing.assert_close(first, torch.nn.functional.linear(x, w, b), rtol=0, atol=1e-4)


def test_a_weight_changed_in_place_is_packed_again(aten):
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(200, 64, generator=g), torch.randn(48, 64, generator=g)
    with cpu_blas.packed_weights():
        before = ops.linear(x, w)
        w.mul_(-2)  # bumps the version counter
        after = ops.linear(x, w)
    torch.testing.assert_close(after.double(), x.double() @ w.double().t(), rtol=0, atol=1e-4)
    torch.testing.assert_close(after, -2 * before, rtol=0, atol=1e-4)


def test_scopes_nest_and_the_outermost_drops_the_copies(aten):
    each = 1 if torch.ops.real_ext.mkl_packing_available() else 0  # without MKL nothing is packed
    g = torch.Generator().manual_seed(1)
    x, w1, w2 = torch.randn(200, 32, generator=g), torch.randn(16, 32, generator=g), torch.randn(24, 32, generator=g)
    with cpu_blas.packed_weights():
        ops.linear(x, w1)
        assert held() == each
        with cpu_blas.packed_weights():
            ops.linear(x, w2)
            ops.linear(x, w1)  # packed by the outer scope already
            assert held() == 2 * each
        assert held() == 2 * each  # the inner scope's end drops nothing
    assert held() == 0


def test_openblas_serves_first_and_nothing_is_packed():
    if cpu_blas._openblas_path() is None:
        pytest.skip("the scipy-openblas32 wheel is a dependency on x86-64 Linux only")
    x, w = torch.randn(200, 32), torch.randn(16, 32)
    with using_blas("openblas"), cpu_blas.packed_weights():
        ops.linear(x, w)
        assert held() == 0


def test_leaving_no_scope_is_an_error():
    with pytest.raises(RuntimeError, match="without a scope to leave"):
        scope(False)
