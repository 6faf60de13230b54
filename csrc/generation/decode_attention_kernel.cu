// Paged decode attention on CUDA (one query per sequence, GQA, float32 math).
//
// One block of 4 warps per (sequence, kv head, group of up to kG q heads of
// that kv head, split of the keys); each K and V row of the split is read
// from memory once, for all the block's q heads. A token is handled by a
// group of gs = pow2ceil(head_dim / 8) lanes, each lane owning 8 elements of
// the row (one 16-byte word of bf16/fp16, two of fp32), so a warp works on
// 32 / gs tokens at a time. The keys are walked in tiles of kTile:
//   1. scores: each lane group dots its token's K row with the q rows (held
//      in registers, pre-scaled by scale * log2(e)), sums over its lanes with
//      shuffles and writes the scores to shared memory;
//   2. online softmax: one warp per q head takes the tile's max, turns the
//      scores into exp2(s - max) and updates the running max and sum;
//   3. each lane rescales its accumulators and adds p * v for its tokens.
// At the end the per-token-group accumulators are summed (shuffles within a
// warp, then warp by warp through shared memory) and divided by the sum.
// With several splits each block writes its normalized output and (max, sum)
// to a float32 workspace, and a second kernel merges the splits.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "generation/decode_attention_launch.h"

namespace real_ext {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 256;  // keys per tile; their scores sit in shared memory
constexpr int kMaxHeadDim = 256;
constexpr int kLaneElems = 8;  // row elements per lane (kMaxHeadDim / 32)
constexpr int kMaxSplits = 64;
constexpr float kLog2e = 1.4426950408889634f;
constexpr unsigned kFullMask = 0xffffffffu;

// A 16-byte word of T, widened to float.
template <typename T>
struct Word;
template <>
struct Word<float> {
  static constexpr int kElems = 4;
  __device__ static void widen(const uint4& w, float* f) {
    f[0] = __uint_as_float(w.x);
    f[1] = __uint_as_float(w.y);
    f[2] = __uint_as_float(w.z);
    f[3] = __uint_as_float(w.w);
  }
};
template <>
struct Word<__nv_bfloat16> {
  static constexpr int kElems = 8;
  // bfloat16 is the high half of a float32; element 2i is the low half of u[i].
  __device__ static void widen(const uint4& w, float* f) {
    const uint32_t u[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      f[2 * i] = __uint_as_float(u[i] << 16);
      f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
    }
  }
};
template <>
struct Word<__half> {
  static constexpr int kElems = 8;
  __device__ static void widen(const uint4& w, float* f) {
    const __half2* h = reinterpret_cast<const __half2*>(&w);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 x = __half22float2(h[i]);
      f[2 * i] = x.x;
      f[2 * i + 1] = x.y;
    }
  }
};

__device__ __forceinline__ float from_float(float x, float) { return x; }
__device__ __forceinline__ __nv_bfloat16 from_float(float x, __nv_bfloat16) { return __float2bfloat16_rn(x); }
__device__ __forceinline__ __half from_float(float x, __half) { return __float2half_rn(x); }

// Lanes per token: the power of two >= head_dim / 8 (1..32).
__host__ __device__ __forceinline__ int group_lanes(int head_dim) {
  int gs = 1;
  while (gs * kLaneElems < head_dim) gs *= 2;
  return gs;
}

// q heads per block: min(G, 8) rounded up to a power of two.
int heads_per_block(int group) { return group <= 1 ? 1 : group <= 2 ? 2 : group <= 4 ? 4 : 8; }

// This lane's 8 elements of a row (zeros past the row's end): words
// lig + w * gs for w < 8 / E.
template <typename T>
__device__ __forceinline__ void load_lane(const T* __restrict__ row, int lig, int gs, int row_words, float* f) {
  constexpr int E = Word<T>::kElems;
#pragma unroll
  for (int w = 0; w < kLaneElems / E; ++w) {
    const int c = lig + w * gs;
    if (c < row_words) {
      Word<T>::widen(__ldg(reinterpret_cast<const uint4*>(row + c * E)), f + w * E);
    } else {
#pragma unroll
      for (int e = 0; e < E; ++e) f[w * E + e] = 0.f;
    }
  }
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, off));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) x += __shfl_xor_sync(kFullMask, x, off);
  return x;
}

