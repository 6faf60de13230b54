"""The decoder-layer ops (rms_norm, rope, silu_mul) against the HF-style
references in real_ext.ref, forward and backward, plus gradcheck and opcheck;
the decode steps' linear against a float64 product.

Tolerances follow STYLE.md: the op's error against the float64 reference is
at most twice PyTorch's own error (the reference run at the op's dtype), plus
a float32-sized floor for the cases where PyTorch happens to be exact."""
import os
import subprocess
import sys

import pytest
import torch

from real_ext import ops, ref
from python_tests.conftest import DEVICES, HAS_CUDA

DTYPES = [torch.float32, torch.bfloat16]


def _rand(shape, dtype, device, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(device, dtype)


def _close(out, out_ref64, out_pt, floor=1e-5):
    err = (out.double() - out_ref64).abs().max().item() if out.numel() else 0.0
    pt = (out_pt.double() - out_ref64).abs().max().item() if out.numel() else 0.0
    assert err <= 2 * pt + floor * max(1.0, out_ref64.abs().max().item() if out.numel() else 1.0), (err, pt)


def _grads(fn, inputs, dout):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    out.backward(dout)
    return out.detach(), [t.grad for t in inputs]


# (T, H): H a multiple of 16, not one, and smaller than one vector step.
NORM_SHAPES = [(37, 256), (5, 200), (3, 7), (0, 64), (129, 48)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", NORM_SHAPES, ids=str)
def test_rms_norm_forward_and_backward(shape, dtype, device):
    T, H = shape
    x, w = _rand((T, H), dtype, device, 0, 3.0), _rand((H,), dtype, device, 1)
    dout = _rand((T, H), dtype, device, 2)
    out, (dx, dw) = _grads(lambda a, b: ops.rms_norm(a, b, 1e-6), [x, w], dout)
    out64, (dx64, dw64) = _grads(lambda a, b: ref.rms_norm(a, b, 1e-6), [x.double(), w.double()], dout.double())
    out_pt, (dx_pt, dw_pt) = _grads(lambda a, b: ref.rms_norm(a, b, 1e-6), [x, w], dout)
    assert out.dtype == dtype and dx.dtype == dtype and dw.dtype == dtype
    _close(out, out64, out_pt)
    _close(dx, dx64, dx_pt)
    _close(dw, dw64, dw_pt)


@pytest.mark.parametrize("device", DEVICES)
def test_rms_norm_reads_a_row_strided_view(device):
    base = _rand((9, 80), torch.float32, device, 3)
    x, w = base[:, 8:72], _rand((64,), torch.float32, device, 4)
    assert not x.is_contiguous()
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-5), ref.rms_norm(x.contiguous(), w, 1e-5))


def _qkv_view(T, heads, D, dtype, device, seed):
    """q as the model slices it from a fused q/k/v product: rows strided."""
    fused = _rand((T, 3 * heads * D), dtype, device, seed)
    return fused[:, :heads * D].reshape(T, heads, D)


def _angles(T, D, dtype, device):
    pos = torch.arange(T, dtype=torch.float64)[:, None] * (10000.0 ** (-torch.arange(0, D, 2) / D))[None, :]
    emb = torch.cat([pos, pos], dim=-1)
    return emb.cos().to(device, dtype), emb.sin().to(device, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(17, 4, 64), (5, 3, 32), (6, 2, 10), (0, 2, 8), (33, 1, 256)], ids=str)
def test_rope_forward_and_backward(shape, dtype, device):
    T, heads, D = shape
    x = _qkv_view(T, heads, D, dtype, device, 5)
    cos, sin = _angles(T, D, dtype, device)
    dout = _rand((T, heads, D), dtype, device, 6)
    out, (dx,) = _grads(lambda a: ops.rope(a, cos, sin), [x], dout)
    out64, (dx64,) = _grads(lambda a: ref.rope(a, cos.double(), sin.double()), [x.double()], dout.double())
    out_pt, (dx_pt,) = _grads(lambda a: ref.rope(a, cos, sin), [x], dout)
    _close(out, out64, out_pt)
    _close(dx, dx64, dx_pt)


