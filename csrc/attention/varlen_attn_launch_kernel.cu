// Host entry points of packed (varlen) attention (declared in varlen_attn_params.h):
// argument checks, head-dim bucket / dtype dispatch, the backward workspace layout, and
// the two small backward kernels around the main one (D = rowsum(dO * O) with the lse
// rewrite, and the float32 dQ accumulator -> dq conversion).
#include <algorithm>
#include <cstdint>

#include <math_constants.h>

#include "attention/varlen_attn_mma.cuh"

namespace real_ext {
namespace {

using attn::BwdWorkspace;
using attn::TypeOps;

constexpr size_t align256(size_t n) { return (n + 255) / 256 * 256; }

bool is_aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

int head_dim_bucket(int hd) {
  if (hd <= 32) return 32;
  if (hd <= 64) return 64;
  if (hd <= 96) return 96;
  if (hd <= 128) return 128;
  if (hd <= 192) return 192;
  return 256;
}

cudaError_t check_params(const VarlenAttnFwdParams& p) {
  if (p.head_dim <= 0 || p.head_dim > 256 || p.head_dim % 8 != 0) return cudaErrorInvalidValue;
  if (p.heads_q <= 0 || p.heads_kv <= 0 || p.heads_q % p.heads_kv != 0 || p.batch < 0) return cudaErrorInvalidValue;
  if (p.max_seqlen_q < 0 || p.max_seqlen_k < 0 || p.total_q < 0 || p.total_k < 0) return cudaErrorInvalidValue;
  // Grid y / z limits (heads on y, sequences on z).
  if (p.heads_q > 65535 || p.batch > 65535) return cudaErrorInvalidConfiguration;
  // 16-byte vector loads / cp.async; contiguous tensors whose first token row is
  // 16-byte aligned always pass (a row is a multiple of 16 bytes).
  if (!is_aligned16(p.q) || !is_aligned16(p.k) || !is_aligned16(p.v) || !is_aligned16(p.out))
    return cudaErrorMisalignedAddress;
  return cudaSuccess;
}

struct WorkspaceLayout {
  size_t dq_accum = 0, lse_log2 = 0, dsum = 0, total = 0;  // byte offsets / size
};

// [dq_accum: total_q*heads_q*head_dim f32, 16-bit dtypes only][lse_log2][dsum], each
// (heads_q, total_q) f32, every piece 256-byte aligned.
WorkspaceLayout workspace_layout(const VarlenAttnBwdParams& p) {
  WorkspaceLayout w;
  const size_t rows = static_cast<size_t>(p.heads_q) * static_cast<size_t>(p.total_q);
  size_t off = 0;
  if (p.dtype != AttnDType::kFloat32) {
    w.dq_accum = off;
    off += align256(rows * static_cast<size_t>(p.head_dim) * sizeof(float));
  }
  w.lse_log2 = off;
  off += align256(rows * sizeof(float));
  w.dsum = off;
  off += align256(rows * sizeof(float));
  w.total = off;
  return w;
}

// One 8-lane group per (token, head) row: D = sum_d dout * out, and lse -> lse*log2(e)
// with -inf (no visible key) -> +inf, so that the main kernels' exp2(s - lse) is 0 there.
template <typename T>
__global__ void __launch_bounds__(256)
    bwd_preprocess_kernel(const T* __restrict__ out, const T* __restrict__ dout, const float* __restrict__ lse,
                          BwdWorkspace ws, int64_t rows, int heads_q, int head_dim, int64_t total_q) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 8) + threadIdx.x / 8;
  const int sub = threadIdx.x % 8;
  float acc = 0.f;
  if (row < rows) {
    const T* o = out + row * head_dim;
    const T* d = dout + row * head_dim;
    for (int c = sub * kVec; c < head_dim; c += 8 * kVec) {
      const uint4 ov = *reinterpret_cast<const uint4*>(o + c);
      const uint4 dv = *reinterpret_cast<const uint4*>(d + c);
      const T* oe = reinterpret_cast<const T*>(&ov);
      const T* de = reinterpret_cast<const T*>(&dv);
#pragma unroll
      for (int i = 0; i < kVec; ++i) acc += TypeOps<T>::to_float(oe[i]) * TypeOps<T>::to_float(de[i]);
    }
  }
  acc += __shfl_xor_sync(0xffffffffu, acc, 4);
  acc += __shfl_xor_sync(0xffffffffu, acc, 2);
  acc += __shfl_xor_sync(0xffffffffu, acc, 1);
  if (row < rows && sub == 0) {
    const int64_t idx = static_cast<int64_t>(row % heads_q) * total_q + row / heads_q;
    const float l = lse[idx];
    ws.dsum[idx] = acc;
    ws.lse_log2[idx] = l == -CUDART_INF_F ? CUDART_INF_F : l * attn::kLog2e;
  }
}

// dq = scale * dq_accum, 8 elements per thread.
template <typename T>
__global__ void __launch_bounds__(256)
    dq_convert_kernel(const float* __restrict__ acc, T* __restrict__ dq, int64_t n8, float scale) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n8;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float4 a = reinterpret_cast<const float4*>(acc)[2 * i];
    const float4 b = reinterpret_cast<const float4*>(acc)[2 * i + 1];
    uint4 o;
    o.x = TypeOps<T>::pack(a.x * scale, a.y * scale);
    o.y = TypeOps<T>::pack(a.z * scale, a.w * scale);
    o.z = TypeOps<T>::pack(b.x * scale, b.y * scale);
    o.w = TypeOps<T>::pack(b.z * scale, b.w * scale);
    reinterpret_cast<uint4*>(dq)[i] = o;
  }
}