// Where a block works: its sequence, kv head, q heads and keys.
struct BlockWork {
  int b, kvh, h_first, heads, begin, end;
};

__device__ __forceinline__ BlockWork block_work(const DecodeAttnParams& p, int kG) {
  const int group = p.heads_q / p.heads_kv;
  const int chunks = (group + kG - 1) / kG;
  const int chunk = static_cast<int>(blockIdx.x % chunks);
  BlockWork w;
  w.kvh = static_cast<int>((blockIdx.x / chunks) % p.heads_kv);
  w.b = static_cast<int>(blockIdx.x / (chunks * p.heads_kv));
  w.h_first = w.kvh * group + chunk * kG;
  w.heads = min(kG, group - chunk * kG);
  const int len = min(p.seq_lens[w.b], p.max_blocks * p.block_size);  // never read past the table
  w.begin = blockIdx.y * p.split_tokens;
  w.end = min(len, w.begin + p.split_tokens);
  return w;
}

template <typename T, int kG>
__global__ void __launch_bounds__(kThreads) decode_attention_kernel(const DecodeAttnParams p) {
  constexpr int E = Word<T>::kElems;
  __shared__ float s_p[kG][kTile];  // scores, then probabilities, of the tile
  __shared__ float s_out[kG][kMaxHeadDim];
  __shared__ float s_max[kG], s_sum[kG], s_alpha[kG];

  const BlockWork work = block_work(p, kG);
  const int D = p.head_dim, row_words = D / E, gs = group_lanes(D);
  const int lig = threadIdx.x % gs, grp = threadIdx.x / gs, groups = kThreads / gs;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const T* k_cache = static_cast<const T*>(p.k_cache);
  const T* v_cache = static_cast<const T*>(p.v_cache);
  const int32_t* table = p.block_tables + static_cast<int64_t>(work.b) * p.max_blocks;
  const int64_t slot_stride = static_cast<int64_t>(p.heads_kv) * D, head_offset = static_cast<int64_t>(work.kvh) * D;
  // Element offset of token j's row (this kv head) in the caches.
  const auto row_of = [&](int j) {
    const int64_t slot = static_cast<int64_t>(table[j / p.block_size]) * p.block_size + j % p.block_size;
    return slot * slot_stride + head_offset;
  };

  float q[kG][kLaneElems];
  const T* q_rows = static_cast<const T*>(p.q) + (static_cast<int64_t>(work.b) * p.heads_q + work.h_first) * D;
  const float q_scale = p.scale * kLog2e;
#pragma unroll
  for (int g = 0; g < kG; ++g) {
    load_lane(q_rows + g * D, lig, gs, g < work.heads ? row_words : 0, q[g]);
#pragma unroll
    for (int r = 0; r < kLaneElems; ++r) q[g][r] *= q_scale;
  }
  float acc[kG][kLaneElems];
#pragma unroll
  for (int g = 0; g < kG; ++g)
#pragma unroll
    for (int r = 0; r < kLaneElems; ++r) acc[g][r] = 0.f;
  if (threadIdx.x < kG) {
    s_max[threadIdx.x] = -INFINITY;
    s_sum[threadIdx.x] = 0.f;
  }
  __syncthreads();

  for (int t0 = work.begin; t0 < work.end; t0 += kTile) {
    const int n = min(kTile, work.end - t0);
    // 1. Scores, two tokens per lane group per step (more loads in flight).
    //    The loop bounds are uniform over the block: every lane reaches the shuffles.
    for (int base = grp; base - grp < n; base += 2 * groups) {
      float kf[2][kLaneElems];
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        const int t = base + u * groups;
        load_lane(k_cache + (t < n ? row_of(t0 + t) : 0), lig, gs, t < n ? row_words : 0, kf[u]);
      }
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        const int t = base + u * groups;
#pragma unroll
        for (int g = 0; g < kG; ++g) {
          float s = 0.f;
#pragma unroll
          for (int r = 0; r < kLaneElems; ++r) s += q[g][r] * kf[u][r];
          for (int off = gs / 2; off > 0; off /= 2) s += __shfl_xor_sync(kFullMask, s, off);
          if (lig == 0 && t < n && g < work.heads) s_p[g][t] = s;
        }
      }
    }
    __syncthreads();
    // 2. Online softmax, one warp per q head.
    for (int g = warp; g < work.heads; g += kWarps) {
      float mx = -INFINITY;
      for (int t = lane; t < n; t += 32) mx = fmaxf(mx, s_p[g][t]);
      mx = warp_max(mx);
      const float m_old = s_max[g], m_new = fmaxf(m_old, mx);
      float sum = 0.f;
      for (int t = lane; t < n; t += 32) {
        const float e = exp2f(s_p[g][t] - m_new);
        s_p[g][t] = e;
        sum += e;
      }
      sum = warp_sum(sum);
      if (lane == 0) {
        const float alpha = m_old == -INFINITY ? 0.f : exp2f(m_old - m_new);
        s_alpha[g] = alpha;
        s_sum[g] = s_sum[g] * alpha + sum;
        s_max[g] = m_new;
      }
    }
    __syncthreads();
    // 3. acc = alpha * acc + sum_t p_t v_t over this group's tokens.