@pytest.mark.parametrize("device", DEVICES)
def test_rope_with_unequal_halves(device):
    # The op must not assume cos/sin repeat over the two halves: the backward
    # is the transposed map either way. head_dim 48: one 16-lane step and a tail.
    x, cos, sin = (_rand(s, torch.float64, device, seed) for s, seed in (((7, 3, 48), 7), ((7, 48), 8), ((7, 48), 9)))
    torch.testing.assert_close(ops.rope(x, cos, sin), ref.rope(x, cos, sin))
    assert torch.autograd.gradcheck(lambda a: ops.rope(a, cos, sin), (x.clone().requires_grad_(),))
    dout = _rand((7, 3, 48), torch.float64, device, 10)
    _, (dx,) = _grads(lambda a: ops.rope(a, cos.float(), sin.float()), [x.float()], dout.float())
    _, (dx64,) = _grads(lambda a: ref.rope(a, cos, sin), [x], dout)
    torch.testing.assert_close(dx.double(), dx64, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(41, 768), (3, 20), (0, 32)], ids=str)
def test_silu_mul_forward_and_backward(shape, dtype, device):
    T, inter = shape
    fused = _rand((T, 2 * inter), dtype, device, 10, 4.0)  # as the fused gate/up product: strided halves
    gate, up = fused[:, :inter], fused[:, inter:]
    dout = _rand((T, inter), dtype, device, 11)
    out, (dg, du) = _grads(ops.silu_mul, [gate, up], dout)
    out64, (dg64, du64) = _grads(ref.silu_mul, [gate.double(), up.double()], dout.double())
    out_pt, (dg_pt, du_pt) = _grads(ref.silu_mul, [gate, up], dout)
    _close(out, out64, out_pt)
    _close(dg, dg64, dg_pt)
    _close(du, du64, du_pt)
    assert torch.equal(ops.silu_mul(gate, up), ops.silu_mul(gate.contiguous(), up.contiguous()))


@pytest.mark.parametrize("device", DEVICES)
def test_silu_mul_saturates(device):
    # exp overflows past |g| ~ 88: silu must stay finite (0 or g) there.
    gate = torch.tensor([[-1e4, -100.0, -88.5, 88.5, 100.0, 1e4]], dtype=torch.float32, device=device)
    up = torch.ones_like(gate)
    out = ops.silu_mul(gate, up)
    torch.testing.assert_close(out, ref.silu_mul(gate, up), atol=1e-30, rtol=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_float16_on_cuda():
    x, w = _rand((33, 96), torch.float16, "cuda", 30), _rand((96,), torch.float16, "cuda", 31)
    dout = _rand((33, 96), torch.float16, "cuda", 32)
    out, (dx, dw) = _grads(lambda a, b: ops.rms_norm(a, b, 1e-5), [x, w], dout)
    out64, (dx64, dw64) = _grads(lambda a, b: ref.rms_norm(a, b, 1e-5), [x.double(), w.double()], dout.double())
    out_pt, (dx_pt, dw_pt) = _grads(lambda a, b: ref.rms_norm(a, b, 1e-5), [x, w], dout)
    _close(out, out64, out_pt)
    _close(dx, dx64, dx_pt)
    _close(dw, dw64, dw_pt)
    gate, up = x[:, :48], x[:, 48:]
    _close(ops.silu_mul(gate, up), ref.silu_mul(gate.double(), up.double()), ref.silu_mul(gate, up))
    q = _qkv_view(9, 2, 32, torch.float16, "cuda", 33)
    cos, sin = _angles(9, 32, torch.float16, "cuda")
    _close(ops.rope(q, cos, sin), ref.rope(q.double(), cos.double(), sin.double()), ref.rope(q, cos, sin))


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device):
    x, w = _rand((6, 40), torch.float64, device, 12), _rand((40,), torch.float64, device, 13)
    assert torch.autograd.gradcheck(lambda a, b: ops.rms_norm(a, b, 1e-6), (x.requires_grad_(), w.requires_grad_()))
    g, u = _rand((5, 24), torch.float64, device, 14), _rand((5, 24), torch.float64, device, 15)
    assert torch.autograd.gradcheck(ops.silu_mul, (g.requires_grad_(), u.requires_grad_()))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    x, w = _rand((6, 40), torch.float32, device, 16), _rand((40,), torch.float32, device, 17)
    torch.library.opcheck(torch.ops.real_ext.rms_norm_fwd.default, (x, w, 1e-6))
    _, rstd = torch.ops.real_ext.rms_norm_fwd(x, w, 1e-6)
    torch.library.opcheck(torch.ops.real_ext.rms_norm_bwd.default, (x.clone(), x, w, rstd))
    q = _rand((5, 2, 16), torch.float32, device, 18)
    cos, sin = _angles(5, 16, torch.float32, device)
    torch.library.opcheck(torch.ops.real_ext.rope.default, (q, cos, sin, False))
    g, u = _rand((5, 24), torch.float32, device, 19), _rand((5, 24), torch.float32, device, 20)
    torch.library.opcheck(torch.ops.real_ext.silu_mul_fwd.default, (g, u))
    torch.library.opcheck(torch.ops.real_ext.silu_mul_bwd.default, (g.clone(), g, u))
    torch.library.opcheck(torch.ops.real_ext.linear.default, (g[:3], _rand((7, 24), torch.float32, device, 26), None))


