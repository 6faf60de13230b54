"""varlen_attention against the plain reference (real_ext.ref), forward and
backward, on awkward packed shapes; tolerances derived as in STYLE.md."""
import pytest
import torch

from real_ext import ops, ref
from python_tests.conftest import DEVICES, cu_seqlens

# (name, query lengths, key lengths (None: same), heads_q, heads_kv, head_dim, causal)
# On the CPU, calls whose sequences are all at most 256 tokens and whose
# head_dim is a multiple of 16 run the short-sequence kernel, others the tiled
# one; the cases cover both and the boundary.
CASES = [
    ("one_token", [1], None, 1, 1, 32, True),
    ("odd_lengths", [7, 1, 33, 2, 65], None, 4, 4, 64, True),
    ("one_long_seq_gqa4", [513], None, 8, 2, 80, True),
    ("64_seqs_mqa8", [(i * 37) % 41 + 1 for i in range(64)], None, 8, 1, 32, True),
    ("noncausal_gqa2", [100, 3, 257], None, 4, 2, 128, False),
    ("q_shorter_than_k", [5, 64, 130], [9, 64, 300], 4, 4, 64, True),
    ("q_longer_than_k", [5, 10, 3], [3, 10, 0], 2, 1, 64, True),
    ("empty_sequences", [0, 12, 0, 1], None, 2, 2, 32, True),
    ("hdim256_gqa8", [300, 17], None, 16, 2, 256, True),
    ("noncausal_q_shorter", [4, 1], [50, 7], 4, 2, 64, False),
    ("short_limit_gqa2_hd96", [256, 255, 17, 1], None, 4, 2, 96, True),
    ("short_noncausal_hd128", [3, 40, 256], [256, 5, 64], 2, 1, 128, False),
    ("short_q_shorter_hd16", [5, 1, 30, 0], [9, 64, 200, 3], 4, 4, 16, True),
    ("past_short_limit", [257, 3], None, 2, 2, 32, True),
]
DTYPES = {"cpu": [torch.float32, torch.bfloat16], "cuda": [torch.float32, torch.bfloat16, torch.float16]}


def _inputs(case, dtype, device, seed):
    _, lq, lk, hq, hkv, d, causal = case
    lk = lq if lk is None else lk
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(sum(lq), hq, d, generator=g).to(device=device, dtype=dtype)
    k = torch.randn(sum(lk), hkv, d, generator=g).to(device=device, dtype=dtype)
    v = torch.randn(sum(lk), hkv, d, generator=g).to(device=device, dtype=dtype)
    dout = torch.randn(sum(lq), hq, d, generator=g).to(device=device, dtype=dtype)
    args = (cu_seqlens(lq, device), cu_seqlens(lk, device), max(lq), max(lk))
    return q, k, v, dout, args, causal


def _run(fn, q, k, v, dout, args, causal, dtype=None):
    """Output and (dq, dk, dv) of fn, with inputs cast to dtype."""
    leaves = [x.detach().to(dtype or x.dtype).requires_grad_() for x in (q, k, v)]
    out = fn(*leaves, *args, causal=causal)
    grads = torch.autograd.grad(out, leaves, dout.to(out.dtype))
    return out, grads


def _max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_reference(case, device):
    for i, dtype in enumerate(DTYPES[device]):
        q, k, v, dout, args, causal = _inputs(case, dtype, device, seed=1000 + i)
        out, grads = _run(ops.varlen_attention, q, k, v, dout, args, causal)
        assert out.dtype == dtype and out.shape == q.shape
        # High-precision reference, and the same reference at the kernel's precision.
        hi = torch.float64 if dtype == torch.float32 else torch.float32
        out_ref, grads_ref = _run(ref.varlen_attention, q, k, v, dout, args, causal, dtype=hi)
        out_pt, grads_pt = _run(ref.varlen_attention, q, k, v, dout, args, causal)
        floor = 1e-6 * max(1.0, out_ref.abs().max().item())
        assert _max_err(out, out_ref) <= 2 * _max_err(out_pt, out_ref) + floor, (dtype, "out")
        for name, g, g_ref, g_pt in zip("qkv", grads, grads_ref, grads_pt):
            # NOTE: 3x for gradients: dq/dk/dv sum over key/query tiles in another
            # order than the reference's einsum (flash-attn's tests allow the same).
            floor = 1e-6 * max(1.0, g_ref.abs().max().item())
            assert _max_err(g, g_ref) <= 3 * _max_err(g_pt, g_ref) + floor, (dtype, "d" + name)


