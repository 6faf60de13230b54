"""Fused sampling (ops.sample_tokens) against the sort-based float64 reference
(real_ext.ref.sampling), a chi-square test of the drawn distribution, edge
cases, opcheck and bad input."""
import math

import pytest
import torch

from real_ext import ops, ref
from real_ext.ref.sampling import keep_mask, scaled_logits
from python_tests.conftest import DEVICES, HAS_CUDA

NEG_INF = float("-inf")

# The op computes z exactly as the reference does (float32 division), so the
# kept set and the draw differ only where float32 sums decide: the exp the op
# uses is accurate to ~2 ulp on the CPU and ~(2 + |x|) ulp on CUDA (fast math),
# which over rows of spread <= 30 leaves the relative error of any partial
# mass under ~3e-6. Rows where top_p or u lies within MASS_TOL of a boundary of
# the float64 reference are "not clear": there the token need only be plausible.
MASS_TOL = 2e-5


def _make_logits(batch, vocab, scale, seed, dtype, device):
    """Random logits with ties (copied values, tied maxima) and some -inf entries."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, vocab, generator=g, dtype=torch.float64) * scale
    if vocab > 2:
        n = max(1, vocab // 4)
        src = torch.randint(0, vocab, (batch, n), generator=g)
        dst = torch.randint(0, vocab, (batch, n), generator=g)
        x.scatter_(1, dst, x.gather(1, src))
        top = x.max(-1).values
        x[::3, vocab - 1] = top[::3]  # tied maxima in every third row
        x[::3, vocab // 3] = top[::3]
    if vocab > 3:
        dead = torch.rand(batch, vocab, generator=g) < 0.05
        dead[:, vocab - 1] = False  # a finite token survives in every row
        x = x.masked_fill(dead, NEG_INF)
    return x.to(dtype).to(device)


def _top_p_margin(z, top_k, top_p):
    """Per row: the distance from top_p to the nearest cumulative mass at a tie-group end."""
    if top_p >= 1.0:
        return torch.full(z.shape[:1], math.inf, dtype=torch.float64)
    zk = z.double().masked_fill(~keep_mask(z, top_k, 1.0), NEG_INF)
    sorted_z, order = zk.sort(-1, descending=True)
    cum = torch.softmax(zk, -1).gather(-1, order).cumsum(-1)
    group_end = torch.ones_like(sorted_z, dtype=torch.bool)
    group_end[:, :-1] = sorted_z[:, :-1] != sorted_z[:, 1:]
    return (cum - top_p).abs().masked_fill(~group_end, math.inf).min(-1).values


def _midpoint_uniform(z, keep, seed):
    """u in the middle of a token's CDF interval (token drawn from q), and its distance to either end."""
    g = torch.Generator().manual_seed(seed)
    q = torch.softmax(z.double().masked_fill(~keep, NEG_INF), -1)
    t = torch.multinomial(q, 1, generator=g)
    hi = q.cumsum(-1).gather(-1, t)[:, 0]
    width = q.gather(-1, t)[:, 0]
    u = (hi - width / 2).float()
    return u, width / 2 - (u.double() - (hi - width / 2)).abs()


def _logprob_tol(z, keep, tokens, lp_ref):
    # Twice PyTorch's own float32 error, plus MASS_TOL / 2 for the op's float32
    # exp sums (the log of a sum with relative error r moves by about r).
    lp_pt = torch.log_softmax(z.float().masked_fill(~keep, NEG_INF), -1).gather(-1, tokens[:, None])[:, 0]
    return 2 * (lp_pt.double() - lp_ref.double()).abs() + MASS_TOL / 2


# (name, kwargs): greedy or (temperature, top_k, top_p)
SETTINGS = [
    ("greedy", dict(greedy=True, temperature=0.8)),
    ("full", dict(temperature=1.0)),
    ("k1", dict(top_k=1, temperature=1.3)),
    ("k5", dict(top_k=5, temperature=0.7)),
    ("kV", dict(top_k=-1, temperature=1.0)),  # -1: replaced by V
    ("p_tiny", dict(top_p=1e-6, temperature=1.0)),
    ("p0.3", dict(top_p=0.3, temperature=1.3)),
    ("p0.9", dict(top_p=0.9, temperature=0.7)),
    ("k5_p0.9", dict(top_k=5, top_p=0.9, temperature=1.0)),
    ("k50_p0.3", dict(top_k=50, top_p=0.3, temperature=1.0)),
]
SHAPES = [(1, 7), (64, 7), (3, 1000), (64, 1000), (3, 50_000), (64, 50_000)]