# M around the CPU kernel's limits (4 for bfloat16, 8 for float32); K with and
# without a tail past the 16-lane steps; N odd so the last weight row is unpaired.
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
# Rows around the kernels' block (8) and limits (4/8 portable; AVX512-BF16: dot
# products up to 24, k-pair panels up to 256, then oneDNN); k = 1100: panels of
# 8 rows and a masked K tail in the dot kernel, chunks of the panel build with
# 16 x 16 word blocks and a tail of pairs; k = 40: one block and 4 pairs; k = 7:
# odd K leaves the panels to oneDNN; n = 67, 33, 19: partial panels of 32 outputs.
# Without AVX-512 (linear_panels): x in panels of 16 rows, the last one 8 wide
# when 8 or fewer are left (9, 17, 24, 25, 33, 100), weight rows in blocks of 6
# (n = 67, 33: a tail of 1 and 3 rows), float32 up to 128 rows, bfloat16 in
# chunks of 128 (256, 257). A transposed weight (a row-parallel weight of the
# flat buffer, stored (in, out)) is read in place by the panels, gathered 6
# outputs at a time; by ATen elsewhere.
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 9, 17, 24, 25, 33, 64, 100, 128, 256, 257])
@pytest.mark.parametrize("k,n,bias", [(256, 67, False), (40, 33, True), (7, 5, True), (1100, 19, True)], ids=str)
@pytest.mark.parametrize("stored", ["rows", "transposed"])
def test_linear_matches_float64(rows, k, n, bias, stored, dtype, device):
    x = _rand((rows, k), dtype, device, 21)
    if stored == "rows":
        fused = _rand((n + 3, k), dtype, device, 22)
        weight = fused[2:n + 2]  # an offset view, as the flat buffer's parameters are
    else:
        fused = _rand((k, n + 3), dtype, device, 22)
        weight = fused[:, 2:n + 2].t()  # stride (1, n + 3): wider rows than n
    b = _rand((n,), dtype, device, 23) if bias else None
    out = ops.linear(x, weight, b)
    out64 = torch.nn.functional.linear(x.double(), weight.double(), None if b is None else b.double())
    out_pt = torch.nn.functional.linear(x, weight, b)
    assert out.dtype == dtype and out.shape == (rows, n)
    # float32 sums of up to 256 products (a different order than BLAS's)
    _close(out, out64, out_pt, floor=4e-6 * k ** 0.5)


