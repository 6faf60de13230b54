// Fused token sampling on CUDA: one 512-thread block per row, the row re-read
// from global memory (L2) on every pass, nothing sorted.
//   pass 1      max and argmax of z = logits / temperature (banned ids -inf);
//   greedy      + one pass for sum(exp(z - max));
//   top-k/top-p a threshold search on the order-preserving uint32 key of z:
//               each pass sums the weight (1 for top-k, exp(z - max) for top-p)
//               of the tokens at or above 16 candidate keys, so the interval
//               holding the answer shrinks 16-fold per pass (<= 8 passes);
//   draw        one pass of per-thread contiguous chunk masses, a block scan,
//               and the chunk that crosses u * kept walked by its thread.
// Sums use fixed orders (butterfly warp sums, warps in order), so the result is
// deterministic. The keep rule is `key >= threshold`, ties kept, as on the CPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>
#include <climits>

#include "generation/sampling_launch.h"

namespace real_ext {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kSplits = 16;  // candidate keys per search pass
constexpr unsigned kFull = 0xffffffffu;
constexpr uint32_t kLowestFinite = 0x00800000u;  // order_key(-FLT_MAX); order_key(-inf) is one less

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }

// Order-preserving map of float32 to uint32 (NaN aside); -0 maps like +0 so equal values tie.
__device__ __forceinline__ uint32_t order_key(float z) {
  uint32_t b = __float_as_uint(z);
  if (b == 0x80000000u) b = 0u;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

template <typename T>
struct Row {
  const T* x;
  const uint32_t* banned_bits;  // shared-memory bitmap, or nullptr when the row bans nothing
  float temperature;
  int vocab;
  __device__ __forceinline__ float z(int t) const {
    if (banned_bits != nullptr && ((banned_bits[t >> 5] >> (t & 31)) & 1u)) return -INFINITY;
    return __fdiv_rn(to_f(x[t]), temperature);  // IEEE division even under --use_fast_math, as on the CPU
  }
};

struct Shared {
  float red[kWarps * kSplits];
  float tot[kSplits];
  float warp_max[kWarps];
  int warp_arg[kWarps];
  float warp_mass[kWarps];
  int warp_first[kWarps];
  int warp_last[kWarps];
};

// All lanes get the same value: a + b == b + a at every butterfly step.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// Block-wide sums of N <= kSplits values, returned to every thread.
template <int N>
__device__ __forceinline__ void block_sum(float (&v)[N], Shared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    const float s = warp_sum(v[j]);
    if (lane == 0) sh.red[warp * kSplits + j] = s;
  }
  __syncthreads();
  if (threadIdx.x < N) {
    float s = 0.f;
    for (int w = 0; w < kWarps; ++w) s += sh.red[w * kSplits + threadIdx.x];
    sh.tot[threadIdx.x] = s;
  }
  __syncthreads();
#pragma unroll
  for (int j = 0; j < N; ++j) v[j] = sh.tot[j];
}

// The largest key v in [lo, hi] with W(v) >= target, where W(v) sums the
// weight (1, or exp(z - m) when by_mass) of the tokens with key >= v; hi is
// the row's top key. frac > 0: target = frac * W(lo), from the first pass.
// If even W(lo) < target (rounding; top-k above the finite count) it is lo.
template <typename T>
__device__ uint32_t search_key(const Row<T>& row, uint32_t lo, uint32_t hi, float target, double frac, bool by_mass,
                               float m, Shared& sh) {
  bool first = true;
  while (lo < hi) {
    const uint64_t span = static_cast<uint64_t>(hi) - lo + 1;
    uint32_t c[kSplits];
    float w[kSplits];
#pragma unroll
    for (int j = 0; j < kSplits; ++j) {
      c[j] = lo + static_cast<uint32_t>(static_cast<uint64_t>(j) * span / kSplits);  // c[0] = lo
      w[j] = 0.f;
    }
    for (int t = threadIdx.x; t < row.vocab; t += kThreads) {
      const float z = row.z(t);
      const uint32_t k = order_key(z);
      const float wt = by_mass ? __expf(z - m) : 1.f;
#pragma unroll
      for (int j = 0; j < kSplits; ++j) w[j] += k >= c[j] ? wt : 0.f;
    }
    block_sum(w, sh);
    if (first && frac > 0.0) target = static_cast<float>(frac * static_cast<double>(w[0]));
    first = false;
    // W is non-increasing in the key (also as computed: sums of non-negative
    // terms over nested sets), so the answer lies in [c[J], c[J+1]) for the
    // largest J with w[J] >= target; c[kSplits] stands for hi + 1.
    uint32_t new_lo = c[0], new_hi = c[1] - 1;
#pragma unroll
    for (int j = 1; j < kSplits; ++j) {
      if (w[j] >= target) {
        new_lo = c[j];
        new_hi = j + 1 < kSplits ? c[j + 1] - 1 : hi;
      }
    }
    lo = new_lo;
    hi = new_hi;
  }
  return lo;
}

