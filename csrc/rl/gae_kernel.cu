// Packed GAE on CUDA: one warp per sequence. The recurrence
//   A_t = delta_t + c * A_{t+1},  c = gamma * lam
// is linear, so each 32-token chunk (walked from the sequence's end) is a warp
// suffix scan of delta with weights c^k, plus c^(n - lane) times the carry A
// of the chunk after it.
#include "rl/gae_launch.h"

namespace real_ext {
namespace {

constexpr int kWarpsPerBlock = 8;

__device__ __forceinline__ float pow_t(float b, int e) { return powf(b, static_cast<float>(e)); }
__device__ __forceinline__ double pow_t(double b, int e) { return pow(b, static_cast<double>(e)); }

template <typename T>
__global__ void gae_kernel(const T* __restrict__ rewards, const T* __restrict__ values,
                           const int32_t* __restrict__ cu_seqlens, const bool* __restrict__ bootstrap, int batch,
                           T gamma, T c, T* __restrict__ advantages, T* __restrict__ returns) {
  const int seq = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (seq >= batch) return;  // whole warps exit together
  const int64_t t0 = cu_seqlens[seq], t1 = cu_seqlens[seq + 1];
  const T* V = values + seq;  // V[t] is the value of token t; V[t1] the value after the last token
  const T last_value = bootstrap[seq] ? V[t1] : T(0);
  T carry = 0;  // A at the first token of the chunk already done
  for (int64_t end = t1; end > t0; end -= 32) {
    const int64_t start = end - 32 > t0 ? end - 32 : t0;
    const int n = static_cast<int>(end - start);
    const int64_t t = start + lane;
    T y = 0, value = 0;
    if (lane < n) {
      value = V[t];
      const T next = t + 1 == t1 ? last_value : V[t + 1];
      y = rewards[t] + gamma * next - value;
    }
    T w = c;  // c^offset
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      const T other = __shfl_down_sync(0xffffffffu, y, offset);
      if (lane + offset < 32) y += w * other;
      w *= w;
    }
    const T a = y + pow_t(c, n - lane) * carry;
    if (lane < n) {
      advantages[t] = a;
      returns[t] = a + value;
    }
    carry = __shfl_sync(0xffffffffu, a, 0);
  }
}

}  // namespace

template <typename T>
cudaError_t gae_cuda_launch(const T* rewards, const T* values, const int32_t* cu_seqlens, const bool* bootstrap,
                            int batch, double gamma, double lam, T* advantages, T* returns, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  const int blocks = (batch + kWarpsPerBlock - 1) / kWarpsPerBlock;
  gae_kernel<T><<<blocks, kWarpsPerBlock * 32, 0, stream>>>(rewards, values, cu_seqlens, bootstrap, batch,
                                                            static_cast<T>(gamma), static_cast<T>(gamma * lam),
                                                            advantages, returns);
  return cudaGetLastError();
}

template cudaError_t gae_cuda_launch<float>(const float*, const float*, const int32_t*, const bool*, int, double,
                                            double, float*, float*, cudaStream_t);
template cudaError_t gae_cuda_launch<double>(const double*, const double*, const int32_t*, const bool*, int, double,
                                             double, double*, double*, cudaStream_t);

}  // namespace real_ext
