// Paged decode attention on the CPU: one query per sequence over its cached
// keys. A work item is (sequence, range of kv heads) and handles all the q
// heads of those GQA groups, so every K and V row is read from memory once:
//   pass 1: scores S[i, j] = q_i . k_j (q pre-scaled), token by token, each
//           K vector applied to up to four q rows of its group; a token's
//           lane sums wait in a block of 16 slots per q row, reduced across
//           lanes once per block;
//   pass 2: S[i, :] = softmax(S[i, :]);
//   pass 3: out_i = sum_j S[i, j] v_j, token by token into accumulators in
//           L1 (up to four q rows at a time with AVX-512, two with AVX2:
//           WideBlocks / NarrowBlocks).
// Both passes read a token's rows of all the item's heads before the next
// token's, so the reads run forward through each block of the pool (see
// decode_item_t for why that order).
// Scores live in a per-thread buffer (q rows of the item x seq_len floats).
// Math is float32. A head row is taken in chunks of 32 elements held as two
// 16-float vectors (a, b): for a float32 cache elements 0..15 and 16..31; for
// bfloat16 one 64-byte load split into its even elements (a: the low halves
// shifted up) and odd ones (b: the high halves masked), three instructions
// for 32 values where widening in order takes six. q rows and the output
// accumulators are kept in the same order (permuted once per item), so the
// products need no shuffles. Elements past the last whole chunk (head_dim not
// a multiple of 32) are done one at a time. On CPUs with AVX512-BF16 a
// bfloat16 cache's scores take vdpbf16ps instead (q kept in bfloat16, as it
// comes, and the scale applied to the sums): one instruction per 32 products
// of a q row, nothing widened.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

#include "attention/attn_cpu_rows.h"
#include "common/cpu_math.h"
#include "common/cpu_parallel.h"
#include "common/cpu_vec16.h"
#include "common/cpu_vec8.h"
#include "generation/generation_checks.h"
#include "layers/linear_bf16_dot.h"

