"""Packed GAE against the float64 reference loop (real_ext.ref.gae)."""
import pytest
import torch

from real_ext import ops, ref
from python_tests.conftest import DEVICES, cu_seqlens

# (name, lengths, gamma, lam)
CASES = [
    ("one_token", [1], 0.99, 0.95),
    ("mixed", [5, 1, 33, 64, 65, 200], 0.99, 0.95),
    ("empty_sequences", [0, 7, 0, 31], 1.0, 1.0),
    ("gamma0", [10, 3], 0.0, 0.95),
    ("lam0", [10, 40], 0.9, 0.0),
    ("many", [(i * 53) % 97 + 1 for i in range(300)], 0.97, 0.9),
    ("long", [4096, 1], 1.0, 0.95),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_reference(case, dtype, device):
    _, lengths, gamma, lam = case
    g = torch.Generator().manual_seed(len(lengths))
    T, B = sum(lengths), len(lengths)
    rewards = torch.randn(T, generator=g, dtype=torch.float64).to(device, dtype)
    values = torch.randn(T + B, generator=g, dtype=torch.float64).to(device, dtype)
    bootstrap = (torch.rand(B, generator=g) < 0.5).to(device)
    cu = cu_seqlens(lengths, device)
    adv, ret = ops.gae(rewards, values, cu, bootstrap, gamma, lam)
    adv_ref, ret_ref = ref.gae(rewards.double(), values.double(), cu, bootstrap, gamma, lam)
    assert adv.dtype == dtype and adv.shape == (T,)
    # The recurrence adds one rounding per step: allow a few ulps per token of
    # the longest sequence, on the scale of the values involved.
    eps = torch.finfo(dtype).eps
    scale = max(1.0, adv_ref.abs().max().item(), values.abs().max().item())
    tol = 4 * eps * max(lengths) * scale
    assert (adv.double().cpu() - adv_ref.cpu()).abs().max().item() <= tol
    assert (ret.double().cpu() - ret_ref.cpu()).abs().max().item() <= tol


def test_terminal_value_ignored_without_bootstrap():
    # One sequence [r0, r1]; with bootstrap=False the final value must not matter.
    rewards = torch.tensor([1.0, 2.0], dtype=torch.float64)
    cu = cu_seqlens([2])
    a1, _ = ops.gae(rewards, torch.tensor([0.5, 0.25, 100.0], dtype=torch.float64), cu, torch.tensor([False]), 0.9, 0.8)
    a2, _ = ops.gae(rewards, torch.tensor([0.5, 0.25, -7.0], dtype=torch.float64), cu, torch.tensor([False]), 0.9, 0.8)
    assert torch.equal(a1, a2)
    a3, _ = ops.gae(rewards, torch.tensor([0.5, 0.25, 100.0], dtype=torch.float64), cu, torch.tensor([True]), 0.9, 0.8)
    assert not torch.equal(a1, a3)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    rewards = torch.randn(12, device=device)
    values = torch.randn(15, device=device)
    args = (rewards, values, cu_seqlens([4, 0, 8], device), torch.tensor([True, False, True], device=device),
            0.99, 0.95)
    torch.library.opcheck(torch.ops.real_ext.gae.default, args)
