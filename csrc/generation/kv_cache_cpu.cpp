// Paged KV-cache append on the CPU: k_cache[slots[t]] = k[t] (and v), one
// memcpy per (token, cache) row, tokens in parallel. k and v are read in place
// when each token's (heads, head_dim) row is contiguous (views of a fused
// q/k/v projection are).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>

#include "common/check.h"
#include "generation/generation_checks.h"

namespace real_ext {
namespace {

void kv_cache_append_cpu(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k_in, const at::Tensor& v_in,
                         const at::Tensor& slots_in, bool /*check_ids: reading them costs no device copy here*/) {
  const KvCacheAppendShape s = check_kv_cache_append_args(k_cache, v_cache, k_in, v_in, slots_in);
  const at::Tensor k = token_rows_view(k_in), v = token_rows_view(v_in), slots = slots_in.contiguous();
  const int64_t k_step = k.stride(0) * static_cast<int64_t>(k.element_size());
  const int64_t v_step = v.stride(0) * static_cast<int64_t>(v.element_size());
  const int64_t row_bytes = s.heads_kv * s.head_dim * static_cast<int64_t>(k.element_size());
  const char* ks = static_cast<const char*>(k.data_ptr());
  const char* vs = static_cast<const char*>(v.data_ptr());
  char* kd = static_cast<char*>(k_cache.data_ptr());
  char* vd = static_cast<char*>(v_cache.data_ptr());
  const int64_t* slot = slots.data_ptr<int64_t>();
  // Rows are small (a few KB): enough of them per task to amortize the fork.
  const int64_t grain = std::max<int64_t>(1, (64 << 10) / std::max<int64_t>(row_bytes, 1));
  at::parallel_for(0, s.tokens, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      std::memcpy(kd + slot[t] * row_bytes, ks + t * k_step, row_bytes);
      std::memcpy(vd + slot[t] * row_bytes, vs + t * v_step, row_bytes);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(real_ext, CPU, m) { m.impl("kv_cache_append_", &kv_cache_append_cpu); }

}  // namespace real_ext
