// Raw-pointer entry of the CUDA GAE kernel (no torch headers: compiles with bare nvcc).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace real_ext {

// rewards (T,), values (T + batch,), cu_seqlens (batch + 1,) int32 and
// bootstrap (batch,) on the device, validated by the caller; writes advantages
// and returns (T,). T is float or double.
template <typename T>
cudaError_t gae_cuda_launch(const T* rewards, const T* values, const int32_t* cu_seqlens, const bool* bootstrap,
                            int batch, double gamma, double lam, T* advantages, T* returns, cudaStream_t stream);

}  // namespace real_ext
