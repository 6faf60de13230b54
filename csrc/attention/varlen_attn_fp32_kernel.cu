// Float32 path of packed (varlen) attention on CUDA cores: simple and exact rather than
// fast. One warp per row (a query row forward and for dQ, a key row for dK/dV), lanes
// split the head dim (dims lane + 32*i, i < kPer), keys or queries are taken 4 at a time
// so that the 4 dot-product reductions interleave. Same semantics as the tensor-core
// path: bottom-right causal mask, GQA, rows that see nothing give out = 0, lse = -inf and
// zero gradients. dK/dV loop over the q heads of the GQA group: no atomics anywhere.
#include <math_constants.h>

#include "attention/varlen_attn_mma.cuh"

namespace real_ext {
namespace attn {
namespace {

constexpr int kRowsPerBlock = 4;  // warps per 128-thread block
constexpr int kGroup = 4;         // rows reduced together

struct SeqInfo {
  int q_start, len_q, k_start, len_k;
  __device__ SeqInfo(const VarlenAttnFwdParams& p, int b)
      : q_start(p.cu_seqlens_q[b]),
        len_q(p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b]),
        k_start(p.cu_seqlens_k[b]),
        len_k(p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b]) {}
};

template <int kPer>
__device__ __forceinline__ void load_row(float (&x)[kPer], const float* row, int hd, int lane, float mul) {
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int d = lane + 32 * i;
    x[i] = d < hd ? row[d] * mul : 0.f;
  }
}

template <int kPer>
__device__ __forceinline__ float dot_part(const float (&x)[kPer], const float* row, int hd, int lane) {
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int d = lane + 32 * i;
    if (d < hd) s += x[i] * row[d];
  }
  return s;
}

template <int kPer>
__device__ __forceinline__ void axpy(float (&acc)[kPer], float a, const float* row, int hd, int lane) {
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int d = lane + 32 * i;
    if (d < hd) acc[i] += a * row[d];
  }
}

template <int kPer>
__device__ __forceinline__ void store_row(float* row, const float (&x)[kPer], int hd, int lane, float mul) {
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int d = lane + 32 * i;
    if (d < hd) row[d] = x[i] * mul;
  }
}

template <int kN>
__device__ __forceinline__ void warp_sum_n(float (&x)[kN]) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
#pragma unroll
    for (int u = 0; u < kN; ++u) x[u] += __shfl_xor_sync(0xffffffffu, x[u], o);
}

template <int kPer>
__global__ void fwd_fp32_kernel(const VarlenAttnFwdParams p) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int h = blockIdx.y, b = blockIdx.z;
  const SeqInfo s(p, b);
  const int row = blockIdx.x * kRowsPerBlock + warp;
  if (row >= s.len_q) return;  // warp-uniform
  const int hd = p.head_dim;
  const int hkv = h / (p.heads_q / p.heads_kv);
  const int64_t q_rs = static_cast<int64_t>(p.heads_q) * hd, k_rs = static_cast<int64_t>(p.heads_kv) * hd;
  const float* gK = static_cast<const float*>(p.k) + s.k_start * k_rs + static_cast<int64_t>(hkv) * hd;
  const float* gV = static_cast<const float*>(p.v) + s.k_start * k_rs + static_cast<int64_t>(hkv) * hd;
  const int64_t q_off = (s.q_start + row) * q_rs + static_cast<int64_t>(h) * hd;
  const int kend = p.causal ? min(s.len_k, row + (s.len_k - s.len_q) + 1) : s.len_k;  // keys [0, kend)

  float q[kPer], acc[kPer];
  load_row<kPer>(q, static_cast<const float*>(p.q) + q_off, hd, lane, p.scale * kLog2e);
#pragma unroll
  for (int i = 0; i < kPer; ++i) acc[i] = 0.f;
  float m = -CUDART_INF_F, l = 0.f;  // running max (log2 domain) and sum
  for (int j0 = 0; j0 < kend; j0 += kGroup) {
    float sc[kGroup];
#pragma unroll
    for (int u = 0; u < kGroup; ++u) sc[u] = dot_part<kPer>(q, gK + min(j0 + u, kend - 1) * k_rs, hd, lane);
    warp_sum_n<kGroup>(sc);
    float mn = m;
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      if (j0 + u >= kend) sc[u] = -CUDART_INF_F;
      mn = fmaxf(mn, sc[u]);  // finite: key j0 is visible
    }
    const float corr = exp2f(m - mn);
    l *= corr;