def _run_case(batch, vocab, dtype, device, setting, seed, suppress_rows=True):
    kw = dict(setting)
    if kw.get("top_k") == -1:
        kw["top_k"] = vocab
    # Flat rows for small V (long kept sets); peaked ones for 50k, where flat rows
    # put too many CDF boundaries within MASS_TOL of u for exact comparison.
    logits = _make_logits(batch, vocab, 1.0 if vocab <= 1000 else 3.0, seed, dtype, device)
    g = torch.Generator().manual_seed(seed + 1)
    suppress = (torch.rand(batch, generator=g) < 0.5) if suppress_rows else torch.zeros(batch, dtype=torch.bool)
    banned = torch.randint(0, vocab, (3,), generator=g)
    banned = torch.cat([banned, banned[:1]])  # a duplicate id
    if vocab > 3:
        banned = banned[banned != vocab - 1]  # keep the always-finite token
    kw.update(suppress=suppress.to(device), banned=banned.to(device))

    z = scaled_logits(logits.cpu(), kw.get("temperature", 1.0), suppress, banned)
    greedy = kw.get("greedy", False)
    top_k, top_p = kw.get("top_k", 0), kw.get("top_p", 1.0)
    keep = torch.ones_like(z, dtype=torch.bool) if greedy else keep_mask(z, top_k, top_p)
    u, u_margin = _midpoint_uniform(z, keep, seed + 2)
    tokens, logprobs = ops.sample_tokens(logits, u.to(device), **kw)
    assert tokens.dtype == torch.int64 and logprobs.dtype == torch.float32
    assert tokens.shape == (batch,) and logprobs.shape == (batch,)
    assert tokens.device == logits.device and logprobs.device == logits.device
    tokens, logprobs = tokens.cpu(), logprobs.cpu()

    ref_kw = {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in kw.items()}
    tokens_ref, _ = ref.sample_tokens(logits.cpu(), u, **ref_kw)
    if greedy:
        assert torch.equal(tokens, tokens_ref)
        clear = torch.ones(batch, dtype=torch.bool)
    else:
        clear = (_top_p_margin(z, top_k, top_p) >= MASS_TOL) & (u_margin >= MASS_TOL)
        assert torch.equal(tokens[clear], tokens_ref[clear])
        # Elsewhere the token is at least kept under a slightly larger top_p.
        loose = keep_mask(z, top_k, min(1.0, top_p + MASS_TOL)) if top_p < 1.0 else keep
        assert loose.gather(-1, tokens[:, None]).all()
        assert clear.float().mean() >= 0.5, "too few rows away from a boundary: the test checks little"

    # logprobs: log q of the op's token under the reference distribution, and
    # the same value from truncated_log_softmax (the training-side function).
    lq = torch.log_softmax(z.double().masked_fill(~keep, NEG_INF), -1)
    lp_ref = lq.gather(-1, tokens[:, None])[:, 0]
    tol = _logprob_tol(z, keep, tokens, lp_ref)
    assert ((logprobs.double() - lp_ref).abs() <= tol)[clear].all()
    banned_logits = logits.cpu().float().masked_fill(torch.isin(torch.arange(vocab), banned)[None] & suppress[:, None],
                                                     NEG_INF)
    tls = ref.truncated_log_softmax(banned_logits, kw.get("temperature", 1.0),
                                    0 if greedy else top_k, 1.0 if greedy else top_p)
    assert tls.dtype == torch.float32 and tls.shape == (batch, vocab)
    assert ((logprobs.double() - tls.gather(-1, tokens[:, None])[:, 0].double()).abs() <= tol)[clear].all()
    # Banned tokens are never drawn in suppressed rows.
    assert not (torch.isin(tokens, banned) & suppress).any()
    return tokens, logprobs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("setting", [s[1] for s in SETTINGS], ids=[s[0] for s in SETTINGS])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"B{b}_V{v}" for b, v in SHAPES])
def test_matches_reference(shape, setting, device):
    batch, vocab = shape
    _run_case(batch, vocab, torch.float32, device, setting, seed=batch * 7 + vocab)


LOW_PRECISION = [
    pytest.param(torch.bfloat16, "cpu", id="bf16-cpu"),
    pytest.param(torch.bfloat16, "cuda", id="bf16-cuda", marks=DEVICES[1].marks),
    pytest.param(torch.float16, "cuda", id="fp16-cuda", marks=DEVICES[1].marks),
]


@pytest.mark.parametrize("dtype,device", LOW_PRECISION)
@pytest.mark.parametrize("setting", [s[1] for s in SETTINGS[::2]], ids=[s[0] for s in SETTINGS[::2]])
def test_low_precision_logits(setting, dtype, device):
    # bf16 rounding makes many exact ties: the keep rule must treat them alike.
    _run_case(64, 1000, dtype, device, setting, seed=11)
    _run_case(3, 50_000, dtype, device, setting, seed=12)


