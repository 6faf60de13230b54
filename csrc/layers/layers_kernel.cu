// The decoder layer's element-wise ops on CUDA. Math in float32 (float64 for
// float64 tensors), one rounding on store, as the CPU kernels do:
//   RMSNorm: one warp per row (sum of squares, then the scaled row); the
//            backward's dweight sums each chunk of rows per column, the caller
//            adds the chunks up;
//   rope, SwiGLU: one thread per output element (per rotated pair for rope).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "layers/layers_launch.h"

namespace real_ext {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kThreads = 256;
constexpr int64_t kRowsPerChunk = 64;  // rows per dweight partial sum

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_acc(typename Acc<T>::type v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }

// v rounded to T and widened back (HF rounds the normalized row before the weight).
template <typename T>
__device__ __forceinline__ typename Acc<T>::type round_as(typename Acc<T>::type v) {
  return to_acc(from_acc<T>(v));
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float sigmoid(float g) { return 1.f / (1.f + __expf(-g)); }
__device__ __forceinline__ double sigmoid(double g) { return 1.0 / (1.0 + exp(-g)); }

template <typename T>
__global__ void rms_fwd_kernel(const T* __restrict__ x, int64_t ldx, const T* __restrict__ w, T* __restrict__ out,
                               typename Acc<T>::type* __restrict__ rstd, int64_t T_rows, int64_t H, double eps) {
  using A = typename Acc<T>::type;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= T_rows) return;  // whole warps exit together
  const T* xr = x + r * ldx;
  A ss = 0;
  for (int64_t c = lane; c < H; c += 32) {
    const A v = to_acc(xr[c]);
    ss += v * v;
  }
  ss = warp_sum(ss);
  const A inv = A(1) / sqrt(ss / A(H) + A(eps));
  if (lane == 0) rstd[r] = inv;
  T* o = out + r * H;
  for (int64_t c = lane; c < H; c += 32) o[c] = from_acc<T>(to_acc(w[c]) * round_as<T>(to_acc(xr[c]) * inv));
}

template <typename T>
__global__ void rms_bwd_dx_kernel(const T* __restrict__ dout, const T* __restrict__ x, int64_t ldx,
                                  const T* __restrict__ w, const typename Acc<T>::type* __restrict__ rstd,
                                  T* __restrict__ dx, int64_t T_rows, int64_t H) {
  using A = typename Acc<T>::type;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= T_rows) return;
  const T* xr = x + r * ldx;
  const T* gr = dout + r * H;
  const A inv = rstd[r];
  A dot = 0;
  for (int64_t c = lane; c < H; c += 32) dot += to_acc(gr[c]) * to_acc(w[c]) * (to_acc(xr[c]) * inv);
  const A mean = warp_sum(dot) / A(H);
  T* d = dx + r * H;
  for (int64_t c = lane; c < H; c += 32) {
    const A n = to_acc(xr[c]) * inv;
    d[c] = from_acc<T>(inv * (to_acc(gr[c]) * to_acc(w[c]) - n * mean));
  }
}

// Block (column tile, chunk): column c's sum over the chunk's rows.
template <typename T>
__global__ void rms_bwd_dw_kernel(const T* __restrict__ dout, const T* __restrict__ x, int64_t ldx,
                                  const typename Acc<T>::type* __restrict__ rstd,
                                  typename Acc<T>::type* __restrict__ partial, int64_t T_rows, int64_t H) {
  using A = typename Acc<T>::type;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (c >= H) return;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kRowsPerChunk;
  const int64_t r1 = r0 + kRowsPerChunk < T_rows ? r0 + kRowsPerChunk : T_rows;
  A acc = 0;
  for (int64_t r = r0; r < r1; ++r) acc += to_acc(dout[r * H + c]) * round_as<T>(to_acc(x[r * ldx + c]) * rstd[r]);
  partial[static_cast<int64_t>(blockIdx.y) * H + c] = acc;
}

// One thread per rotated pair (t, h, i < D/2).
template <typename T>
__global__ void rope_kernel(const T* __restrict__ x, int64_t sx0, int64_t sx1, const T* __restrict__ cos,
                            const T* __restrict__ sin, T* __restrict__ out, int64_t T_rows, int64_t heads,
                            int64_t half, bool transpose) {
  using A = typename Acc<T>::type;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= T_rows * heads * half) return;
  const int64_t i = idx % half, h = (idx / half) % heads, t = idx / (half * heads);
  const int64_t D = 2 * half;
  const T* xr = x + t * sx0 + h * sx1;
  const T* c = cos + t * D;
  const T* s = sin + t * D;
  const A a = to_acc(xr[i]), b = to_acc(xr[i + half]);
  const A s_lo = to_acc(s[i]), s_hi = to_acc(s[i + half]);
  T* o = out + (t * heads + h) * D;
  o[i] = from_acc<T>(a * to_acc(c[i]) + (transpose ? b * s_hi : -b * s_lo));
  o[i + half] = from_acc<T>(b * to_acc(c[i + half]) + (transpose ? -a * s_lo : a * s_hi));
}

