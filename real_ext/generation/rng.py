"""Counter-based uniforms: the random number a sample draws at a step is a
hash of (seed, sample id, step), so a sample's tokens do not depend on which
other samples share its batch, on finished samples leaving it, or on the
parallel layout (data-parallel ranks with their own prompts draw exactly what
one process drawing for all of them would)."""
import torch

_MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN, _M1, _M2 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finalizer on int64 tensors (wrapping arithmetic)."""
    z = x + _GOLDEN
    z = (z ^ _shr(z, 30)) * _M1
    z = (z ^ _shr(z, 27)) * _M2
    return z ^ _shr(z, 31)


def uniforms(seed: int, sample_ids: torch.Tensor, step: int) -> torch.Tensor:
    """float32 uniforms in [0, 1), one per sample id, for decoding step `step`."""
    key = splitmix64(splitmix64(torch.full_like(sample_ids, _signed(seed))) ^ sample_ids.to(torch.int64))
    bits = splitmix64(key ^ _signed(step * 0x632BE59BD9B4E019))
    u = _shr(bits, 40).to(torch.float32) * (1.0 / (1 << 24))  # 24 random bits: exact in float32, < 1
    return u
