// Raw-pointer entry of the CUDA paged decode attention kernels (no torch
// headers: compiles with bare nvcc).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace real_ext {

enum class DecodeDType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// One call, validated by the caller (generation_checks.h): every tensor
// contiguous and on the device, q and the caches 16-byte aligned,
// head_dim % 8 == 0 and <= 256.
struct DecodeAttnParams {
  const void* q;                // (batch, heads_q, head_dim)
  const void* k_cache;          // (num_slots, heads_kv, head_dim)
  const void* v_cache;
  const int32_t* block_tables;  // (batch, max_blocks)
  const int32_t* seq_lens;      // (batch,)
  void* out;                    // (batch, heads_q, head_dim), q's dtype
  // Split-K workspace, used when num_splits > 1: each split's normalized
  // output (num_splits, batch, heads_q, head_dim) and its softmax max and sum
  // (num_splits, batch, heads_q, 2), log2 domain.
  float* partial_out;
  float* partial_stats;
  int batch, heads_q, heads_kv, head_dim, max_blocks, block_size;
  int num_splits, split_tokens;  // split s: tokens [s * split_tokens, (s + 1) * split_tokens)
  float scale;
  DecodeDType dtype;
};

struct DecodeSplit {
  int num_splits, split_tokens;
};

// Splits each sequence's keys over several blocks when (sequence, kv head)
// blocks alone would leave most of the num_sms multiprocessors idle.
DecodeSplit decode_attention_split(int batch, int heads_q, int heads_kv, int64_t max_seq_len, int num_sms);

cudaError_t decode_attention_cuda(const DecodeAttnParams& p, cudaStream_t stream);

}  // namespace real_ext