namespace real_ext {
namespace {

// One call's sizes and pointers; q and the output have the cache's element
// type T (float or bfloat16 bits), passed apart from the view.
struct DecodeView {
  int64_t q_stride_b, q_stride_h, q_stride_d;  // q: (B, heads_q, D), any strides
  float scale;
  const int32_t* block_tables;
  const int32_t* seq_lens;
  int64_t heads_q, heads_kv, head_dim, max_blocks, block_size;
};

// A token's rows sit anywhere in the pool (blocks are scattered), which the
// hardware prefetchers do not follow, so the head-major passes of the
// vdpbf16ps scores prefetch (into L2) the rows kAhead tokens ahead, in shares
// spread over the kv heads' work, since a burst of misses stalls the core.
constexpr int64_t kAhead = 32;

// The lines of span elements from p (locality: __builtin_prefetch's, 3 = L1).
template <int kLocality, typename T>
REAL_EXT_INLINE void prefetch_span(const T* p, int64_t span) {
  for (int64_t off = 0; off < span * static_cast<int64_t>(sizeof(T)); off += 64)
    __builtin_prefetch(reinterpret_cast<const char*>(p) + off, 0, kLocality);
}

template <typename T>
REAL_EXT_INLINE void prefetch_rows(const T* cache, const int64_t* rows, int64_t first, int64_t last, int64_t span) {
  for (int64_t j = first; j < last; ++j) prefetch_span<2>(cache + rows[j], span);
}

// The token-major passes prefetch (into L1) the rows of the token kNext
// places on: the hardware prefetchers follow the reads within a block, but
// the next block lies anywhere in the pool and they would start over there.
constexpr int64_t kNext = 4;

// Register blocking: with AVX-512 (wide_vectors()) vectors of 16 floats, up
// to 4 q rows at a time; with AVX2, vectors of 8 floats (one ymm each), 2
// rows (a row's 4 accumulators, 4 K or V vectors and a q vector: 13 of its 16
// ymm for 2 rows). vec16 code on AVX2 (two ymm per vector) spilled, and ran
// at ~4 GB/s of cache on a Zen 3. A chunk's (a, b) are the same 32 floats in
// either case, two vec16 or four vec8 (a's halves, then b's).
struct WideBlocks {
  using Vec = vec16;
  static constexpr int kRows = 4;
};
struct NarrowBlocks {
  using Vec = vec8;
  static constexpr int kRows = 2;
};
template <typename Vec>
constexpr int kPerChunk = 32 / kVecLanes<Vec>;  // vectors per chunk

// One chunk of 32 cache elements as kPerChunk vectors: a then b; see the file
// comment.
template <typename Vec>
REAL_EXT_INLINE void load_chunk(const float* p, Vec* out) {
  for (int i = 0; i < kPerChunk<Vec>; ++i) out[i] = load_vec<Vec>(p + kVecLanes<Vec> * i);
}
template <typename Vec>
REAL_EXT_INLINE void load_chunk(const uint16_t* p, Vec* out) {
  using Bits = std::conditional_t<sizeof(Vec) == 64, vec16u, vec8u>;
  constexpr int half = kPerChunk<Vec> / 2;
  for (int h = 0; h < half; ++h) {  // 2 * kVecLanes elements: their even ones (a), odd ones (b)
    Bits bits;
    std::memcpy(&bits, p + 2 * kVecLanes<Vec> * h, sizeof(bits));
    const Bits lo = bits << 16, hi = bits & 0xffff0000u;
    std::memcpy(&out[h], &lo, sizeof(Vec));
    std::memcpy(&out[half + h], &hi, sizeof(Vec));
  }
}

// Lanes 0..15: the lane sums of part[0..15].
REAL_EXT_INLINE vec16 lane_sums(vec16* part) { return sum16x16(part); }
REAL_EXT_INLINE vec16 lane_sums(vec8* part) {
  vec16 out;
  const vec8 lo = sum8x8(part), hi = sum8x8(part + 8);
  std::memcpy(reinterpret_cast<float*>(&out), &lo, sizeof(lo));
  std::memcpy(reinterpret_cast<float*>(&out) + 8, &hi, sizeof(hi));
  return out;
}

// Where element e of a head row sits in chunk order (D32: the elements in
// whole chunks; those past them stay in place).
template <typename T>
constexpr int64_t chunk_pos(int64_t e, int64_t D32) {
  if (e >= D32) return e;
  const int64_t i = e % 32;
  return e - i + (sizeof(T) == 4 ? i : (i % 2) * 16 + i / 2);
}

// s[:n] = softmax(s[:n]) in place.
REAL_EXT_INLINE void softmax_row(float* s, int64_t n) {
  const auto [mx, sum] = exp_row_t(s, n, neg_inf<float>());
  const float inv = 1.f / sum;
  for (int64_t j = 0; j < n; ++j) s[j] *= inv;
}

// Lane sums of M q rows (one kv head) against one token's row k, into
// part[r * 16] (row stride 16 vectors: a 16-token block's slots, reduced
// across lanes once per block by lane_sums). q: the first row, in chunk
// order (row stride D). Each K chunk is loaded (and widened) once for the M
// rows; a row keeps one accumulator per vector of the chunk, so its FMA
// chains are independent.
template <typename Vec, int M, typename T>
REAL_EXT_INLINE void scores_token(const float* q, const T* k, int64_t D, Vec* part) {
  constexpr int P = kPerChunk<Vec>, lanes = kVecLanes<Vec>;
  const int64_t D32 = D / 32 * 32;
  Vec acc[M][P] = {};
  for (int64_t d = 0; d < D32; d += 32) {
    Vec kc[P];
    load_chunk(k + d, kc);
    for (int r = 0; r < M; ++r)
      for (int i = 0; i < P; ++i) acc[r][i] += load_vec<Vec>(q + r * D + d + lanes * i) * kc[i];
  }
  for (int64_t d = D32; d < D; ++d) {
    const float kd = load(k, d);
    for (int r = 0; r < M; ++r) acc[r][0][0] += q[r * D + d] * kd;
  }
  for (int r = 0; r < M; ++r) {
    for (int i = 1; i < P; ++i) acc[r][0] += acc[r][i];
    part[r * 16] = acc[r][0];
  }
}

// acc[r] += p[r * L] v for M q rows (one kv head) and one token's row v, acc
// in chunk order (row stride D). Each V chunk is loaded (and widened) once for
// the M rows; the accumulators go through L1 (a token's rows of every head are
// read before the next token's).
template <typename Vec, int M, typename T>
REAL_EXT_INLINE void accumulate_token(const float* p, int64_t L, const T* v, int64_t D, float* acc) {
  constexpr int P = kPerChunk<Vec>, lanes = kVecLanes<Vec>;
  const int64_t D32 = D / 32 * 32;
  float w[M];
  for (int r = 0; r < M; ++r) w[r] = p[r * L];
  for (int64_t d = 0; d < D32; d += 32) {
    Vec vc[P];
    load_chunk(v + d, vc);
    for (int r = 0; r < M; ++r)
      for (int i = 0; i < P; ++i) {
        float* a = acc + r * D + d + lanes * i;
        store_vec(a, load_vec<Vec>(a) + w[r] * vc[i]);
      }
  }
  for (int64_t e = D32; e < D; ++e) {
    const float ve = load(v, e);
    for (int r = 0; r < M; ++r) acc[r * D + e] += w[r] * ve;
  }
}

// Both over all G q rows of one kv head, B::kRows at a time (then the rest).
template <typename B, typename T>
REAL_EXT_INLINE void scores_token_head(const float* q, const T* k, int64_t D, int64_t G,
                                       typename B::Vec* part) {
  using Vec = typename B::Vec;
  for (int64_t g = 0; g < G; g += B::kRows) {
    const float* qg = q + g * D;
    Vec* pg = part + g * 16;
    switch (std::min<int64_t>(B::kRows, G - g)) {
      case 4: scores_token<Vec, 4>(qg, k, D, pg); break;  // (wide only: min(kRows, ...))
      case 3: scores_token<Vec, 3>(qg, k, D, pg); break;
      case 2: scores_token<Vec, 2>(qg, k, D, pg); break;
      default: scores_token<Vec, 1>(qg, k, D, pg); break;
    }
  }
}

template <typename B, typename T>
REAL_EXT_INLINE void accumulate_token_head(const float* p, int64_t L, const T* v, int64_t D, int64_t G, float* acc) {
  using Vec = typename B::Vec;
  for (int64_t g = 0; g < G; g += B::kRows) {
    const float* pg = p + g * L;
    float* ag = acc + g * D;
    switch (std::min<int64_t>(B::kRows, G - g)) {
      case 4: accumulate_token<Vec, 4>(pg, L, v, D, ag); break;
      case 3: accumulate_token<Vec, 3>(pg, L, v, D, ag); break;
      case 2: accumulate_token<Vec, 2>(pg, L, v, D, ag); break;
      default: accumulate_token<Vec, 1>(pg, L, v, D, ag); break;
    }
  }
}

#if defined(__GNUC__) && defined(__x86_64__)
#define REAL_EXT_DECODE_DOT_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define REAL_EXT_HAS_DECODE_DOT 1

// scores_rows with vdpbf16ps: q rows in bfloat16 (element order, row stride
// D), each lane summing a pair of products; the sums times scale.
template <int M>
REAL_EXT_DECODE_DOT_TARGET REAL_EXT_INLINE void scores_rows_dot(const uint16_t* q, const uint16_t* const* k, int64_t n,
                                                                int64_t D, float scale, float* scores, int64_t L) {
  const int64_t D32 = D / 32 * 32;
  vec16 part[M][16];
  for (int64_t t = 0; t < 16; ++t) {
    __m512 acc[M];
    for (int r = 0; r < M; ++r) acc[r] = _mm512_setzero_ps();
    if (t < n) {
      for (int64_t d = 0; d < D32; d += 32) {
        const __m512bh kd = (__m512bh)_mm512_loadu_si512(k[t] + d);
        for (int r = 0; r < M; ++r)
          acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_loadu_si512(q + r * D + d), kd);
      }
    }
    for (int r = 0; r < M; ++r) std::memcpy(&part[r][t], &acc[r], sizeof(vec16));
    if (t < n)
      for (int64_t d = D32; d < D; ++d)
        for (int r = 0; r < M; ++r) part[r][t][0] += load(q + r * D, d) * load(k[t], d);
  }
  for (int r = 0; r < M; ++r) {
    const vec16 sums = sum16x16(part[r]) * scale;
    for (int64_t t = 0; t < n; ++t) scores[r * L + t] = sums[t];
  }
}

// scores_head with vdpbf16ps. Called, not inlined: code for other CPUs may
// not inline AVX512-BF16 code (one call per 16 tokens and kv head).
REAL_EXT_DECODE_DOT_TARGET void scores_head_dot(const uint16_t* q, const uint16_t* const* k, int64_t n, int64_t D,
                                                int64_t G, float scale, float* scores, int64_t L) {
  for (int64_t g = 0; g < G; g += 4) {
    const uint16_t* qg = q + g * D;
    float* sg = scores + g * L;
    switch (std::min<int64_t>(4, G - g)) {
      case 4: scores_rows_dot<4>(qg, k, n, D, scale, sg, L); break;
      case 3: scores_rows_dot<3>(qg, k, n, D, scale, sg, L); break;
      case 2: scores_rows_dot<2>(qg, k, n, D, scale, sg, L); break;
      default: scores_rows_dot<1>(qg, k, n, D, scale, sg, L); break;
    }
  }
}
#endif

// Floats of decode_item_t's work buffer for nq q rows of a sequence of L
// tokens: the 16 at the end leave room to align the lane sums.
constexpr int64_t decode_work_floats(int64_t nq, int64_t D, int64_t L) { return nq * (2 * D + L + 16 * 16) + 16; }

// Sequence b, kv heads [h0, h0 + nh): the q heads [h0 * G, (h0 + nh) * G).
// work: per-thread floats (q rows and accumulators of the item in chunk
// order, nh * G * seq_len scores, then pass 1's nh * G * 16 vectors of lane
// sums; decode_work_floats); rows: seq_len offsets.
//
// Both passes read the cache token by token, a token's rows of all nh heads
// (one span) before the next token's: the reads then run forward through each
// block, which the hardware prefetchers follow. Reading head by head (each
// head's rows of 16 tokens, 1 KiB apart for 4 kv heads of 64, then the next
// head's) ran at ~4 GB/s from DRAM on one Zen 3 core where a plain read gets
// 11, software prefetch or not; token by token, 64 sequences x 8 layers' pools
// took 2.4 ms per call on 2 threads where head by head took 3.4. The price is
// pass 3's accumulators going through L1: 15-30% slower where the cache sits
// in L2/L3 or a batch of 4 leaves one kv head per item (bench/RESULTS.md).
template <typename B, bool kDot, typename T>
REAL_EXT_INLINE void decode_item_t(const DecodeView& x, const T* q_in, T* out, const T* k_cache, const T* v_cache,
                                   int64_t b, int64_t h0, int64_t nh, float* work, int64_t* rows) {
  using Vec = typename B::Vec;
  const int64_t D = x.head_dim, G = x.heads_q / x.heads_kv, L = x.seq_lens[b], bs = x.block_size;
  const int64_t nq = nh * G, span = nh * D, D32 = D / 32 * 32;  // q rows; cache elements read per token
  float* q = work;
  float* acc = q + nq * D;
  float* scores = acc + nq * D;
  // The item's q rows, scaled, in chunk order (for vdpbf16ps: as they are);
  // its output rows at 0.
  T* q_dot = reinterpret_cast<T*>(q);
  for (int64_t i = 0; i < nq; ++i) {
    const T* src = q_in + b * x.q_stride_b + (h0 * G + i) * x.q_stride_h;
    for (int64_t e = 0; e < D; ++e) {
      if constexpr (kDot)
        q_dot[i * D + e] = src[e * x.q_stride_d];
      else
        q[i * D + chunk_pos<T>(e, D32)] = load(src, e * x.q_stride_d) * x.scale;
    }
  }
  std::fill(acc, acc + nq * D, 0.f);
  // Element offset of token j's first row (slot, h0) in the caches.
  const int32_t* table = x.block_tables + b * x.max_blocks;
  for (int64_t j0 = 0, i = 0; j0 < L; j0 += bs, ++i) {
    const int64_t slot0 = static_cast<int64_t>(table[i]) * bs - j0;
    for (int64_t j = j0; j < std::min(L, j0 + bs); ++j) rows[j] = ((slot0 + j) * x.heads_kv + h0) * D;
  }
  // Pass 1, in blocks of 16 tokens: each token's lane sums into part (16
  // slots per q row), reduced across lanes once per block.
  if constexpr (kDot) {
#ifdef REAL_EXT_HAS_DECODE_DOT
    // vdpbf16ps scores stay head-major (16 tokens of one head, then the next
    // head, prefetching ahead): the order measured on the AVX512-BF16 Xeon
    // this path runs on.
    prefetch_rows(k_cache, rows, 0, std::min(L, kAhead), span);
    for (int64_t j0 = 0; j0 < L; j0 += 16) {
      const int64_t n = std::min<int64_t>(16, L - j0), ahead = j0 + kAhead;
      for (int64_t h = 0; h < nh; ++h) {
        const int64_t u0 = ahead + h * 16 / nh, u1 = std::min(L, ahead + (h + 1) * 16 / nh);
        if (u0 < u1) prefetch_rows(k_cache, rows, u0, u1, span);
        const T* k[16];
        for (int64_t t = 0; t < n; ++t) k[t] = k_cache + rows[j0 + t] + h * D;
        scores_head_dot(q_dot + h * G * D, k, n, D, G, x.scale, scores + h * G * L + j0, L);
      }
    }
#endif
  } else {
    // After the scores, aligned for Vec (decode_all leaves room).
    const uintptr_t end = reinterpret_cast<uintptr_t>(scores + nq * L);
    Vec* part = reinterpret_cast<Vec*>((end + 63) / 64 * 64);
    for (int64_t j0 = 0; j0 < L; j0 += 16) {
      const int64_t n = std::min<int64_t>(16, L - j0);
      for (int64_t t = 0; t < n; ++t) {
        if (j0 + t + kNext < L) prefetch_span<3>(k_cache + rows[j0 + t + kNext], span);
        const T* row = k_cache + rows[j0 + t];
        for (int64_t h = 0; h < nh; ++h) scores_token_head<B>(q + h * G * D, row + h * D, D, G, part + h * G * 16 + t);
      }
      for (int64_t i = 0; i < nq; ++i) {
        for (int64_t t = n; t < 16; ++t) part[i * 16 + t] = Vec{};  // slots past the last token
        const vec16 sums = lane_sums(part + i * 16);
        for (int64_t t = 0; t < n; ++t) scores[i * L + j0 + t] = sums[t];
      }
    }
  }
  // Pass 2.
  for (int64_t i = 0; i < nq; ++i) softmax_row(scores + i * L, L);
  // Pass 3.
  for (int64_t t = 0; t < L; ++t) {
    if (t + kNext < L) prefetch_span<3>(v_cache + rows[t + kNext], span);
    const T* row = v_cache + rows[t];
    for (int64_t h = 0; h < nh; ++h) accumulate_token_head<B>(scores + h * G * L + t, L, row + h * D, D, G, acc + h * G * D);
  }
  // The output rows back in element order, in the output's type.
  T* dst = out + (b * x.heads_q + h0 * G) * D;
  for (int64_t i = 0; i < nq; ++i)
    for (int64_t e = 0; e < D; ++e) store(dst, i * D + e, acc[i * D + chunk_pos<T>(e, D32)]);
}

// wide: wide_vectors(); dot: vdpbf16ps scores (bfloat16 on AVX512-BF16).
REAL_EXT_CPU_CLONES void decode_item(const DecodeView& x, const float* q, float* out, const float* k_cache,
                                     const float* v_cache, int64_t b, int64_t h0, int64_t nh, float* work,
                                     int64_t* rows, bool wide, bool /*dot: bfloat16 only*/) {
  if (wide) return decode_item_t<WideBlocks, false>(x, q, out, k_cache, v_cache, b, h0, nh, work, rows);
  decode_item_t<NarrowBlocks, false>(x, q, out, k_cache, v_cache, b, h0, nh, work, rows);
}
REAL_EXT_CPU_CLONES void decode_item(const DecodeView& x, const uint16_t* q, uint16_t* out, const uint16_t* k_cache,
                                     const uint16_t* v_cache, int64_t b, int64_t h0, int64_t nh, float* work,
                                     int64_t* rows, bool wide, bool dot) {
#ifdef REAL_EXT_HAS_DECODE_DOT
  if (dot) return decode_item_t<WideBlocks, true>(x, q, out, k_cache, v_cache, b, h0, nh, work, rows);
#endif
  if (wide) return decode_item_t<WideBlocks, false>(x, q, out, k_cache, v_cache, b, h0, nh, work, rows);
  decode_item_t<NarrowBlocks, false>(x, q, out, k_cache, v_cache, b, h0, nh, work, rows);
}

// Items (sequence, range of kv heads), longest sequences first, each thread
// taking the next free one. A range is as wide as the thread count allows:
// reading all heads of a token is one contiguous span, which streams from
// memory far better than one head's row every heads_kv * D elements.
template <typename T>
void decode_all(const DecodeView& x, const T* q, T* out, const T* k_cache, const T* v_cache, int64_t batch,
                bool dot) {
  std::vector<int64_t> order(batch);
  for (int64_t b = 0; b < batch; ++b) order[b] = b;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t c) { return x.seq_lens[a] > x.seq_lens[c]; });
  const int64_t threads = at::get_num_threads();
  const int64_t ranges = std::min(x.heads_kv, (4 * threads + batch - 1) / std::max<int64_t>(batch, 1));
  const int64_t per_range = (x.heads_kv + ranges - 1) / ranges;
  const int64_t items_per_seq = (x.heads_kv + per_range - 1) / per_range;
  const int64_t n = batch * items_per_seq, G = x.heads_q / x.heads_kv, D = x.head_dim;
  const bool wide = wide_vectors();
  run_items_dynamic(n, [&](int64_t i) {
    thread_local std::vector<float> work;
    thread_local std::vector<int64_t> rows;
    const int64_t b = order[i / items_per_seq], h0 = (i % items_per_seq) * per_range;
    const int64_t nh = std::min(per_range, x.heads_kv - h0), L = x.seq_lens[b];
    const int64_t need = decode_work_floats(nh * G, D, L);
    if (static_cast<int64_t>(work.size()) < need) work.resize(need);
    if (static_cast<int64_t>(rows.size()) < L) rows.resize(L);
    decode_item(x, q, out, k_cache, v_cache, b, h0, nh, work.data(), rows.data(), wide, dot);
  });
}