template <typename T>
__device__ __forceinline__ void write_result(const Row<T>& row, int64_t b, int token, float m, float mass,
                                             int64_t* tokens, float* logprobs) {
  tokens[b] = token;
  logprobs[b] = static_cast<float>(static_cast<double>(row.z(token)) - m - log(static_cast<double>(mass)));
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 2) sample_kernel(SampleArgs a) {
  extern __shared__ uint32_t banned_bits[];  // (vocab + 31) / 32 words when n_banned > 0
  __shared__ Shared sh;
  const int b = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int vocab = a.vocab;

  if (b == 0)
    for (int i = tid; i < a.n_banned; i += kThreads)
      if (a.banned[i] < 0 || a.banned[i] >= vocab) atomicMin(a.errors + kSampleErrBanned, i);
  const float u = a.uniform[b];
  if (!a.greedy && tid == 0 && !(u >= 0.f && u < 1.f)) atomicMin(a.errors + kSampleErrUniform, b);
  const bool ban = a.n_banned > 0 && a.suppress[b];
  if (ban) {
    for (int i = tid; i < (vocab + 31) / 32; i += kThreads) banned_bits[i] = 0u;
    __syncthreads();
    for (int i = tid; i < a.n_banned; i += kThreads) {
      const int64_t id = a.banned[i];
      if (id >= 0 && id < vocab) atomicOr(banned_bits + (id >> 5), 1u << (id & 31));
    }
    __syncthreads();
  }
  const Row<T> row{static_cast<const T*>(a.logits) + static_cast<int64_t>(b) * vocab, ban ? banned_bits : nullptr,
                   a.temperature, vocab};

  // Max and argmax (lowest index among ties): a thread sees its tokens in
  // increasing order and keeps the first; merges prefer the lower index.
  float m = -INFINITY;
  int arg = INT_MAX;
  for (int t = tid; t < vocab; t += kThreads) {
    const float z = row.z(t);
    if (z > m) {
      m = z;
      arg = t;
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float om = __shfl_xor_sync(kFull, m, o);
    const int oa = __shfl_xor_sync(kFull, arg, o);
    if (om > m || (om == m && oa < arg)) {
      m = om;
      arg = oa;
    }
  }
  if (lane == 0) {
    sh.warp_max[warp] = m;
    sh.warp_arg[warp] = arg;
  }
  __syncthreads();
  m = sh.warp_max[0];
  arg = sh.warp_arg[0];
  for (int w = 1; w < kWarps; ++w) {
    if (sh.warp_max[w] > m || (sh.warp_max[w] == m && sh.warp_arg[w] < arg)) {
      m = sh.warp_max[w];
      arg = sh.warp_arg[w];
    }
  }
  if (!(m > -INFINITY && m < INFINITY)) {  // block-uniform: every thread merged the same values
    if (tid == 0) {
      a.tokens[b] = -1;
      a.logprobs[b] = __int_as_float(0x7fc00000);  // NaN
      atomicMin(a.errors + kSampleErrRow, b);
    }
    return;
  }

  if (a.greedy) {
    float s[1] = {0.f};
    for (int t = tid; t < vocab; t += kThreads) s[0] += __expf(row.z(t) - m);
    block_sum(s, sh);
    if (tid == 0) write_result(row, b, arg, m, s[0], a.tokens, a.logprobs);
    return;
  }

  // Keep set K = {key >= thr}; kLowestFinite keeps every finite token.
  const uint32_t top = order_key(m);
  uint32_t thr = kLowestFinite;
  if (a.top_k == 1) {
    thr = top;
  } else if (a.top_k > 1 && a.top_k < vocab) {
    thr = search_key(row, kLowestFinite, top, static_cast<float>(a.top_k), 0.0, false, m, sh);
  }
  if (a.top_p < 1.0) thr = search_key(row, thr, top, 0.f, a.top_p, true, m, sh);

  // Draw: thread tid owns the contiguous tokens [c0, c1).
  const int chunk = (vocab + kThreads - 1) / kThreads;
  const int c0 = min(vocab, tid * chunk), c1 = min(vocab, c0 + chunk);
  float mass = 0.f;
  int last = -1;  // last kept token with nonzero mass
  for (int t = c0; t < c1; ++t) {
    const float z = row.z(t);
    if (order_key(z) >= thr) {
      const float e = __expf(z - m);
      if (e > 0.f) {
        mass += e;
        last = t;
      }
    }
  }
  float incl = mass;  // warp inclusive scan
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const float y = __shfl_up_sync(kFull, incl, o);
    if (lane >= o) incl += y;
  }
  float excl = __shfl_up_sync(kFull, incl, 1);
  if (lane == 0) excl = 0.f;
  if (lane == 31) sh.warp_mass[warp] = incl;
  __syncthreads();
  float kept = 0.f, offset = 0.f;  // the same serial order in every thread
  for (int w = 0; w < kWarps; ++w) {
    if (w == warp) offset = kept;
    kept += sh.warp_mass[w];
  }
  const float target = u * kept;
  // The first chunk whose inclusive CDF passes the target, and the row's last kept token.
  int first = mass > 0.f && offset + incl > target ? tid : INT_MAX;
  int row_last = last;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    first = min(first, __shfl_xor_sync(kFull, first, o));
    row_last = max(row_last, __shfl_xor_sync(kFull, row_last, o));
  }
  if (lane == 0) {
    sh.warp_first[warp] = first;
    sh.warp_last[warp] = row_last;
  }
  __syncthreads();
  for (int w = 0; w < kWarps; ++w) {
    first = min(first, sh.warp_first[w]);
    row_last = max(row_last, sh.warp_last[w]);
  }
  if (first == INT_MAX) {  // rounding left u * kept at or past the end: the last token of K
    if (tid == 0) write_result(row, b, row_last, m, kept, a.tokens, a.logprobs);
    return;
  }
  if (tid == first) {
    float cum = offset + excl;
    int token = last;  // if rounding keeps cum <= target to the chunk's end
    for (int t = c0; t < c1; ++t) {
      const float z = row.z(t);
      if (order_key(z) < thr) continue;
      const float e = __expf(z - m);
      if (e <= 0.f) continue;
      cum += e;
      if (cum > target) {
        token = t;
        break;
      }
    }
    write_result(row, b, token, m, kept, a.tokens, a.logprobs);
  }
}

template <typename T>
cudaError_t launch(const SampleArgs& a, cudaStream_t stream) {
  const int64_t smem = sample_tokens_smem_bytes(a.vocab, a.n_banned);
  if (smem > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(sample_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  sample_kernel<T><<<a.batch, kThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t sample_tokens_cuda_launch(const SampleArgs& args, cudaStream_t stream) {
  if (args.batch == 0) return cudaSuccess;
  switch (args.dtype) {
    case SampleDType::kBFloat16: return launch<__nv_bfloat16>(args, stream);
    case SampleDType::kFloat16: return launch<__half>(args, stream);
    default: return launch<float>(args, stream);
  }
}

}  // namespace real_ext
