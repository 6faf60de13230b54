"""The decoder layer's compiled ops: ``rms_norm``, ``rope``, ``silu_mul`` and
the no-autograd ``linear`` of decode steps, with their fake rules. Their autograd is registered in C++
(csrc/layers/layers_autograd.cpp): a decode step calls them dozens of times on
a few tokens, where a Python autograd rule costs more than the kernel."""
import torch

_ops = torch.ops.real_ext


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of the rows of ``x`` (T, H) in HF's order:
    ``weight * to_dtype(x * rsqrt(mean(x^2) + eps))``, statistics in float32.
    ``weight``: (H,) in x's dtype. Differentiable in x and weight."""
    return _ops.rms_norm_fwd(x, weight, float(eps))[0]


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding ``x * cos + rotate_half(x) * sin`` of ``x`` (T, heads, D)
    with ``cos``, ``sin`` (T, D) in x's dtype (the same angles for every head).
    Differentiable in x."""
    return _ops.rope(x, cos, sin, False)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SwiGLU's ``silu(gate) * up`` for (T, I) operands (row-strided views of a
    fused gate/up product are read in place). Differentiable in both."""
    return _ops.silu_mul_fwd(gate, up)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` for x (M, K), without autograd: on the CPU, a few
    rows (a decode step's last running sequences) take a kernel that reads each
    weight row once for all of them, and with AVX512-BF16 bfloat16 batches of up
    to 128 rows (even K) a panel kernel; other float32 products go to OpenBLAS
    where real_ext/ops/cpu_blas.py loads it, inside ``cpu_blas.packed_weights()``
    to MKL's products of packed weights, the rest to ATen's linear."""
    return _ops.linear(x, weight, bias)


@torch.library.register_fake("real_ext::linear")
def _linear_fake(x, weight, bias):
    return x.new_empty((x.shape[0], weight.shape[0]))


@torch.library.register_fake("real_ext::rms_norm_fwd")
def _rms_fwd_fake(x, weight, eps):
    stat = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.new_empty(x.shape), x.new_empty((x.shape[0],), dtype=stat)


@torch.library.register_fake("real_ext::rms_norm_bwd")
def _rms_bwd_fake(dout, x, weight, rstd):
    return x.new_empty(x.shape), torch.empty_like(weight)


@torch.library.register_fake("real_ext::rope")
def _rope_fake(x, cos, sin, transpose):
    return x.new_empty(x.shape)


@torch.library.register_fake("real_ext::silu_mul_fwd")
def _silu_mul_fwd_fake(gate, up):
    return gate.new_empty(gate.shape)


@torch.library.register_fake("real_ext::silu_mul_bwd")
def _silu_mul_bwd_fake(dout, gate, up):
    return gate.new_empty(gate.shape), gate.new_empty(gate.shape)