template <typename T>
__global__ void silu_mul_fwd_kernel(const T* __restrict__ gate, int64_t ldg, const T* __restrict__ up, int64_t ldu,
                                    T* __restrict__ out, int64_t T_rows, int64_t I) {
  using A = typename Acc<T>::type;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= T_rows * I) return;
  const int64_t r = idx / I, k = idx % I;
  const A g = to_acc(gate[r * ldg + k]);
  out[idx] = from_acc<T>(g * sigmoid(g) * to_acc(up[r * ldu + k]));
}

// d silu(g) / dg = s * (1 + g * (1 - s)), s = sigmoid(g).
template <typename T>
__global__ void silu_mul_bwd_kernel(const T* __restrict__ dout, const T* __restrict__ gate, int64_t ldg,
                                    const T* __restrict__ up, int64_t ldu, T* __restrict__ dgate,
                                    T* __restrict__ dup, int64_t T_rows, int64_t I) {
  using A = typename Acc<T>::type;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= T_rows * I) return;
  const int64_t r = idx / I, k = idx % I;
  const A g = to_acc(gate[r * ldg + k]), d = to_acc(dout[idx]), s = sigmoid(g);
  dgate[idx] = from_acc<T>(d * to_acc(up[r * ldu + k]) * s * (A(1) + g * (A(1) - s)));
  dup[idx] = from_acc<T>(d * g * s);
}

int64_t blocks_for(int64_t n, int64_t per_block) { return (n + per_block - 1) / per_block; }

// Calls f with a typed null pointer of the storage type.
template <typename F>
cudaError_t dispatch(LayerDType dtype, F&& f) {
  switch (dtype) {
    case LayerDType::kFloat64: return f(static_cast<double*>(nullptr));
    case LayerDType::kBFloat16: return f(static_cast<__nv_bfloat16*>(nullptr));
    case LayerDType::kFloat16: return f(static_cast<__half*>(nullptr));
    default: return f(static_cast<float*>(nullptr));
  }
}

}  // namespace

int64_t rms_norm_bwd_chunks(int64_t T) { return blocks_for(T, kRowsPerChunk); }

cudaError_t rms_norm_fwd_cuda(LayerDType dtype, const void* x, int64_t ldx, const void* weight, void* out,
                              void* rstd, int64_t T, int64_t H, double eps, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    using A = typename Acc<S>::type;
    rms_fwd_kernel<S><<<blocks_for(T, kWarpsPerBlock), kThreads, 0, stream>>>(
        static_cast<const S*>(x), ldx, static_cast<const S*>(weight), static_cast<S*>(out), static_cast<A*>(rstd), T,
        H, eps);
    return cudaGetLastError();
  });
}

cudaError_t rms_norm_bwd_cuda(LayerDType dtype, const void* dout, const void* x, int64_t ldx, const void* weight,
                              const void* rstd, void* dx, void* dweight_partial, int64_t chunks, int64_t T, int64_t H,
                              cudaStream_t stream) {
  if (T == 0 || H == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    using A = typename Acc<S>::type;
    rms_bwd_dx_kernel<S><<<blocks_for(T, kWarpsPerBlock), kThreads, 0, stream>>>(
        static_cast<const S*>(dout), static_cast<const S*>(x), ldx, static_cast<const S*>(weight),
        static_cast<const A*>(rstd), static_cast<S*>(dx), T, H);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    const dim3 grid(static_cast<unsigned>(blocks_for(H, kThreads)), static_cast<unsigned>(chunks));
    rms_bwd_dw_kernel<S><<<grid, kThreads, 0, stream>>>(static_cast<const S*>(dout), static_cast<const S*>(x), ldx,
                                                         static_cast<const A*>(rstd), static_cast<A*>(dweight_partial),
                                                         T, H);
    return cudaGetLastError();
  });
}

cudaError_t rope_cuda(LayerDType dtype, const void* x, int64_t sx0, int64_t sx1, const void* cos, const void* sin,
                      void* out, int64_t T, int64_t heads, int64_t D, bool transpose, cudaStream_t stream) {
  const int64_t n = T * heads * (D / 2);
  if (n == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    rope_kernel<S><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(
        static_cast<const S*>(x), sx0, sx1, static_cast<const S*>(cos), static_cast<const S*>(sin),
        static_cast<S*>(out), T, heads, D / 2, transpose);
    return cudaGetLastError();
  });
}

cudaError_t silu_mul_fwd_cuda(LayerDType dtype, const void* gate, int64_t ldg, const void* up, int64_t ldu, void* out,
                              int64_t T, int64_t I, cudaStream_t stream) {
  if (T * I == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    silu_mul_fwd_kernel<S><<<blocks_for(T * I, kThreads), kThreads, 0, stream>>>(
        static_cast<const S*>(gate), ldg, static_cast<const S*>(up), ldu, static_cast<S*>(out), T, I);
    return cudaGetLastError();
  });
}

cudaError_t silu_mul_bwd_cuda(LayerDType dtype, const void* dout, const void* gate, int64_t ldg, const void* up,
                              int64_t ldu, void* dgate, void* dup, int64_t T, int64_t I, cudaStream_t stream) {
  if (T * I == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    silu_mul_bwd_kernel<S><<<blocks_for(T * I, kThreads), kThreads, 0, stream>>>(
        static_cast<const S*>(dout), static_cast<const S*>(gate), ldg, static_cast<const S*>(up), ldu,
        static_cast<S*>(dgate), static_cast<S*>(dup), T, I);
    return cudaGetLastError();
  });
}

}  // namespace real_ext
