// The AVX512-BF16 kernel of linear_bf16_dot.h. Compiled for that ISA by
// function attributes only (the rest of the library stays baseline); called
// only after has_bf16_dot(). Two weight rows at a time, each 32-element step of
// them applied to a block of up to 8 rows of x (16 accumulators); a masked
// load covers K's tail.
#include "layers/linear_bf16_dot.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "common/cpu_math.h"
#include "common/cpu_vec16.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>

namespace real_ext {
namespace {

#define REAL_EXT_BF16_DOT __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// y[0:MB, n : n + 2] for one pair of weight rows (w1 == w0 when n is the last
// output): each 32-element step of the pair is applied to MB rows of x.
template <int MB>
REAL_EXT_BF16_DOT REAL_EXT_INLINE void pair_rows(const uint16_t* x, int64_t ldx, int64_t K, __mmask32 tail_mask,
                                                 const uint16_t* w0, const uint16_t* w1, float b0, float b1, bool pair,
                                                 uint16_t* y, int64_t ldy, int64_t n) {
  __m512 acc[2 * MB];  // acc[2m]: row m with w0, acc[2m + 1]: with w1
  for (int i = 0; i < 2 * MB; ++i) acc[i] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    const __m512bh a = (__m512bh)_mm512_loadu_si512(w0 + k), b = (__m512bh)_mm512_loadu_si512(w1 + k);
    for (int m = 0; m < MB; ++m) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + m * ldx + k);
      acc[2 * m] = _mm512_dpbf16_ps(acc[2 * m], xv, a);
      acc[2 * m + 1] = _mm512_dpbf16_ps(acc[2 * m + 1], xv, b);
    }
  }
  if (k < K) {  // zeros past K add nothing
    const __m512bh a = (__m512bh)_mm512_maskz_loadu_epi16(tail_mask, w0 + k);
    const __m512bh b = (__m512bh)_mm512_maskz_loadu_epi16(tail_mask, w1 + k);
    for (int m = 0; m < MB; ++m) {
      const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(tail_mask, x + m * ldx + k);
      acc[2 * m] = _mm512_dpbf16_ps(acc[2 * m], xv, a);
      acc[2 * m + 1] = _mm512_dpbf16_ps(acc[2 * m + 1], xv, b);
    }
  }
  float sums[2 * MB];
  if constexpr (MB >= 4) {  // the 2 MB horizontal sums together: far fewer shuffles than one tree each
    vec16 part[16] = {};
    for (int i = 0; i < 2 * MB; ++i) std::memcpy(&part[i], &acc[i], sizeof(vec16));
    const vec16 r = sum16x16(part);
    for (int i = 0; i < 2 * MB; ++i) sums[i] = r[i];
  } else {
    for (int i = 0; i < 2 * MB; ++i) sums[i] = _mm512_reduce_add_ps(acc[i]);
  }
  for (int m = 0; m < MB; ++m) {
    y[m * ldy + n] = float_to_bf16_bits(sums[2 * m] + b0);
    if (pair) y[m * ldy + n + 1] = float_to_bf16_bits(sums[2 * m + 1] + b1);
  }
}

// Weight rows two at a time, each pair applied to a panel of x's rows (blocks
// of 8) while the pair sits in L1; a panel is as many rows as fit in 16 KB, so
// that it stays in L1 too (at least one block: then x streams from L2).
REAL_EXT_BF16_DOT void all_rows(int64_t M, const uint16_t* x, int64_t ldx, int64_t K, const uint16_t* W,
                                int64_t ldw, const uint16_t* bias, uint16_t* y, int64_t ldy, int64_t n0, int64_t n1) {
  const int64_t tail = K % 32;
  const __mmask32 tail_mask = tail ? static_cast<__mmask32>((1u << tail) - 1u) : 0;
  const int64_t panel = std::max<int64_t>(8, (16 << 10) / (2 * K) / 8 * 8);
  for (int64_t p0 = 0; p0 < M; p0 += panel) {
    const int64_t p1 = std::min(M, p0 + panel);
    for (int64_t n = n0; n < n1; n += 2) {
      const bool pair = n + 1 < n1;
      const uint16_t* w0 = W + n * ldw;
      const uint16_t* w1 = pair ? w0 + ldw : w0;
      const float b0 = bias == nullptr ? 0.f : bf16_bits_to_float(bias[n]);
      const float b1 = bias == nullptr || !pair ? 0.f : bf16_bits_to_float(bias[n + 1]);
      for (int64_t m0 = p0; m0 < p1; m0 += 8) {
        const uint16_t* xb = x + m0 * ldx;
        uint16_t* yb = y + m0 * ldy;
        switch (p1 - m0 < 8 ? p1 - m0 : 8) {
          case 1: pair_rows<1>(xb, ldx, K, tail_mask, w0, w1, b0, b1, pair, yb, ldy, n); break;
          case 2: pair_rows<2>(xb, ldx, K, tail_mask, w0, w1, b0, b1, pair, yb, ldy, n); break;
          case 3: pair_rows<3>(xb, ldx, K, tail_mask, w0, w1, b0, b1, pair, yb, ldy, n); break;
          case 4: pair_rows<4>(xb, ldx, K, tail_mask, w0, w1, b0, b1, pair, yb, ldy, n); break;
          case 5: pair_rows<5>(xb, ldx, K, tail_mask, w0, w1, b0, b1, pair, yb, ldy, n); break;
          case 6: pair_rows<6>(xb, ldx, K, tail_mask, w0, w1, b0, b1, pair, yb, ldy, n); break;
          case 7: pair_rows<7>(xb, ldx, K, tail_mask, w0, w1, b0, b1, pair, yb, ldy, n); break;
          default: pair_rows<8>(xb, ldx, K, tail_mask, w0, w1, b0, b1, pair, yb, ldy, n); break;
        }
      }
    }
  }
}

}  // namespace

bool has_bf16_dot() {
  // REAL_EXT_NO_BF16_DOT=1 takes the portable kernel (the tests run it so on CPUs with AVX512-BF16).
  static const bool yes = __builtin_cpu_supports("avx512bf16") && std::getenv("REAL_EXT_NO_BF16_DOT") == nullptr;
  return yes;
}

void linear_bf16_dot(int64_t M, const uint16_t* x, int64_t ldx, int64_t K, const uint16_t* W, int64_t ldw,
                     const uint16_t* bias, uint16_t* y, int64_t ldy, int64_t n0, int64_t n1) {
  all_rows(M, x, ldx, K, W, ldw, bias, y, ldy, n0, n1);
}

}  // namespace real_ext

#else  // not x86-64 GCC/clang: never taken

namespace real_ext {
bool has_bf16_dot() { return false; }
void linear_bf16_dot(int64_t, const uint16_t*, int64_t, int64_t, const uint16_t*, int64_t, const uint16_t*, uint16_t*,
                     int64_t, int64_t, int64_t) {}
}  // namespace real_ext

#endif
