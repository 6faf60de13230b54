// Torch glue of the CUDA paged decode attention kernels (built only with a
// CUDA torch): validate, pick the split of the keys, allocate, launch.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/cuda_capture.h"
#include "generation/decode_attention_launch.h"
#include "generation/generation_checks.h"

namespace real_ext {
namespace {

DecodeDType decode_dtype(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16: return DecodeDType::kBFloat16;
    case at::kHalf: return DecodeDType::kFloat16;
    default: return DecodeDType::kFloat32;
  }
}

at::Tensor decode_attention_cuda_op(const at::Tensor& q_in, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                    const at::Tensor& block_tables, const at::Tensor& seq_lens, int64_t block_size,
                                    double scale, bool check_ids) {
  const DecodeAttnShape s = check_decode_attention_args(q_in, k_cache, v_cache, block_tables, seq_lens, block_size,
                                                        check_ids && !cuda_capturing());
  const c10::cuda::CUDAGuard guard(q_in.device());
  at::Tensor out = at::empty(q_in.sizes(), q_in.options());
  if (s.batch == 0) return out;
  at::Tensor q = q_in.contiguous();
  if (reinterpret_cast<uintptr_t>(q.data_ptr()) % 16 != 0) q = q.clone();  // the kernel reads 16-byte words
  const at::Tensor tables = block_tables.contiguous(), lens = seq_lens.contiguous();
  const int num_sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const DecodeSplit split = decode_attention_split(static_cast<int>(s.batch), static_cast<int>(s.heads_q),
                                                   static_cast<int>(s.heads_kv), s.max_seq_len, num_sms);
  at::Tensor partial_out, partial_stats;
  if (split.num_splits > 1) {
    const auto opt = q.options().dtype(at::kFloat);
    partial_out = at::empty({split.num_splits, s.batch, s.heads_q, s.head_dim}, opt);
    partial_stats = at::empty({split.num_splits, s.batch, s.heads_q, 2}, opt);
  }
  DecodeAttnParams p;
  p.q = q.data_ptr();
  p.k_cache = k_cache.data_ptr();
  p.v_cache = v_cache.data_ptr();
  p.block_tables = tables.data_ptr<int32_t>();
  p.seq_lens = lens.data_ptr<int32_t>();
  p.out = out.data_ptr();
  p.partial_out = split.num_splits > 1 ? partial_out.data_ptr<float>() : nullptr;
  p.partial_stats = split.num_splits > 1 ? partial_stats.data_ptr<float>() : nullptr;
  p.batch = static_cast<int>(s.batch);
  p.heads_q = static_cast<int>(s.heads_q);
  p.heads_kv = static_cast<int>(s.heads_kv);
  p.head_dim = static_cast<int>(s.head_dim);
  p.max_blocks = static_cast<int>(s.max_blocks);
  p.block_size = static_cast<int>(s.block_size);
  p.num_splits = split.num_splits;
  p.split_tokens = split.split_tokens;
  p.scale = static_cast<float>(scale);
  p.dtype = decode_dtype(q.scalar_type());
  const cudaError_t err = decode_attention_cuda(p, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "decode_attention: CUDA kernel failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(real_ext, CUDA, m) { m.impl("decode_attention", &decode_attention_cuda_op); }

}  // namespace real_ext
