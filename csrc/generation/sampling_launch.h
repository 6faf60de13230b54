// Raw-pointer entry of the CUDA sampling kernel (no torch headers: compiles with bare nvcc).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace real_ext {

enum class SampleDType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// Slots of the (3,) int32 error report, each set to INT32_MAX by the caller;
// the kernel lowers a slot to the first offending row / banned index.
enum SampleError : int { kSampleErrRow = 0, kSampleErrBanned = 1, kSampleErrUniform = 2, kSampleErrSlots = 3 };

// Device pointers, validated shapes and scalars (see sample_tokens in registration.cpp).
struct SampleArgs {
  const void* logits;  // (batch, vocab) row-major, `dtype`
  SampleDType dtype;
  const float* uniform;   // (batch,)
  const bool* suppress;   // (batch,)
  const int64_t* banned;  // (n_banned,)
  int batch, vocab, n_banned;
  bool greedy;
  float temperature;
  int64_t top_k;
  double top_p;
  int64_t* tokens;   // (batch,) out; -1 in a row without a finite maximum
  float* logprobs;   // (batch,) out
  int32_t* errors;   // (kSampleErrSlots,)
};

// Bytes of dynamic shared memory the launch needs (the banned-token bitmap).
inline int64_t sample_tokens_smem_bytes(int vocab, int n_banned) {
  return n_banned > 0 ? (static_cast<int64_t>(vocab) + 31) / 32 * 4 : 0;
}

cudaError_t sample_tokens_cuda_launch(const SampleArgs& args, cudaStream_t stream);

}  // namespace real_ext
