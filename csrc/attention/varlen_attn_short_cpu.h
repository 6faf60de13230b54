// Packed attention on the CPU for batches of short sequences (every sequence
// at most kShortSeqLen queries and keys), the shape of RLHF on small tasks and
// of many-sample groups: a whole (sequence, kv head) fits in L1/L2, so one
// work item does its GQA group's heads with register-blocked loops over
// per-item tiles, where the tiled BLAS path pays more for packing each small
// tile than for the products.
#pragma once

#include <ATen/core/Tensor.h>

#include "attention/varlen_attn_checks.h"

namespace real_ext {

constexpr int64_t kShortSeqLen = 256;

// Whether the short-sequence kernels take this call: float32 or bfloat16,
// head_dim a multiple of 16, no sequence longer than kShortSeqLen.
bool varlen_attn_short_applies(const VarlenAttnShape& s, const at::Tensor& q);

// Same contract as the varlen_attn_fwd / varlen_attn_bwd ops (out and the
// gradients in the inputs' dtype, lse float32 (heads_q, total_q)). q, k, v and
// dout may be row-strided views (token rows, heads contiguous inside a row).
std::tuple<at::Tensor, at::Tensor> varlen_attn_short_fwd(const VarlenAttnShape& s, const at::Tensor& q,
                                                         const at::Tensor& k, const at::Tensor& v, double scale,
                                                         bool causal);
std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_attn_short_bwd(const VarlenAttnShape& s, const at::Tensor& dout,
                                                                     const at::Tensor& q, const at::Tensor& k,
                                                                     const at::Tensor& v, const at::Tensor& lse,
                                                                     double scale, bool causal);

}  // namespace real_ext
