// Torch glue for the CUDA sampling kernel (built only with a CUDA torch).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <climits>

#include "common/check.h"
#include "common/cuda_capture.h"
#include "generation/sampling_checks.h"
#include "generation/sampling_launch.h"

namespace real_ext {
namespace {

// The bitmap of banned ids lives in shared memory: 128 KB fits sm_80 and sm_90.
constexpr int64_t kMaxBannedVocab = int64_t{1} << 20;
// Counts are summed in float32, exact up to 2^24.
constexpr int64_t kMaxVocab = int64_t{1} << 24;

SampleDType sample_dtype(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16: return SampleDType::kBFloat16;
    case at::kHalf: return SampleDType::kFloat16;
    default: return SampleDType::kFloat32;
  }
}

// Raises for what the kernel reported: the value errors need the device
// data, so this is the one device-to-host copy of the op (12 bytes). It is
// skipped while a CUDA graph is being captured, where bad rows are left as
// token -1 / logprob NaN.
void check_kernel_report(const at::Tensor& errors, const at::Tensor& banned, const at::Tensor& uniform,
                         int64_t vocab) {
  if (cuda_capturing()) return;
  const at::Tensor host = errors.to(at::kCPU);
  const int32_t* e = host.data_ptr<int32_t>();
  if (e[kSampleErrBanned] != INT_MAX)
    check_banned_id(e[kSampleErrBanned], banned[e[kSampleErrBanned]].item<int64_t>(), vocab);
  if (e[kSampleErrUniform] != INT_MAX)
    check_uniform_value(e[kSampleErrUniform], uniform[e[kSampleErrUniform]].item<float>());
  if (e[kSampleErrRow] != INT_MAX) check_row_finite(e[kSampleErrRow], false);
}

std::tuple<at::Tensor, at::Tensor> sample_tokens_cuda(const at::Tensor& logits, const at::Tensor& uniform,
                                                      const at::Tensor& suppress, const at::Tensor& banned,
                                                      bool greedy, double temperature, int64_t top_k, double top_p) {
  const SampleShape shape = check_sample_args(logits, uniform, suppress, banned, temperature, top_k, top_p);
  REAL_EXT_CHECK_VALUE(shape.vocab <= kMaxVocab, "sample_tokens: on CUDA V must be at most ", kMaxVocab, ", got ",
                       shape.vocab);
  REAL_EXT_CHECK_VALUE(shape.n_banned == 0 || shape.vocab <= kMaxBannedVocab,
                       "sample_tokens: on CUDA, banned tokens need V <= ", kMaxBannedVocab, ", got V = ", shape.vocab);
  REAL_EXT_CHECK_VALUE(shape.batch <= INT_MAX && shape.n_banned <= INT_MAX, "sample_tokens: on CUDA B and n must be",
                       " below 2^31, got B = ", shape.batch, ", n = ", shape.n_banned);
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor x = logits.contiguous(), u = uniform.contiguous(), sup = suppress.contiguous(),
                   ban = banned.contiguous();
  at::Tensor tokens = at::empty({shape.batch}, logits.options().dtype(at::kLong));
  at::Tensor logprobs = at::empty({shape.batch}, logits.options().dtype(at::kFloat));
  if (shape.batch == 0) return {tokens, logprobs};
  at::Tensor errors = at::full({kSampleErrSlots}, INT_MAX, logits.options().dtype(at::kInt));

  SampleArgs a{};
  a.logits = x.data_ptr();
  a.dtype = sample_dtype(x.scalar_type());
  a.uniform = u.data_ptr<float>();
  a.suppress = sup.data_ptr<bool>();
  a.banned = ban.data_ptr<int64_t>();
  a.batch = static_cast<int>(shape.batch);
  a.vocab = static_cast<int>(shape.vocab);
  a.n_banned = static_cast<int>(shape.n_banned);
  a.greedy = greedy;
  a.temperature = static_cast<float>(temperature);
  a.top_k = top_k;
  a.top_p = top_p;
  a.tokens = tokens.data_ptr<int64_t>();
  a.logprobs = logprobs.data_ptr<float>();
  a.errors = errors.data_ptr<int32_t>();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const cudaError_t err = sample_tokens_cuda_launch(a, stream);
  TORCH_CHECK(err == cudaSuccess, "sample_tokens: CUDA kernel launch failed: ", cudaGetErrorString(err));
  check_kernel_report(errors, ban, u, shape.vocab);
  return {tokens, logprobs};
}

}  // namespace

TORCH_LIBRARY_IMPL(real_ext, CUDA, m) { m.impl("sample_tokens", &sample_tokens_cuda); }

}  // namespace real_ext