@pytest.mark.parametrize("device", DEVICES)
def test_seeded_repeatability(device):
    logits = _make_logits(64, 1000, 2.0, 5, torch.float32, device)
    runs = []
    for _ in range(2):
        u = torch.rand(64, generator=torch.Generator().manual_seed(9)).to(device)
        runs.append(ops.sample_tokens(logits, u, top_k=50, top_p=0.9, temperature=0.9))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


# Upper 0.1% points of the chi-square distribution by degrees of freedom
# (NIST/SEMATECH e-Handbook of Statistical Methods, table 1.3.6.7.4).
CHI2_CRITICAL_P001 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515}
CHI2_SETTINGS = [
    dict(temperature=1.0),
    dict(temperature=1.0, top_k=3),
    dict(temperature=1.0, top_p=0.7),
    dict(temperature=0.8, top_k=4, top_p=0.8),
    dict(temperature=1.5, top_p=0.95),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("setting", CHI2_SETTINGS, ids=[str(s) for s in CHI2_SETTINGS])
def test_draws_follow_truncated_distribution(setting, device):
    # Token 1 and 2 tie; token 5 is -inf. 20_000 independent rows, one draw each.
    draws = 20_000
    base = torch.tensor([[2.0, 1.0, 1.0, 0.5, -1.0, NEG_INF]])
    q = ref.truncated_log_softmax(base, setting["temperature"], setting.get("top_k", 0),
                                  setting.get("top_p", 1.0))[0].double().exp()
    u = torch.rand(draws, generator=torch.Generator().manual_seed(1))
    tokens, _ = ops.sample_tokens(base.expand(draws, 6).contiguous().to(device), u.to(device), **setting)
    counts = torch.bincount(tokens.cpu(), minlength=6).double()
    kept = q > 0
    assert counts[~kept].sum() == 0
    expected = draws * q[kept]
    chi2 = ((counts[kept] - expected) ** 2 / expected).sum().item()
    df = int(kept.sum()) - 1
    assert chi2 < CHI2_CRITICAL_P001[df], f"chi2 = {chi2:.2f} with {df} degrees of freedom"


@pytest.mark.parametrize("device", DEVICES)
def test_edge_cases(device):
    # Max tied at ids 1 and 4; top_k = 1 and a tiny top_p keep both (ties kept),
    # and u picks between them in token order.
    logits = torch.tensor([[0.0, 3.0, 1.0, -2.0, 3.0, NEG_INF]] * 2, device=device)
    u = torch.tensor([0.25, 0.75], device=device)
    half = math.log(0.5)
    for kw in (dict(top_k=1), dict(top_p=1e-6), dict(top_k=2, top_p=0.5)):
        tokens, logprobs = ops.sample_tokens(logits, u, **kw)
        assert tokens.tolist() == [1, 4]
        assert torch.allclose(logprobs.cpu(), torch.tensor([half, half]))
    tokens, logprobs = ops.sample_tokens(logits, u, greedy=True)  # lowest index among ties
    assert tokens.tolist() == [1, 1]
    assert torch.allclose(logprobs.cpu(), torch.log_softmax(logits[0].cpu(), -1)[1].expand(2))
    # top_p = 1 keeps every finite token: u near 1 takes the last one (id 4).
    tokens, _ = ops.sample_tokens(logits, torch.tensor([0.0, 0.9999], device=device), top_p=1.0)
    assert tokens.tolist() == [0, 4]
    # A single finite token (the rest banned) is always drawn, with log-prob 0.
    tokens, logprobs = ops.sample_tokens(logits, u, suppress=torch.tensor([True, False], device=device),
                                         banned=torch.tensor([1, 4, 0, 3], device=device))
    assert tokens[0].item() == 2 and logprobs[0].item() == 0.0
    # Empty batch.
    tokens, logprobs = ops.sample_tokens(logits[:0], u[:0], top_p=0.5)
    assert tokens.shape == (0,) and logprobs.shape == (0,)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    logits = torch.randn(5, 40, device=device)
    args = (logits, torch.rand(5, device=device), torch.tensor([True, False, True, False, False], device=device),
            torch.tensor([3, 7], device=device), False, 0.9, 10, 0.8)
    torch.library.opcheck(torch.ops.real_ext.sample_tokens.default, args)


def test_truncated_log_softmax_gradient():
    # Differentiable in the logits with the kept set held fixed.
    logits = torch.randn(4, 30, dtype=torch.float64, requires_grad=True)
    tls = ref.truncated_log_softmax(logits, 0.7, 10, 0.8)
    tokens = tls.argmax(-1)
    tls.gather(-1, tokens[:, None]).sum().backward()
    kept = tls.isfinite()
    assert logits.grad[~kept].abs().max() == 0 and logits.grad[kept].abs().max() > 0


def _args(device="cpu", **changes):
    args = dict(logits=torch.randn(3, 7, device=device), uniform=torch.rand(3, device=device),
                suppress=torch.tensor([True, False, False], device=device),
                banned=torch.tensor([0, 6], device=device), temperature=1.0, top_k=0, top_p=1.0)
    args.update({k: (v.to(device) if torch.is_tensor(v) else v) for k, v in changes.items()})
    return args


def _all_banned_row():
    logits = torch.randn(3, 7)
    logits[2] = NEG_INF
    return dict(logits=logits)


BAD = [
    ("logits_1d", dict(logits=torch.randn(7)), ValueError, "logits must be 2-D"),
    ("logits_int", dict(logits=torch.ones(3, 7, dtype=torch.int64)), TypeError, "logits must be float32 or bfloat16"),
    ("logits_float64", dict(logits=torch.randn(3, 7, dtype=torch.float64)), TypeError, "logits must be float32"),
    ("empty_vocab", dict(logits=torch.randn(3, 0)), ValueError, "logits must have 1 to"),
    ("uniform_float64", dict(uniform=torch.rand(3, dtype=torch.float64)), TypeError, "uniform must be float32"),
    ("uniform_length", dict(uniform=torch.rand(4)), ValueError, "uniform must have one entry per row"),
    ("uniform_2d", dict(uniform=torch.rand(3, 1)), ValueError, "uniform must be 1-D"),
    ("uniform_one", dict(uniform=torch.tensor([0.5, 1.0, 0.1])), ValueError, r"uniform\[1\] = 1"),
    ("uniform_negative", dict(uniform=torch.tensor([0.5, 0.1, -0.1])), ValueError, r"uniform\[2\] = -0.1"),
    ("uniform_nan", dict(uniform=torch.tensor([float("nan"), 0.1, 0.2])), ValueError, r"uniform\[0\] = nan"),
    ("suppress_int", dict(suppress=torch.zeros(3, dtype=torch.int64)), TypeError, "suppress must be bool"),
    ("suppress_length", dict(suppress=torch.zeros(2, dtype=torch.bool)), ValueError, "suppress must have one entry"),
    ("banned_int32", dict(banned=torch.tensor([1], dtype=torch.int32)), TypeError, "banned must be int64"),
    ("banned_2d", dict(banned=torch.tensor([[1]])), ValueError, "banned must be 1-D"),
    ("banned_too_large", dict(banned=torch.tensor([1, 7])), ValueError, r"banned\[1\] = 7 is not a token id in \[0, 7\)"),
    ("banned_negative", dict(banned=torch.tensor([-1])), ValueError, r"banned\[0\] = -1"),
    ("temperature_zero", dict(temperature=0.0), ValueError, "temperature must be positive and finite"),
    ("temperature_negative", dict(temperature=-1.0), ValueError, "temperature must be positive"),
    ("temperature_inf", dict(temperature=math.inf), ValueError, "temperature must be positive and finite"),
    ("temperature_nan", dict(temperature=math.nan), ValueError, "temperature must be positive and finite"),
    ("temperature_float32_zero", dict(temperature=1e-50), ValueError, "temperature must be positive and finite"),
    ("top_k_negative", dict(top_k=-1), ValueError, "top_k must be >= 0"),
    ("top_p_zero", dict(top_p=0.0), ValueError, r"top_p must be in \(0, 1\]"),
    ("top_p_above_one", dict(top_p=1.5), ValueError, r"top_p must be in \(0, 1\]"),
    ("top_p_nan", dict(top_p=math.nan), ValueError, r"top_p must be in \(0, 1\]"),
    ("row_all_inf", _all_banned_row(), ValueError, "logits row 2 has no finite maximum"),
    ("row_all_banned", dict(logits=torch.tensor([[1.0, NEG_INF]] * 3), banned=torch.tensor([0])), ValueError,
     "logits row 0 has no finite maximum"),
    ("row_plus_inf", dict(logits=torch.tensor([[1.0, 2.0], [math.inf, 0.0], [0.0, 0.0]]), banned=torch.tensor([0])),
     ValueError,
     "logits row 1 has no finite maximum"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("changes,exc,message", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input(changes, exc, message, device):
    args = _args(device, **changes)
    logits, uniform = args.pop("logits"), args.pop("uniform")
    with pytest.raises(exc, match=message):
        ops.sample_tokens(logits, uniform, **args)


def test_bad_input_float16_on_cpu():
    with pytest.raises(TypeError, match="float16 on CUDA only"):
        ops.sample_tokens(torch.randn(3, 7, dtype=torch.float16), torch.rand(3))


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_bad_input_mixed_devices():
    args = _args("cuda")
    logits, uniform = args.pop("logits"), args.pop("uniform").cpu()
    with pytest.raises(ValueError, match="uniform is on cpu but logits is on cuda"):
        ops.sample_tokens(logits, uniform, **args)