#pragma unroll
    for (int g = 0; g < kG; ++g) {
      const float alpha = g < work.heads ? s_alpha[g] : 0.f;
#pragma unroll
      for (int r = 0; r < kLaneElems; ++r) acc[g][r] *= alpha;
    }
    for (int base = grp; base < n; base += 2 * groups) {
      float vf[2][kLaneElems];
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        const int t = base + u * groups;
        load_lane(v_cache + (t < n ? row_of(t0 + t) : 0), lig, gs, t < n ? row_words : 0, vf[u]);
      }
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        const int t = base + u * groups;
        if (t >= n) continue;
#pragma unroll
        for (int g = 0; g < kG; ++g) {
          const float pr = g < work.heads ? s_p[g][t] : 0.f;
#pragma unroll
          for (int r = 0; r < kLaneElems; ++r) acc[g][r] += pr * vf[u][r];
        }
      }
    }
    __syncthreads();  // s_p is rewritten by the next tile
  }

  // Sum the token groups: the groups of a warp by shuffles, then warp by warp.
#pragma unroll
  for (int g = 0; g < kG; ++g)
#pragma unroll
    for (int r = 0; r < kLaneElems; ++r)
      for (int off = gs; off < 32; off *= 2) acc[g][r] += __shfl_xor_sync(kFullMask, acc[g][r], off);
  for (int w = 0; w < kWarps; ++w) {
    if (warp == w && lane < gs) {
#pragma unroll
      for (int g = 0; g < kG; ++g) {
        if (g >= work.heads) break;
#pragma unroll
        for (int wd = 0; wd < kLaneElems / E; ++wd) {
          const int c = lane + wd * gs;
          if (c >= row_words) continue;
#pragma unroll
          for (int e = 0; e < E; ++e) {
            float& o = s_out[g][c * E + e];
            o = (w == 0 ? 0.f : o) + acc[g][wd * E + e];
          }
        }
      }
    }
    __syncthreads();
  }

  if (p.num_splits == 1) {
    T* out = static_cast<T*>(p.out) + (static_cast<int64_t>(work.b) * p.heads_q + work.h_first) * D;
    for (int i = threadIdx.x; i < work.heads * D; i += kThreads)
      out[i] = from_float(s_out[i / D][i % D] / s_sum[i / D], T());
  } else {
    // A split with no keys (past a short sequence's end) has sum 0: output 0, weight 0.
    const int64_t row0 = (static_cast<int64_t>(blockIdx.y) * p.batch + work.b) * p.heads_q + work.h_first;
    float* out = p.partial_out + row0 * D;
    for (int i = threadIdx.x; i < work.heads * D; i += kThreads) {
      const float l = s_sum[i / D];
      out[i] = l > 0.f ? s_out[i / D][i % D] / l : 0.f;
    }
    if (threadIdx.x < work.heads) {
      p.partial_stats[(row0 + threadIdx.x) * 2] = s_max[threadIdx.x];
      p.partial_stats[(row0 + threadIdx.x) * 2 + 1] = s_sum[threadIdx.x];
    }
  }
}

