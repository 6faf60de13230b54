"""Every malformed call raises a Python exception naming the argument and what
was expected, before any kernel runs."""
import pytest
import torch

from real_ext import ops
from python_tests.conftest import DEVICES, HAS_CUDA, cu_seqlens


def _attn_args(device="cpu", lengths=(3, 5), hq=4, hkv=2, d=16, dtype=torch.float32):
    t = sum(lengths)
    return dict(q=torch.randn(t, hq, d, device=device, dtype=dtype),
                k=torch.randn(t, hkv, d, device=device, dtype=dtype),
                v=torch.randn(t, hkv, d, device=device, dtype=dtype),
                cu_seqlens_q=cu_seqlens(lengths, device), cu_seqlens_k=cu_seqlens(lengths, device),
                max_seqlen_q=max(lengths), max_seqlen_k=max(lengths))


def _with(**changes):
    args = _attn_args()
    args.update(changes)
    return args


ATTN_BAD = [
    ("q_2d", lambda: _with(q=torch.randn(8, 16)), ValueError, "q must be 3-D"),
    ("k_rank", lambda: _with(k=torch.randn(8, 2, 16, 1)), ValueError, "k must be 3-D"),
    ("heads_not_divisible", lambda: _with(q=torch.randn(8, 3, 16)), ValueError, "multiple of heads_kv"),
    ("kv_shape_mismatch", lambda: _with(v=torch.randn(8, 1, 16)), ValueError, "k and v must have the same shape"),
    ("head_dim_mismatch", lambda: _with(q=torch.randn(8, 4, 32)), ValueError, "head_dim of k"),
    ("head_dim_too_large", lambda: _attn_args(d=264), ValueError, "head_dim must be in 1..256"),
    ("cu_seqlens_int64", lambda: _with(cu_seqlens_q=torch.tensor([0, 3, 8])), TypeError, "cu_seqlens_q must be int32"),
    ("cu_seqlens_2d", lambda: _with(cu_seqlens_k=torch.zeros(1, 3, dtype=torch.int32)), ValueError, "cu_seqlens_k"),
    ("cu_seqlens_not_monotonic", lambda: _with(cu_seqlens_q=torch.tensor([0, 6, 5, 8], dtype=torch.int32),
                                               cu_seqlens_k=cu_seqlens([3, 2, 3])),
     ValueError, "cu_seqlens_q must be non-decreasing"),
    ("cu_seqlens_not_from_zero", lambda: _with(cu_seqlens_k=torch.tensor([1, 3, 8], dtype=torch.int32)),
     ValueError, "cu_seqlens_k[0] must be 0"),
    ("total_mismatch", lambda: _with(cu_seqlens_q=cu_seqlens([3, 4])), ValueError, "must equal q.size(0)"),
    ("batch_mismatch", lambda: _with(cu_seqlens_k=cu_seqlens([3, 4, 1])), ValueError, "cu_seqlens_q and cu_seqlens_k"),
    ("max_seqlen_too_small", lambda: _with(max_seqlen_q=4), ValueError, "max_seqlen_q = 4 is shorter"),
    ("max_seqlen_k_too_small", lambda: _with(max_seqlen_k=1), ValueError, "max_seqlen_k = 1 is shorter"),
    ("float16_on_cpu", lambda: _attn_args(dtype=torch.float16), TypeError, "float16 on CUDA only"),
    ("int_dtype", lambda: _with(q=torch.ones(8, 4, 16, dtype=torch.int32)), TypeError, "q has dtype Int"),
    ("mixed_dtypes", lambda: _with(k=torch.randn(8, 2, 16, dtype=torch.bfloat16)), TypeError, "share a dtype"),
]


@pytest.mark.parametrize("make,exc,message", [c[1:] for c in ATTN_BAD], ids=[c[0] for c in ATTN_BAD])
def test_varlen_attention_bad_input(make, exc, message):
    with pytest.raises(exc, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        ops.varlen_attention(**make())


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_varlen_attention_cuda_limits():
    args = _attn_args(device="cuda")
    args["cu_seqlens_q"] = args["cu_seqlens_q"].cpu()
    with pytest.raises(ValueError, match="cu_seqlens_q is on cpu but q is on cuda"):
        ops.varlen_attention(**args)
    with pytest.raises(ValueError, match="head_dim must be a multiple of 8"):
        ops.varlen_attention(**_attn_args(device="cuda", d=20))
    with pytest.raises(ValueError, match="at most 65535 sequences"):
        ops.varlen_attention(**_attn_args(device="cuda", lengths=[1] * 65536))


def _gae_args(device="cpu"):
    return dict(rewards=torch.randn(8, device=device), values=torch.randn(10, device=device),
                cu_seqlens=cu_seqlens([3, 5], device), bootstrap=torch.tensor([True, False], device=device),
                gamma=0.99, lam=0.95)


def _gae_with(**changes):
    args = _gae_args()
    args.update(changes)
    return args


GAE_BAD = [
    ("rewards_2d", lambda: _gae_with(rewards=torch.randn(8, 1)), ValueError, "rewards must be 1-D"),
    ("values_too_short", lambda: _gae_with(values=torch.randn(8)), ValueError, "values must hold T \\+ B = 10"),
    ("bootstrap_length", lambda: _gae_with(bootstrap=torch.tensor([True])), ValueError, "one entry per sequence"),
    ("bootstrap_dtype", lambda: _gae_with(bootstrap=torch.tensor([1, 0])), TypeError, "bootstrap must be bool"),
    ("values_dtype", lambda: _gae_with(values=torch.randn(10, dtype=torch.float64)), TypeError, "values must have"),
    ("half_rewards", lambda: _gae_with(rewards=torch.randn(8).half()), TypeError, "rewards must be float32 or float64"),
    ("gamma_range", lambda: _gae_with(gamma=1.5), ValueError, "gamma must be in \\[0, 1\\]"),
    ("lam_range", lambda: _gae_with(lam=-0.1), ValueError, "lam must be in \\[0, 1\\]"),
    ("cu_seqlens_int64", lambda: _gae_with(cu_seqlens=torch.tensor([0, 3, 8])), TypeError, "cu_seqlens must be int32"),
    ("cu_seqlens_total", lambda: _gae_with(cu_seqlens=cu_seqlens([3, 4])), ValueError, "must equal rewards.size\\(0\\)"),
]


@pytest.mark.parametrize("make,exc,message", [c[1:] for c in GAE_BAD], ids=[c[0] for c in GAE_BAD])
def test_gae_bad_input(make, exc, message):
    with pytest.raises(exc, match=message):
        ops.gae(**make())
