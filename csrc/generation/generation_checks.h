// Validation shared by the CPU and CUDA implementations of the generation ops
// (paged KV-cache append and decode attention). Everything is checked before
// any memory is touched; slot and block ids are read on the host (one small
// copy on CUDA) because a bad id would write or read out of bounds. The one
// exceptions, on CUDA only: a CUDA graph being captured, where no host copy is
// allowed, and a caller that passes check_ids=False (read_ids = false): then
// the ids are the caller's responsibility (the generation engine builds them
// from its own cache bookkeeping), and decode attention sizes its key split
// for max_blocks * block_size keys.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace real_ext {

struct KvCacheAppendShape {
  int64_t tokens, num_slots, heads_kv, head_dim;
};

// Checks kv_cache_append_'s arguments (the caches (num_slots, heads_kv,
// head_dim) contiguous, k/v (T, heads_kv, head_dim), one dtype, one device;
// slots (T,) int64 in [0, num_slots), read when read_ids).
KvCacheAppendShape check_kv_cache_append_args(const at::Tensor& k_cache, const at::Tensor& v_cache,
                                              const at::Tensor& k, const at::Tensor& v, const at::Tensor& slots,
                                              bool read_ids = true);

struct DecodeAttnShape {
  int64_t batch, heads_q, heads_kv, head_dim, num_slots, max_blocks, block_size;
  int64_t max_seq_len;  // the longest seq_lens entry (0 for an empty batch; its bound without read_ids)
};

// Checks decode_attention's arguments: q (B, heads_q, head_dim); the caches as
// above; block_tables (B, max_blocks) int32; seq_lens (B,) int32 with
// 1 <= seq_lens[b] <= max_blocks * block_size; every block a sequence uses in
// [0, num_slots / block_size). On CUDA also head_dim % 8 == 0 and 16-byte
// aligned caches (the kernel reads rows in 16-byte words).
DecodeAttnShape check_decode_attention_args(const at::Tensor& q, const at::Tensor& k_cache,
                                            const at::Tensor& v_cache, const at::Tensor& block_tables,
                                            const at::Tensor& seq_lens, int64_t block_size, bool read_ids = true);

}  // namespace real_ext
