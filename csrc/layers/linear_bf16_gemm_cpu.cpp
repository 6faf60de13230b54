// The AVX512-BF16 product of linear_bf16_dot.h for batches of rows (a decode
// step of many sequences): 32 weight rows at a time are interleaved into a
// per-thread panel of k-pairs (the operand layout vdpbf16ps wants: 16 outputs
// x 2 k per register), then every row of x is applied to the panel, 8 rows x
// 32 outputs of float32 accumulators at a time, each x pair broadcast once per
// 32 outputs. The panel is rebuilt on every call (one pass over the weights,
// which any kernel reads once), so no packed copy outlives the call and
// in-place weight updates need no bookkeeping.
#include <algorithm>
#include <cstring>
#include <vector>

#include "common/cpu_math.h"
#include "common/cpu_vec16.h"
#include "layers/linear_bf16_dot.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>

namespace real_ext {
namespace {

#define REAL_EXT_BF16_GEMM __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

constexpr int64_t kCols = 32;  // outputs per panel: two registers of 16

// Words (c0..c0+15) of k-pairs kp0..kp0+15 from 16 weight rows: a 16 x 16
// transpose of 32-bit words in registers (unpack 32 / 64-bit, then 128-bit
// lane shuffles twice), 4 shuffles per 16 words where a scalar copy takes a
// load and a store per word. r[i]: row c0 + i's 16 words; on return r[j]:
// pair kp0 + j's 16 columns.
REAL_EXT_BF16_GEMM REAL_EXT_INLINE void transpose16x16(__m512i* r) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 16; i += 8)
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0x88);
      t[i + j + 4] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0xdd);
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0xdd);
  }
}

// panel[kp * 32 + c] = (W[c, 2 kp], W[c, 2 kp + 1]) as one 32-bit word, for the
// nc <= 32 weight rows from W; zero for c >= nc. 16 x 16 word blocks go
// through transpose16x16; pairs past the last whole block one word at a time.
// (AVX-512 gathers per 16 columns and k-pair were 5-15% slower than a scalar
// copy on this Zen 4.)
REAL_EXT_BF16_GEMM void build_panel(const uint16_t* W, int64_t ldw, int64_t nc, int64_t pairs, uint32_t* panel) {
  const int64_t whole = pairs / 16 * 16;
  for (int64_t c0 = 0; c0 < kCols; c0 += 16)
    for (int64_t kp0 = 0; kp0 < whole; kp0 += 16) {
      __m512i r[16];
      for (int64_t i = 0; i < 16; ++i)
        r[i] = c0 + i < nc ? _mm512_loadu_si512(W + (c0 + i) * ldw + 2 * kp0) : _mm512_setzero_si512();
      transpose16x16(r);
      for (int64_t j = 0; j < 16; ++j) _mm512_storeu_si512(panel + (kp0 + j) * kCols + c0, r[j]);
    }
  for (int64_t c = 0; c < kCols; ++c)
    for (int64_t kp = whole; kp < pairs; ++kp) {
      uint32_t word = 0;
      if (c < nc) std::memcpy(&word, W + c * ldw + 2 * kp, sizeof(word));
      panel[kp * kCols + c] = word;
    }
}

// C[0:MB, 0:32] (+)= x[0:MB, 2 p0 : 2 p1] W_panel^T for MB rows of x (row
// stride ldx, already offset to the chunk), C float32 with row stride 32.
template <int MB>
REAL_EXT_BF16_GEMM REAL_EXT_INLINE void rows_times_panel(const uint16_t* x, int64_t ldx, int64_t pairs,
                                                         const uint32_t* panel, bool first, float* C) {
  __m512 acc[MB][2];
  for (int r = 0; r < MB; ++r)
    for (int h = 0; h < 2; ++h) acc[r][h] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(C + r * kCols + 16 * h);
  for (int64_t kp = 0; kp < pairs; ++kp) {
    const __m512bh w0 = (__m512bh)_mm512_loadu_si512(panel + kp * kCols);
    const __m512bh w1 = (__m512bh)_mm512_loadu_si512(panel + kp * kCols + 16);
    for (int r = 0; r < MB; ++r) {
      uint32_t word;
      std::memcpy(&word, x + r * ldx + 2 * kp, sizeof(word));
      const __m512bh xb = (__m512bh)_mm512_set1_epi32(static_cast<int>(word));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], xb, w0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], xb, w1);
    }
  }
  for (int r = 0; r < MB; ++r)
    for (int h = 0; h < 2; ++h) _mm512_storeu_ps(C + r * kCols + 16 * h, acc[r][h]);
}

