"""Typed wrappers of the compiled ops. Callers never branch on device: the
dispatcher picks the CPU or CUDA kernel."""
from real_ext.ops import cpu_blas
from real_ext.ops.attention import varlen_attention
from real_ext.ops.gae import gae
from real_ext.ops.generation_kv import decode_attention, kv_cache_append_
from real_ext.ops.layers import linear, rms_norm, rope, silu_mul
from real_ext.ops.realloc import pack, unpack_
from real_ext.ops.sampling import sample_tokens

__all__ = ["varlen_attention", "gae", "pack", "unpack_", "kv_cache_append_", "decode_attention",
           "sample_tokens", "rms_norm", "rope", "silu_mul", "linear"]

cpu_blas.choose_at_import()