template <typename T>
cudaError_t dispatch_fwd(const VarlenAttnFwdParams& p, cudaStream_t stream) {
  switch (head_dim_bucket(p.head_dim)) {
    case 32: return attn::launch_fwd_tc<T, 32>(p, stream);
    case 64: return attn::launch_fwd_tc<T, 64>(p, stream);
    case 96: return attn::launch_fwd_tc<T, 96>(p, stream);
    case 128: return attn::launch_fwd_tc<T, 128>(p, stream);
    case 192: return attn::launch_fwd_tc<T, 192>(p, stream);
    default: return attn::launch_fwd_tc<T, 256>(p, stream);
  }
}

template <typename T>
cudaError_t dispatch_bwd(const VarlenAttnBwdParams& p, const BwdWorkspace& ws, cudaStream_t stream) {
  switch (head_dim_bucket(p.head_dim)) {
    case 32: return attn::launch_bwd_tc<T, 32>(p, ws, stream);
    case 64: return attn::launch_bwd_tc<T, 64>(p, ws, stream);
    case 96: return attn::launch_bwd_tc<T, 96>(p, ws, stream);
    case 128: return attn::launch_bwd_tc<T, 128>(p, ws, stream);
    case 192: return attn::launch_bwd_tc<T, 192>(p, ws, stream);
    default: return attn::launch_bwd_tc<T, 256>(p, ws, stream);
  }
}

// Main kernel, then dq = scale * dq_accum in the input dtype.
template <typename T>
cudaError_t run_bwd_tc(const VarlenAttnBwdParams& p, const BwdWorkspace& ws, int64_t rows, cudaStream_t stream) {
  if (p.max_seqlen_k > 0) {
    // Also runs when total_q == 0: key tiles nobody sees must write dk = dv = 0.
    const cudaError_t err = dispatch_bwd<T>(p, ws, stream);
    if (err != cudaSuccess) return err;
  }
  if (rows > 0) {
    const int64_t n8 = rows * p.head_dim / 8;
    const int64_t blocks = std::min<int64_t>((n8 + 255) / 256, 65535LL * 8);
    dq_convert_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(ws.dq_accum, static_cast<T*>(p.dq), n8,
                                                                             p.scale);
    return cudaGetLastError();
  }
  return cudaSuccess;
}

// dq_accum zeroing and the preprocessing shared by every dtype, then the dtype's path.
template <typename T>
cudaError_t run_bwd(const VarlenAttnBwdParams& p, const BwdWorkspace& ws, cudaStream_t stream) {
  constexpr bool kTensorCore = sizeof(T) == 2;
  const int64_t rows = static_cast<int64_t>(p.heads_q) * p.total_q;
  if (rows > 0) {
    if constexpr (kTensorCore) {
      const cudaError_t err =
          cudaMemsetAsync(ws.dq_accum, 0, static_cast<size_t>(rows) * p.head_dim * sizeof(float), stream);
      if (err != cudaSuccess) return err;
    }
    const int64_t blocks = (rows + 31) / 32;  // 32 rows of 8 lanes per 256-thread block
    bwd_preprocess_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
        static_cast<const T*>(p.out), static_cast<const T*>(p.dout), p.lse, ws, rows, p.heads_q, p.head_dim,
        p.total_q);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  if constexpr (!kTensorCore) {
    return attn::launch_bwd_fp32(p, ws, stream);
  } else {
    return run_bwd_tc<T>(p, ws, rows, stream);
  }
}

}  // namespace

size_t varlen_attn_bwd_workspace_bytes(const VarlenAttnBwdParams& p) { return workspace_layout(p).total; }

cudaError_t varlen_attn_fwd_cuda(const VarlenAttnFwdParams& p, cudaStream_t stream) {
  const cudaError_t err = check_params(p);
  if (err != cudaSuccess) return err;
  if (p.batch == 0 || p.total_q == 0 || p.max_seqlen_q == 0) return cudaSuccess;
  switch (p.dtype) {
    case AttnDType::kBFloat16: return dispatch_fwd<__nv_bfloat16>(p, stream);
    case AttnDType::kFloat16: return dispatch_fwd<__half>(p, stream);
    case AttnDType::kFloat32: return attn::launch_fwd_fp32(p, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t varlen_attn_bwd_cuda(const VarlenAttnBwdParams& p, cudaStream_t stream) {
  cudaError_t err = check_params(p);
  if (err != cudaSuccess) return err;
  if (!is_aligned16(p.dout) || !is_aligned16(p.dq) || !is_aligned16(p.dk) || !is_aligned16(p.dv) ||
      (reinterpret_cast<uintptr_t>(p.workspace) & 255) != 0)
    return cudaErrorMisalignedAddress;
  if (p.batch == 0) return cudaSuccess;
  const WorkspaceLayout w = workspace_layout(p);
  if (w.total > 0 && p.workspace == nullptr) return cudaErrorInvalidValue;
  char* base = static_cast<char*>(p.workspace);
  BwdWorkspace ws;
  if (p.dtype != AttnDType::kFloat32) ws.dq_accum = reinterpret_cast<float*>(base + w.dq_accum);
  ws.lse_log2 = reinterpret_cast<float*>(base + w.lse_log2);
  ws.dsum = reinterpret_cast<float*>(base + w.dsum);
  switch (p.dtype) {
    case AttnDType::kBFloat16: return run_bwd<__nv_bfloat16>(p, ws, stream);
    case AttnDType::kFloat16: return run_bwd<__half>(p, ws, stream);
    case AttnDType::kFloat32: return run_bwd<float>(p, ws, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace real_ext