// Merges the splits of one (sequence, q head): out = sum_s w_s o_s with
// w_s proportional to sum_s * 2^(max_s - max).
template <typename T>
__global__ void __launch_bounds__(kThreads) decode_combine_kernel(const DecodeAttnParams p) {
  __shared__ float s_weight[kMaxSplits];
  const int64_t row = blockIdx.x, rows = static_cast<int64_t>(p.batch) * p.heads_q;
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    float mx = -INFINITY;
    for (int s = lane; s < p.num_splits; s += 32) {
      const float* st = p.partial_stats + (s * rows + row) * 2;
      if (st[1] > 0.f) mx = fmaxf(mx, st[0]);
    }
    mx = warp_max(mx);
    float total = 0.f;
    for (int s = lane; s < p.num_splits; s += 32) {
      const float* st = p.partial_stats + (s * rows + row) * 2;
      const float w = st[1] > 0.f ? st[1] * exp2f(st[0] - mx) : 0.f;
      s_weight[s] = w;
      total += w;
    }
    total = warp_sum(total);
    for (int s = lane; s < p.num_splits; s += 32) s_weight[s] /= total;
  }
  __syncthreads();
  T* out = static_cast<T*>(p.out) + row * p.head_dim;
  for (int d = threadIdx.x; d < p.head_dim; d += kThreads) {
    float acc = 0.f;
    for (int s = 0; s < p.num_splits; ++s) acc += s_weight[s] * p.partial_out[(s * rows + row) * p.head_dim + d];
    out[d] = from_float(acc, T());
  }
}

template <typename T, int kG>
cudaError_t launch(const DecodeAttnParams& p, cudaStream_t stream) {
  const int group = p.heads_q / p.heads_kv;
  const int64_t blocks = static_cast<int64_t>(p.batch) * p.heads_kv * ((group + kG - 1) / kG);
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  decode_attention_kernel<T, kG>
      <<<dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(p.num_splits)), kThreads, 0, stream>>>(p);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || p.num_splits == 1) return err;
  const int64_t rows = static_cast<int64_t>(p.batch) * p.heads_q;
  if (rows > 0x7fffffff) return cudaErrorInvalidConfiguration;
  decode_combine_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_for_group(const DecodeAttnParams& p, cudaStream_t stream) {
  switch (heads_per_block(p.heads_q / p.heads_kv)) {
    case 1: return launch<T, 1>(p, stream);
    case 2: return launch<T, 2>(p, stream);
    case 4: return launch<T, 4>(p, stream);
    default: return launch<T, 8>(p, stream);
  }
}

}  // namespace

DecodeSplit decode_attention_split(int batch, int heads_q, int heads_kv, int64_t max_seq_len, int num_sms) {
  const int group = heads_q / heads_kv, per_block = heads_per_block(group);
  const int64_t blocks = static_cast<int64_t>(batch) * heads_kv * ((group + per_block - 1) / per_block);
  const int64_t wanted = 2 * static_cast<int64_t>(num_sms);  // blocks to keep every SM busy
  int64_t splits = 1;
  if (blocks > 0 && blocks < wanted) {
    // At least two tiles of keys per split, at most kMaxSplits splits.
    const int64_t by_length = (max_seq_len + 2 * kTile - 1) / (2 * kTile);
    splits = (wanted + blocks - 1) / blocks;
    splits = splits < by_length ? splits : by_length;
    splits = splits < kMaxSplits ? splits : kMaxSplits;
    splits = splits > 1 ? splits : 1;
  }
  int64_t split_tokens = (max_seq_len + splits - 1) / splits;
  split_tokens = (split_tokens + kTile - 1) / kTile * kTile;
  if (split_tokens < kTile) split_tokens = kTile;
  splits = (max_seq_len + split_tokens - 1) / split_tokens;
  return {static_cast<int>(splits > 1 ? splits : 1), static_cast<int>(split_tokens)};
}

cudaError_t decode_attention_cuda(const DecodeAttnParams& p, cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  if (p.head_dim < 8 || p.head_dim > kMaxHeadDim || p.head_dim % 8 != 0 || p.heads_kv < 1 ||
      p.heads_q % p.heads_kv != 0 || p.block_size < 1 || p.num_splits < 1 || p.num_splits > kMaxSplits ||
      p.split_tokens < 1)
    return cudaErrorInvalidValue;
  switch (p.dtype) {
    case DecodeDType::kBFloat16: return launch_for_group<__nv_bfloat16>(p, stream);
    case DecodeDType::kFloat16: return launch_for_group<__half>(p, stream);
    default: return launch_for_group<float>(p, stream);
  }
}

}  // namespace real_ext