// y[r, 0:nc] = C[r, 0:nc] + bias, rounded as every other bfloat16 store here
// (store16: nearest even, subnormals kept).
REAL_EXT_BF16_GEMM void store_rows(const float* C, int64_t M, const float* bias, int64_t nc, uint16_t* y,
                                   int64_t ldy) {
  for (int64_t r = 0; r < M; ++r) {
    uint16_t buf[kCols];
    store16(buf, load16(C + r * kCols) + load16(bias));
    store16(buf + 16, load16(C + r * kCols + 16) + load16(bias + 16));
    std::memcpy(y + r * ldy, buf, nc * sizeof(uint16_t));
  }
}

// Pairs per panel chunk: 16 KB of panel, which stays in L1 next to x's rows
// while every row block runs over it.
constexpr int64_t kChunkPairs = 128;

// Issues prefetches (into L2) for nc weight rows from W, pairs [p0, p1): the
// next chunk's rows are 32 short runs, too short for the hardware prefetcher.
REAL_EXT_INLINE void prefetch_chunk(const uint16_t* W, int64_t ldw, int64_t nc, int64_t p0, int64_t p1) {
  for (int64_t c = 0; c < nc; ++c) {
    const char* row = reinterpret_cast<const char*>(W + c * ldw + 2 * p0);
    for (int64_t off = 0; off < 4 * (p1 - p0); off += 64) __builtin_prefetch(row + off, 0, 1);
  }
}

REAL_EXT_BF16_GEMM void all_panels(int64_t M, const uint16_t* x, int64_t ldx, int64_t K, const uint16_t* W,
                                   int64_t ldw, const uint16_t* bias, uint16_t* y, int64_t ldy, int64_t n0,
                                   int64_t n1) {
  const int64_t pairs = K / 2;
  thread_local std::vector<uint32_t> panel;
  thread_local std::vector<float> sums;
  panel.resize(std::min(pairs, kChunkPairs) * kCols);
  sums.resize(M * kCols);
  for (int64_t n = n0; n < n1; n += kCols) {
    const int64_t nc = std::min(kCols, n1 - n);
    for (int64_t p0 = 0; p0 < pairs; p0 += kChunkPairs) {
      const int64_t p1 = std::min(pairs, p0 + kChunkPairs);
      build_panel(W + n * ldw + 2 * p0, ldw, nc, p1 - p0, panel.data());
      if (p1 < pairs)
        prefetch_chunk(W + n * ldw, ldw, nc, p1, std::min(pairs, p1 + kChunkPairs));
      else if (n + kCols < n1)
        prefetch_chunk(W + (n + kCols) * ldw, ldw, std::min(kCols, n1 - n - kCols), 0, std::min(pairs, kChunkPairs));
      for (int64_t m0 = 0; m0 < M; m0 += 8) {
        const uint16_t* xb = x + m0 * ldx + 2 * p0;
        float* cb = sums.data() + m0 * kCols;
        const bool first = p0 == 0;
        switch (std::min<int64_t>(8, M - m0)) {
          case 1: rows_times_panel<1>(xb, ldx, p1 - p0, panel.data(), first, cb); break;
          case 2: rows_times_panel<2>(xb, ldx, p1 - p0, panel.data(), first, cb); break;
          case 3: rows_times_panel<3>(xb, ldx, p1 - p0, panel.data(), first, cb); break;
          case 4: rows_times_panel<4>(xb, ldx, p1 - p0, panel.data(), first, cb); break;
          case 5: rows_times_panel<5>(xb, ldx, p1 - p0, panel.data(), first, cb); break;
          case 6: rows_times_panel<6>(xb, ldx, p1 - p0, panel.data(), first, cb); break;
          case 7: rows_times_panel<7>(xb, ldx, p1 - p0, panel.data(), first, cb); break;
          default: rows_times_panel<8>(xb, ldx, p1 - p0, panel.data(), first, cb); break;
        }
      }
    }
    float b[kCols] = {};
    for (int64_t c = 0; c < nc && bias != nullptr; ++c) b[c] = bf16_bits_to_float(bias[n + c]);
    store_rows(sums.data(), M, b, nc, y + n, ldy);
  }
}

}  // namespace

void linear_bf16_gemm(int64_t M, const uint16_t* x, int64_t ldx, int64_t K, const uint16_t* W, int64_t ldw,
                      const uint16_t* bias, uint16_t* y, int64_t ldy, int64_t n0, int64_t n1) {
  all_panels(M, x, ldx, K, W, ldw, bias, y, ldy, n0, n1);
}

}  // namespace real_ext

#else  // not x86-64 GCC/clang: never taken (has_bf16_dot() is false)

namespace real_ext {
void linear_bf16_gemm(int64_t, const uint16_t*, int64_t, int64_t, const uint16_t*, int64_t, const uint16_t*,
                      uint16_t*, int64_t, int64_t, int64_t) {}
}  // namespace real_ext

#endif
