"""Plain-PyTorch references of every compiled op, with the same signatures.
Slow and obvious on purpose: tests and benchmarks compare the kernels with them."""
from real_ext.ref.attention import varlen_attention
from real_ext.ref.gae import gae
from real_ext.ref.generation_kv import decode_attention, kv_cache_append_
from real_ext.ref.layers import rms_norm, rope, silu_mul
from real_ext.ref.realloc import pack, unpack_
from real_ext.ref.sampling import sample_tokens, truncated_log_softmax

__all__ = ["varlen_attention", "gae", "pack", "unpack_", "kv_cache_append_", "decode_attention",
           "sample_tokens", "truncated_log_softmax", "rms_norm", "rope", "silu_mul"]
