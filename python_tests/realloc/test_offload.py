"""Offload / reload of a flat buffer (pinned host memory when it comes from a GPU)."""
import pytest
import torch

from real_ext.realloc import offload, reload
from python_tests.conftest import DEVICES


@pytest.mark.parametrize("device", DEVICES)
def test_offload_and_reload_round_trip(device):
    flat = torch.randn(100_000, device=device).to(torch.bfloat16)
    host = offload(flat)
    assert host.device.type == "cpu" and host.is_pinned() == flat.is_cuda
    assert torch.equal(host, flat.cpu())
    back = reload(host, device)
    assert back.device == flat.device and torch.equal(back, flat)