at::Tensor decode_attention_cpu(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                const at::Tensor& block_tables, const at::Tensor& seq_lens, int64_t block_size,
                                double scale, bool /*check_ids: reading them costs no device copy here*/) {
  const DecodeAttnShape s = check_decode_attention_args(q, k_cache, v_cache, block_tables, seq_lens, block_size);
  const at::Tensor tables = block_tables.contiguous(), lens = seq_lens.contiguous();
  at::Tensor out = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
  const DecodeView x{q.stride(0),
                     q.stride(1),
                     q.stride(2),
                     static_cast<float>(scale),
                     tables.data_ptr<int32_t>(),
                     lens.data_ptr<int32_t>(),
                     s.heads_q,
                     s.heads_kv,
                     s.head_dim,
                     s.max_blocks,
                     s.block_size};
  if (k_cache.scalar_type() == at::kFloat) {
    decode_all(x, q.data_ptr<float>(), out.data_ptr<float>(), k_cache.data_ptr<float>(), v_cache.data_ptr<float>(),
               s.batch, false);
  } else {
    decode_all(x, reinterpret_cast<const uint16_t*>(q.data_ptr()), reinterpret_cast<uint16_t*>(out.data_ptr()),
               reinterpret_cast<const uint16_t*>(k_cache.data_ptr()),
               reinterpret_cast<const uint16_t*>(v_cache.data_ptr()), s.batch, has_bf16_dot());
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(real_ext, CPU, m) { m.impl("decode_attention", &decode_attention_cpu); }

}  // namespace real_ext
