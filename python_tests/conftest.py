"""Shared test helpers: the devices to run on and seeded random packed batches."""
import pytest
import torch

import real_ext  # noqa: F401  (registers the ops)

HAS_CUDA = torch.cuda.is_available()

# Every op test runs on the CPU here and on CUDA on the GPU machine
# (bench/gpu/check.sh runs `pytest -m cuda`).
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]),
]


def cu_seqlens(lengths, device="cpu"):
    """int32 (batch+1,) offsets of packed sequences of the given lengths."""
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    return torch.tensor(offsets, dtype=torch.int32, device=device)