@pytest.mark.parametrize("device", DEVICES)
def test_rows_without_visible_keys_are_zero(device):
    # Causal, bottom-right aligned: query i of a 6-query / 2-key sequence sees
    # key j iff j <= i - 4, so the first four queries see nothing.
    q = torch.randn(6, 2, 32, device=device)
    k = torch.randn(2, 2, 32, device=device)
    v = torch.randn(2, 2, 32, device=device)
    out = ops.varlen_attention(q, k, v, cu_seqlens([6], device), cu_seqlens([2], device), 6, 2)
    assert torch.equal(out[:4], torch.zeros_like(out[:4]))
    assert torch.isfinite(out).all() and out[4:].abs().sum() > 0


@pytest.mark.parametrize("lengths", [[7, 30, 1], [300, 5]], ids=["short_kernel", "tiled_kernel"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_views_of_a_fused_projection_equal_contiguous_inputs(lengths, dtype):
    # The model splits one q/k/v projection into views whose token rows are
    # (heads_q + 2 heads_kv) * head_dim apart; the kernels read them in place.
    hq, hkv, d, t = 4, 2, 32, sum(lengths)
    g = torch.Generator().manual_seed(5)
    fused = torch.randn(t, (hq + 2 * hkv) * d, generator=g).to(dtype)
    q, k, v = (x.view(t, -1, d) for x in fused.split([hq * d, hkv * d, hkv * d], dim=1))
    assert not q.is_contiguous()
    dout = torch.randn(t, hq, d, generator=g).to(dtype)
    args = (cu_seqlens(lengths), cu_seqlens(lengths), max(lengths), max(lengths))
    out, grads = _run(ops.varlen_attention, q, k, v, dout, args, True)
    out_c, grads_c = _run(ops.varlen_attention, q.contiguous(), k.contiguous(), v.contiguous(), dout, args, True)
    assert torch.equal(out, out_c)
    for a, b in zip(grads, grads_c):
        assert torch.equal(a, b)


def test_softmax_scale_and_default():
    q, k, v, _, args, causal = _inputs(CASES[1], torch.float32, "cpu", seed=7)
    d = q.shape[-1]
    default = ops.varlen_attention(q, k, v, *args)
    explicit = ops.varlen_attention(q, k, v, *args, softmax_scale=d ** -0.5)
    assert torch.equal(default, explicit)
    scaled = ops.varlen_attention(q, k, v, *args, softmax_scale=0.3)
    expected = ref.varlen_attention(q.double(), k.double(), v.double(), *args, softmax_scale=0.3)
    assert _max_err(scaled, expected) < 1e-5


@pytest.mark.parametrize("causal", [True, False])
def test_gradcheck_float64(causal):
    lq, lk = [3, 1, 4], ([3, 1, 4] if causal else [5, 2, 4])
    g = torch.Generator().manual_seed(3)
    q = torch.randn(sum(lq), 4, 8, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(sum(lk), 2, 8, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.randn(sum(lk), 2, 8, dtype=torch.float64, generator=g, requires_grad=True)
    args = (cu_seqlens(lq), cu_seqlens(lk), max(lq), max(lk))
    # NOTE: lse is kept in float32 (also for float64 inputs), so the analytic
    # gradient carries ~1e-7 relative error: atol 1e-5 leaves room for it.
    assert torch.autograd.gradcheck(lambda a, b, c: ops.varlen_attention(a, b, c, *args, causal=causal),
                                    (q, k, v), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    q, k, v, dout, (cq, ck, mq, mk), causal = _inputs(CASES[1], torch.float32, device, seed=11)
    q.requires_grad_()
    fwd_args = (q, k, v, cq, ck, mq, mk, 0.125, True)
    torch.library.opcheck(torch.ops.real_ext.varlen_attn_fwd.default, fwd_args)
    out, lse = torch.ops.real_ext.varlen_attn_fwd(*(x.detach() if torch.is_tensor(x) else x for x in fwd_args))
    bwd_args = (dout, q.detach(), k, v, out, lse, cq, ck, mq, mk, 0.125, True)
    torch.library.opcheck(torch.ops.real_ext.varlen_attn_bwd.default, bwd_args)


def test_torch_compile_fullgraph():
    q, k, v, dout, args, causal = _inputs(CASES[1], torch.float32, "cpu", seed=5)
    fn = torch.compile(lambda a, b, c: ops.varlen_attention(a, b, c, *args) * 2, fullgraph=True, backend="aot_eager")
    eager, eager_grads = _run(lambda a, b, c, *rest, causal: ops.varlen_attention(a, b, c, *rest, causal=causal) * 2,
                              q, k, v, dout, args, causal)
    compiled, compiled_grads = _run(lambda a, b, c, *rest, causal: fn(a, b, c), q, k, v, dout, args, causal)
    assert torch.equal(eager, compiled)
    for a, b in zip(eager_grads, compiled_grads):
        assert torch.equal(a, b)
