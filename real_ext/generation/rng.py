"""Counter-based uniforms: the random number a sample draws at a step is a
hash of (seed, sample id, step), so a sample's tokens do not depend on which
other samples share its batch, on finished samples leaving it, or on the
parallel layout (data-parallel ranks with their own prompts draw exactly what
one process drawing for all of them would). Computed on the host with numpy
(a few microseconds per decode step; unsigned 64-bit arithmetic wraps)."""
import numpy as np
import torch

_GOLDEN, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_STEP = 0x632BE59BD9B4E019
_MASK64 = (1 << 64) - 1


def splitmix64(x: np.ndarray) -> np.ndarray:
    """Vigna's splitmix64 output for states x (uint64 arrays): x + golden, then the finalizer."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def uniforms(seed: int, sample_ids, step: int) -> torch.Tensor:
    """float32 uniforms in [0, 1), one per sample id, for decoding step `step`."""
    ids = np.asarray(sample_ids, dtype=np.int64).astype(np.uint64)
    key = splitmix64(splitmix64(np.full(ids.shape, seed & _MASK64, dtype=np.uint64)) ^ ids)
    bits = splitmix64(key ^ np.uint64((step * _STEP) & _MASK64))
    # 24 random bits: exact in float32, < 1
    return torch.from_numpy((bits >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / (1 << 24)))
