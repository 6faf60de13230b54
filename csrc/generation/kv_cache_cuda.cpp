// Torch glue of the CUDA KV-cache append kernel (built only with a CUDA torch).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/cuda_capture.h"
#include "generation/generation_checks.h"
#include "generation/kv_cache_launch.h"

namespace real_ext {
namespace {

void kv_cache_append_cuda_op(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k_in,
                             const at::Tensor& v_in, const at::Tensor& slots_in, bool check_ids) {
  const KvCacheAppendShape s =
      check_kv_cache_append_args(k_cache, v_cache, k_in, v_in, slots_in, check_ids && !cuda_capturing());
  if (s.tokens == 0) return;
  const c10::cuda::CUDAGuard guard(k_cache.device());
  const at::Tensor k = k_in.contiguous(), v = v_in.contiguous(), slots = slots_in.contiguous();
  const int64_t row_bytes = s.heads_kv * s.head_dim * static_cast<int64_t>(k.element_size());
  const cudaError_t err = kv_cache_append_cuda(k_cache.data_ptr(), v_cache.data_ptr(), k.data_ptr(), v.data_ptr(),
                                               slots.data_ptr<int64_t>(), s.tokens, row_bytes,
                                               at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "kv_cache_append_: CUDA kernel launch failed: ", cudaGetErrorString(err));
}

}  // namespace

TORCH_LIBRARY_IMPL(real_ext, CUDA, m) { m.impl("kv_cache_append_", &kv_cache_append_cuda_op); }

}  // namespace real_ext
