// y = x W^T (+ b) as blocks of 8-lane dot products, for CPUs with 16 vector
// registers of 8 floats (AVX2; wide_vectors() false). A block is 4 rows of x
// x 3 weight rows: 12 accumulators, 3 weight vectors and one x vector, all of
// AVX2's 16 registers, 12 FMAs per 7 loads, read straight from the rows (both
// are contiguous in k, so nothing is packed); each block's 12 sums are reduced
// across lanes once, at its end. The 3 weight rows stay in L1 while every
// block of x runs over them. bfloat16 weights are widened as they are loaded
// (x comes in float32, widened once by the caller), so bfloat16 needs no
// AVX512-BF16: torch's own bfloat16 products on such CPUs (oneDNN without
// bf16 instructions) ran at 1-16 GFLOP/s on a Zen 3, these at float32 speed.
#include "layers/linear_dots.h"

#include <algorithm>
#include <cstring>

#include "common/cpu_math.h"
#include "common/cpu_vec8.h"

namespace real_ext {
namespace {

constexpr int kRowsX = 4, kRowsW = 3;

REAL_EXT_INLINE float lane_sum(vec8 v) {
  float s = 0.f;
  for (int j = 0; j < 8; ++j) s += v[j];
  return s;
}

// y[i, j] for MR rows of x (float32, row stride K) and NR weight rows.
template <int MR, int NR, typename S>
REAL_EXT_INLINE void dots_block(const float* x, int64_t K, const S* W, int64_t ldw, const S* bias, S* y,
                                int64_t ldy) {
  vec8 acc[MR][NR] = {};
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    vec8 w[NR];
    for (int j = 0; j < NR; ++j) w[j] = load8(W + j * ldw + k);
    for (int i = 0; i < MR; ++i) {
      const vec8 xv = load8(x + i * K + k);
      for (int j = 0; j < NR; ++j) acc[i][j] += xv * w[j];
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      float s = lane_sum(acc[i][j]) + (bias == nullptr ? 0.f : load(bias, j));
      for (int64_t kk = k; kk < K; ++kk) s += x[i * K + kk] * load(W + j * ldw, kk);
      store(y, i * ldy + j, s);
    }
}

// All M rows against NR weight rows.
template <int NR, typename S>
REAL_EXT_INLINE void rows_against(int64_t M, const float* xf, int64_t K, const S* W, int64_t ldw, const S* bias,
                                  S* y, int64_t ldy) {
  for (int64_t m = 0; m < M; m += kRowsX) {
    const float* x = xf + m * K;
    S* ym = y + m * ldy;
    switch (std::min<int64_t>(kRowsX, M - m)) {
      case 1: dots_block<1, NR>(x, K, W, ldw, bias, ym, ldy); break;
      case 2: dots_block<2, NR>(x, K, W, ldw, bias, ym, ldy); break;
      case 3: dots_block<3, NR>(x, K, W, ldw, bias, ym, ldy); break;
      default: dots_block<kRowsX, NR>(x, K, W, ldw, bias, ym, ldy); break;
    }
  }
}

template <typename S>
REAL_EXT_INLINE void dots_t(int64_t M, const float* xf, int64_t K, const S* W, int64_t ldw, const S* bias, S* y,
                            int64_t ldy, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + kRowsW <= n1; n += kRowsW)
    rows_against<kRowsW>(M, xf, K, W + n * ldw, ldw, bias == nullptr ? nullptr : bias + n, y + n, ldy);
  const S* bn = bias == nullptr ? nullptr : bias + n;
  if (n1 - n == 2) rows_against<2>(M, xf, K, W + n * ldw, ldw, bn, y + n, ldy);
  if (n1 - n == 1) rows_against<1>(M, xf, K, W + n * ldw, ldw, bn, y + n, ldy);
}

}  // namespace

REAL_EXT_CPU_CLONES void linear_dots(int64_t M, const float* xf, int64_t K, const float* W, int64_t ldw,
                                     const float* bias, float* y, int64_t ldy, int64_t n0, int64_t n1) {
  dots_t(M, xf, K, W, ldw, bias, y, ldy, n0, n1);
}
REAL_EXT_CPU_CLONES void linear_dots(int64_t M, const float* xf, int64_t K, const uint16_t* W, int64_t ldw,
                                     const uint16_t* bias, uint16_t* y, int64_t ldy, int64_t n0, int64_t n1) {
  dots_t(M, xf, K, W, ldw, bias, y, ldy, n0, n1);
}

}  // namespace real_ext