#pragma unroll
    for (int i = 0; i < kPer; ++i) acc[i] *= corr;
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      const float pr = exp2f(sc[u] - mn);
      l += pr;
      axpy<kPer>(acc, pr, gV + min(j0 + u, kend - 1) * k_rs, hd, lane);
    }
    m = mn;
  }
  store_row<kPer>(static_cast<float*>(p.out) + q_off, acc, hd, lane, l > 0.f ? 1.f / l : 0.f);
  if (lane == 0)
    p.lse[static_cast<int64_t>(h) * p.total_q + s.q_start + row] = l > 0.f ? m * kLn2 + logf(l) : -CUDART_INF_F;
}

template <int kPer>
__global__ void bwd_dq_fp32_kernel(const VarlenAttnBwdParams p, const BwdWorkspace ws) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int h = blockIdx.y, b = blockIdx.z;
  const SeqInfo s(p, b);
  const int row = blockIdx.x * kRowsPerBlock + warp;
  if (row >= s.len_q) return;
  const int hd = p.head_dim;
  const int hkv = h / (p.heads_q / p.heads_kv);
  const int64_t q_rs = static_cast<int64_t>(p.heads_q) * hd, k_rs = static_cast<int64_t>(p.heads_kv) * hd;
  const float* gK = static_cast<const float*>(p.k) + s.k_start * k_rs + static_cast<int64_t>(hkv) * hd;
  const float* gV = static_cast<const float*>(p.v) + s.k_start * k_rs + static_cast<int64_t>(hkv) * hd;
  const int64_t q_off = (s.q_start + row) * q_rs + static_cast<int64_t>(h) * hd;
  const int kend = p.causal ? min(s.len_k, row + (s.len_k - s.len_q) + 1) : s.len_k;
  const int64_t idx = static_cast<int64_t>(h) * p.total_q + s.q_start + row;
  const float lse2 = ws.lse_log2[idx], dsum = ws.dsum[idx];  // lse2 = +inf: nothing visible

  float q[kPer], dout[kPer], acc[kPer];
  load_row<kPer>(q, static_cast<const float*>(p.q) + q_off, hd, lane, p.scale * kLog2e);
  load_row<kPer>(dout, static_cast<const float*>(p.dout) + q_off, hd, lane, 1.f);
#pragma unroll
  for (int i = 0; i < kPer; ++i) acc[i] = 0.f;
  for (int j0 = 0; j0 < kend; j0 += kGroup) {
    float red[2 * kGroup];  // scores, then dP
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      const int64_t j = min(j0 + u, kend - 1);
      red[u] = dot_part<kPer>(q, gK + j * k_rs, hd, lane);
      red[kGroup + u] = dot_part<kPer>(dout, gV + j * k_rs, hd, lane);
    }
    warp_sum_n<2 * kGroup>(red);
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      if (j0 + u < kend) {
        const float pr = exp2f(red[u] - lse2);
        axpy<kPer>(acc, pr * (red[kGroup + u] - dsum), gK + (j0 + u) * k_rs, hd, lane);
      }
    }
  }
  store_row<kPer>(static_cast<float*>(p.dq) + q_off, acc, hd, lane, p.scale);
}

template <int kPer>
__global__ void bwd_dkdv_fp32_kernel(const VarlenAttnBwdParams p, const BwdWorkspace ws) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int hkv = blockIdx.y, b = blockIdx.z;
  const SeqInfo s(p, b);
  const int key = blockIdx.x * kRowsPerBlock + warp;
  if (key >= s.len_k) return;
  const int hd = p.head_dim;
  const int group = p.heads_q / p.heads_kv;
  const int64_t q_rs = static_cast<int64_t>(p.heads_q) * hd, k_rs = static_cast<int64_t>(p.heads_kv) * hd;
  const int64_t k_off = (s.k_start + key) * k_rs + static_cast<int64_t>(hkv) * hd;
  const int i_begin = p.causal ? max(0, key - (s.len_k - s.len_q)) : 0;  // first query that sees `key`

  float k[kPer], v[kPer], dk[kPer], dv[kPer];
  load_row<kPer>(k, static_cast<const float*>(p.k) + k_off, hd, lane, p.scale * kLog2e);
  load_row<kPer>(v, static_cast<const float*>(p.v) + k_off, hd, lane, 1.f);
