// Raw-pointer entries of the CUDA decoder-layer kernels (no torch headers:
// compiles with bare nvcc). Arguments are validated by the caller
// (layer_checks.h); 2-D operands have unit column stride and the given row
// stride; outputs are contiguous.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace real_ext {

enum class LayerDType : int { kFloat64 = 0, kFloat32 = 1, kBFloat16 = 2, kFloat16 = 3 };

// out (T, H) = weight * to_dtype(x * rstd); rstd (T,) float32 (float64 for float64).
cudaError_t rms_norm_fwd_cuda(LayerDType dtype, const void* x, int64_t ldx, const void* weight, void* out,
                              void* rstd, int64_t T, int64_t H, double eps, cudaStream_t stream);
// dx (T, H); dweight_partial (chunks, H) in rstd's type: per chunk of rows,
// the sum of dout * to_dtype(x * rstd), for the caller to add up.
cudaError_t rms_norm_bwd_cuda(LayerDType dtype, const void* dout, const void* x, int64_t ldx, const void* weight,
                              const void* rstd, void* dx, void* dweight_partial, int64_t chunks, int64_t T, int64_t H,
                              cudaStream_t stream);
// How many chunks of rows the backward's dweight partial sums of T rows take.
int64_t rms_norm_bwd_chunks(int64_t T);
// out (T, heads, D) from x with token stride sx0 and head stride sx1; cos, sin (T, D).
cudaError_t rope_cuda(LayerDType dtype, const void* x, int64_t sx0, int64_t sx1, const void* cos, const void* sin,
                      void* out, int64_t T, int64_t heads, int64_t D, bool transpose, cudaStream_t stream);
cudaError_t silu_mul_fwd_cuda(LayerDType dtype, const void* gate, int64_t ldg, const void* up, int64_t ldu, void* out,
                              int64_t T, int64_t I, cudaStream_t stream);
cudaError_t silu_mul_bwd_cuda(LayerDType dtype, const void* dout, const void* gate, int64_t ldg, const void* up,
                              int64_t ldu, void* dgate, void* dup, int64_t T, int64_t I, cudaStream_t stream);

}  // namespace real_ext