def test_linear_portable_bfloat16_kernel():
    # Where the CPU has AVX512-BF16 bfloat16 rows take the vdpbf16ps kernel;
    # the portable ones serve the other CPUs: run them too.
    code = (
        "import torch, torch.nn.functional as F\n"
        "from real_ext import ops\n"
        "g = torch.Generator().manual_seed(0)\n"
        "for rows, k, n in [(1, 256, 67), (3, 40, 33), (4, 7, 5)]:\n"
        "    x = torch.randn(rows, k, generator=g).bfloat16()\n"
        "    w = torch.randn(n, k, generator=g).bfloat16()\n"
        "    ref = F.linear(x.double(), w.double())\n"
        "    err = (ops.linear(x, w).double() - ref).abs().max().item()\n"
        "    pt = (F.linear(x, w).double() - ref).abs().max().item()\n"
        "    assert err <= 2 * pt + 1e-3, (rows, k, n, err, pt)\n"
        "print('ok')\n")
    env = dict(os.environ, REAL_EXT_NO_BF16_DOT="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,k", [(0, 8), (3, 0), (64, 0)])
def test_linear_empty_operands(rows, k, dtype, device):
    # No rows, or no inputs (then y is the bias): every kernel's edge. A full
    # product first leaves partial sums in the kernels' per-thread buffers.
    ops.linear(_rand((rows, 8), dtype, device, 26), _rand((5, 8), dtype, device, 26))
    x, weight, b = _rand((rows, k), dtype, device, 27), _rand((5, k), dtype, device, 28), _rand((5,), dtype, device, 29)
    assert torch.equal(ops.linear(x, weight, b), torch.nn.functional.linear(x, weight, b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,rows", [(torch.float32, 3), (torch.bfloat16, 3), (torch.bfloat16, 64)])
def test_linear_row_strided_input(device, dtype, rows):
    base = _rand((rows, 50), dtype, device, 24)
    x, w = base[:, 6:46], _rand((9, 40), dtype, device, 25)
    assert torch.equal(ops.linear(x, w), ops.linear(x.contiguous(), w))


_X, _W = torch.randn(4, 8), torch.randn(8)
_Q, _CS = torch.randn(4, 2, 8), torch.randn(4, 8)
BAD = [
    ("norm_x_3d", lambda: ops.rms_norm(_X[None], _W, 1e-6), ValueError, "x must be 2-D"),
    ("norm_weight_size", lambda: ops.rms_norm(_X, torch.randn(7), 1e-6), ValueError, "weight has 7 elements"),
    ("norm_dtype_mismatch", lambda: ops.rms_norm(_X, _W.double(), 1e-6), TypeError, "cast them to one dtype"),
    ("norm_eps", lambda: ops.rms_norm(_X, _W, 0.0), ValueError, "eps must be > 0"),
    ("norm_int", lambda: ops.rms_norm(_X.int(), _W.int(), 1e-6), TypeError, "supported: float64"),
    ("norm_half_on_cpu", lambda: ops.rms_norm(_X.half(), _W.half(), 1e-6), TypeError, "on CUDA only"),
    ("rope_2d", lambda: ops.rope(_X, _CS, _CS), ValueError, "x must be 3-D"),
    ("rope_odd", lambda: ops.rope(torch.randn(4, 2, 7), torch.randn(4, 7), torch.randn(4, 7)), ValueError,
     "head_dim must be even"),
    ("rope_cos_shape", lambda: ops.rope(_Q, torch.randn(3, 8), torch.randn(3, 8)), ValueError,
     "cos must be (tokens, head_dim)"),
    ("rope_sin_dtype", lambda: ops.rope(_Q, _CS, _CS.double()), TypeError, "sin has dtype"),
    ("silu_shape", lambda: ops.silu_mul(_X, torch.randn(4, 9)), ValueError, "up must have the shape of gate"),
    ("silu_1d", lambda: ops.silu_mul(_W, _W), ValueError, "gate must be 2-D"),
    ("linear_in_features", lambda: ops.linear(_X, torch.randn(3, 7)), ValueError, "weight has in_features 7"),
    ("linear_bias", lambda: ops.linear(_X, torch.randn(3, 8), torch.randn(4)), ValueError, "bias has 4 elements"),
    ("linear_dtype", lambda: ops.linear(_X, torch.randn(3, 8).bfloat16()), TypeError, "weight has dtype"),
    ("linear_x_1d", lambda: ops.linear(_W, torch.randn(3, 8)), ValueError, "x must be 2-D"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input(case):
    _, call, exc, text = case
    with pytest.raises(exc, match=text.replace("(", r"\(").replace(")", r"\)")):
        call()
