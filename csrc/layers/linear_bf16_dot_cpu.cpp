// The AVX512-BF16 kernel of linear_bf16_dot.h. Compiled for that ISA by
// function attributes only (the rest of the library stays baseline); called
// only after has_bf16_dot(). Two weight rows at a time, each 32-element step of
// them applied to a block of up to 8 rows of x (16 accumulators); a masked
// load covers K's tail.
#include "layers/linear_bf16_dot.h"

#include <cstdlib>

#include "common/cpu_math.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>

namespace real_ext {
namespace {

#define REAL_EXT_BF16_DOT __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

template <int MB>
REAL_EXT_BF16_DOT void block_rows(const uint16_t* x, int64_t ldx, int64_t K, const uint16_t* W, int64_t ldw,
                                  const uint16_t* bias, uint16_t* y, int64_t ldy, int64_t n0, int64_t n1) {
  const int64_t tail = K % 32;
  const __mmask32 tail_mask = tail ? static_cast<__mmask32>((1u << tail) - 1u) : 0;
  for (int64_t n = n0; n < n1; n += 2) {
    const bool pair = n + 1 < n1;
    const uint16_t* w0 = W + n * ldw;
    const uint16_t* w1 = pair ? w0 + ldw : w0;
    __m512 acc0[MB], acc1[MB];
    for (int m = 0; m < MB; ++m) acc0[m] = acc1[m] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      const __m512bh a = (__m512bh)_mm512_loadu_si512(w0 + k), b = (__m512bh)_mm512_loadu_si512(w1 + k);
      for (int m = 0; m < MB; ++m) {
        const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + m * ldx + k);
        acc0[m] = _mm512_dpbf16_ps(acc0[m], xv, a);
        acc1[m] = _mm512_dpbf16_ps(acc1[m], xv, b);
      }
    }
    if (tail) {  // zeros past K add nothing
      const __m512bh a = (__m512bh)_mm512_maskz_loadu_epi16(tail_mask, w0 + k);
      const __m512bh b = (__m512bh)_mm512_maskz_loadu_epi16(tail_mask, w1 + k);
      for (int m = 0; m < MB; ++m) {
        const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(tail_mask, x + m * ldx + k);
        acc0[m] = _mm512_dpbf16_ps(acc0[m], xv, a);
        acc1[m] = _mm512_dpbf16_ps(acc1[m], xv, b);
      }
    }
    const float b0 = bias == nullptr ? 0.f : bf16_bits_to_float(bias[n]);
    const float b1 = bias == nullptr || !pair ? 0.f : bf16_bits_to_float(bias[n + 1]);
    for (int m = 0; m < MB; ++m) {
      y[m * ldy + n] = float_to_bf16_bits(_mm512_reduce_add_ps(acc0[m]) + b0);
      if (pair) y[m * ldy + n + 1] = float_to_bf16_bits(_mm512_reduce_add_ps(acc1[m]) + b1);
    }
  }
}

REAL_EXT_BF16_DOT void all_rows(int64_t M, const uint16_t* x, int64_t ldx, int64_t K, const uint16_t* W,
                                int64_t ldw, const uint16_t* bias, uint16_t* y, int64_t ldy, int64_t n0, int64_t n1) {
  for (int64_t m0 = 0; m0 < M; m0 += 8) {
    const uint16_t* xb = x + m0 * ldx;
    uint16_t* yb = y + m0 * ldy;
    switch (M - m0 < 8 ? M - m0 : 8) {
      case 1: block_rows<1>(xb, ldx, K, W, ldw, bias, yb, ldy, n0, n1); break;
      case 2: block_rows<2>(xb, ldx, K, W, ldw, bias, yb, ldy, n0, n1); break;
      case 3: block_rows<3>(xb, ldx, K, W, ldw, bias, yb, ldy, n0, n1); break;
      case 4: block_rows<4>(xb, ldx, K, W, ldw, bias, yb, ldy, n0, n1); break;
      case 5: block_rows<5>(xb, ldx, K, W, ldw, bias, yb, ldy, n0, n1); break;
      case 6: block_rows<6>(xb, ldx, K, W, ldw, bias, yb, ldy, n0, n1); break;
      case 7: block_rows<7>(xb, ldx, K, W, ldw, bias, yb, ldy, n0, n1); break;
      default: block_rows<8>(xb, ldx, K, W, ldw, bias, yb, ldy, n0, n1); break;
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