#pragma unroll
  for (int i = 0; i < kPer; ++i) dk[i] = dv[i] = 0.f;
  for (int hg = 0; hg < group; ++hg) {
    const int h = hkv * group + hg;
    const float* gQ = static_cast<const float*>(p.q) + s.q_start * q_rs + static_cast<int64_t>(h) * hd;
    const float* gdO = static_cast<const float*>(p.dout) + s.q_start * q_rs + static_cast<int64_t>(h) * hd;
    const int64_t stat0 = static_cast<int64_t>(h) * p.total_q + s.q_start;
    for (int i0 = i_begin; i0 < s.len_q; i0 += kGroup) {
      float red[2 * kGroup];
#pragma unroll
      for (int u = 0; u < kGroup; ++u) {
        const int64_t i = min(i0 + u, s.len_q - 1);
        red[u] = dot_part<kPer>(k, gQ + i * q_rs, hd, lane);
        red[kGroup + u] = dot_part<kPer>(v, gdO + i * q_rs, hd, lane);
      }
      warp_sum_n<2 * kGroup>(red);
#pragma unroll
      for (int u = 0; u < kGroup; ++u) {
        const int i = i0 + u;
        if (i < s.len_q) {
          const float pr = exp2f(red[u] - ws.lse_log2[stat0 + i]);
          axpy<kPer>(dv, pr, gdO + i * q_rs, hd, lane);
          axpy<kPer>(dk, pr * (red[kGroup + u] - ws.dsum[stat0 + i]), gQ + i * q_rs, hd, lane);
        }
      }
    }
  }
  store_row<kPer>(static_cast<float*>(p.dk) + k_off, dk, hd, lane, p.scale);
  store_row<kPer>(static_cast<float*>(p.dv) + k_off, dv, hd, lane, 1.f);
}

template <template <int> class Launch, typename... Args>
cudaError_t with_per_lane(int hd, Args&&... args) {
  switch ((hd + 31) / 32) {
    case 1: return Launch<1>::run(args...);
    case 2: return Launch<2>::run(args...);
    case 3: return Launch<3>::run(args...);
    case 4: return Launch<4>::run(args...);
    case 5: return Launch<5>::run(args...);
    case 6: return Launch<6>::run(args...);
    case 7: return Launch<7>::run(args...);
    default: return Launch<8>::run(args...);
  }
}

template <int kPer>
struct FwdLaunch {
  static cudaError_t run(const VarlenAttnFwdParams& p, cudaStream_t stream) {
    const dim3 grid(ceil_div(p.max_seqlen_q, kRowsPerBlock), p.heads_q, p.batch);
    fwd_fp32_kernel<kPer><<<grid, 32 * kRowsPerBlock, 0, stream>>>(p);
    return cudaGetLastError();
  }
};

template <int kPer>
struct BwdLaunch {
  static cudaError_t run(const VarlenAttnBwdParams& p, const BwdWorkspace& ws, cudaStream_t stream) {
    if (p.max_seqlen_q > 0) {
      const dim3 grid(ceil_div(p.max_seqlen_q, kRowsPerBlock), p.heads_q, p.batch);
      bwd_dq_fp32_kernel<kPer><<<grid, 32 * kRowsPerBlock, 0, stream>>>(p, ws);
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
    if (p.max_seqlen_k > 0) {
      const dim3 grid(ceil_div(p.max_seqlen_k, kRowsPerBlock), p.heads_kv, p.batch);
      bwd_dkdv_fp32_kernel<kPer><<<grid, 32 * kRowsPerBlock, 0, stream>>>(p, ws);
      return cudaGetLastError();
    }
    return cudaSuccess;
  }
};

}  // namespace

cudaError_t launch_fwd_fp32(const VarlenAttnFwdParams& p, cudaStream_t stream) {
  return with_per_lane<FwdLaunch>(p.head_dim, p, stream);
}

cudaError_t launch_bwd_fp32(const VarlenAttnBwdParams& p, const BwdWorkspace& ws, cudaStream_t stream) {
  return with_per_lane<BwdLaunch>(p.head_dim, p, ws, stream);
}

}  // namespace attn
}  // namespace real_ext
