// Validation shared by the CPU and CUDA implementations of varlen attention.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace real_ext {

struct VarlenAttnShape {
  int64_t batch, total_q, total_k, heads_q, heads_kv, head_dim;
  std::vector<int32_t> cu_q, cu_k;  // host copies of the offsets
};

// Checks ranks, shapes, dtypes, devices and the offsets (values included) and
// returns the sizes. dtypes: float32 and bfloat16 everywhere, float64 on CPU
// (for gradcheck), float16 on CUDA.
VarlenAttnShape check_varlen_attn_args(const char* op, const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, const at::Tensor& cu_seqlens_q,
                                       const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                                       int64_t max_seqlen_k);

// The extra checks of the backward: dout/out like q, lse (heads_q, total_q) float32.
void check_varlen_attn_bwd_args(const char* op, const VarlenAttnShape& s, const at::Tensor& dout,
                                const at::Tensor& q, const at::Tensor& out, const at::Tensor& lse);

}  // namespace real_ext
