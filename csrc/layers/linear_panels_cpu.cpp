// y = x W^T (+ b) for CPUs with 16 vector registers of 8 floats (AVX2;
// wide_vectors() false), as y^T = W x^T: x's rows are packed once per call
// into panels of 16 (k-major: a panel's 16 values of one k are two vectors),
// and the weights are read straight from their rows, one scalar at a time,
// broadcast. A block is 6 weight rows x one panel: 12 accumulators, 2 x
// vectors and a broadcast (15 of the 16 registers), 12 FMAs per 2 loads and
// 6 broadcasts, and no reduction across lanes (a lane is one row of x). The
// 6 weight rows stay in L1 while every panel runs over them, so each weight is
// read from memory once per call. bfloat16 weights are widened into a float
// copy of the 6 rows first (cheap next to the panels' FMAs), so bfloat16
// needs no AVX512-BF16: torch's own bfloat16 products on such CPUs (oneDNN
// without bf16 instructions) ran at 1-16 GFLOP/s on a Zen 3.
#include "layers/linear_panels.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/cpu_math.h"
#include "common/cpu_vec8.h"

namespace real_ext {
namespace {

constexpr int kRowsW = 6;
// Weight rows whose outputs are gathered (as tile[row][m], m contiguous: a
// block stores its accumulators whole) before they are written to y, each
// row of y one run of 48 floats. Storing a block's 6 x 16 outputs straight
// into y, lane by lane, cost 18% of a call: conflict misses (y's rows are
// ldy apart, often 4 KiB: the same L1 set) and the accumulators spilled to
// the stack to be indexed by lane.
constexpr int64_t kTileRows = kPanelItemRows;
static_assert(kTileRows % kRowsW == 0);

// Block of MR weight rows (float, row stride ldw) x one panel of NV vectors
// (8 * NV rows of x): the outputs of weight row i at out + i * ldo, the
// panel's rows in order.
template <int MR, int NV>
REAL_EXT_INLINE void panel_block(const float* w, int64_t ldw, const float* panel, int64_t K, float* out, int64_t ldo,
                                 const char* next) {
  vec8 acc[MR][NV] = {};
  // Rows 0..2 from one pointer and 3..5 from another, as (base + ldw * 1 or
  // 2) addresses: 3 registers for the 6 rows (GCC's one index register per
  // row spilled three of them, 3 extra loads per k).
  const char* w0 = reinterpret_cast<const char*>(w);
  const char* w3 = reinterpret_cast<const char*>(w + 3 * ldw);
  const int64_t row = ldw * static_cast<int64_t>(sizeof(float));
  for (int64_t k0 = 0; k0 < K; k0 += 16) {
    if (next != nullptr)  // the next block's rows, a line of each per 16 k
      for (int i = 0; i < kRowsW; ++i) __builtin_prefetch(next + i * row + k0 * sizeof(float), 0, 2);
    for (int64_t k = k0; k < std::min(K, k0 + 16); ++k) {
      vec8 xv[NV];
      for (int c = 0; c < NV; ++c) xv[c] = load8(panel + (k * NV + c) * 8);
      for (int i = 0; i < MR; ++i) {
        float wi;
        std::memcpy(&wi, (i < 3 ? w0 : w3) + (i % 3) * row, sizeof(float));
        for (int c = 0; c < NV; ++c) acc[i][c] += wi * xv[c];
      }
      w0 += sizeof(float);
      w3 += sizeof(float);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int c = 0; c < NV; ++c) store_vec(out + i * ldo + 8 * c, acc[i][c]);
}

// MR weight rows against every panel; outputs as in panel_block.
template <int MR>
REAL_EXT_INLINE void rows_against_panels(int64_t M, const float* panels, int64_t K, const float* w, int64_t ldw,
                                         float* out, int64_t ldo, const char* next) {
  for (int64_t m = 0; m < M; m += kPanelRows) {
    const float* panel = panels + m * K;
    const char* pf = m == 0 ? next : nullptr;
    if (M - m > 8)
      panel_block<MR, 2>(w, ldw, panel, K, out + m, ldo, pf);
    else
      panel_block<MR, 1>(w, ldw, panel, K, out + m, ldo, pf);
  }
}

// A k-major W (weight (n, k) at W[k * ldw + n]: a row-parallel weight of the
// flat buffer, stored transposed) is the natural right operand of a GEMM.
// Its 16 columns n.. are first copied into one contiguous block (K rows of
// 16 floats: read in place, the rows lie ldw apart, a page every few rows,
// and every panel would walk them again). A block of the product is MR rows
// of x (scalars broadcast from a panel, rows i0..) x those 16 outputs: 12
// accumulators, 12 FMAs per 2 loads and 6 broadcasts, as panel_block, and
// the sums land as 16 consecutive values of each of y's rows.
template <int MR, typename S>
REAL_EXT_INLINE void k_major_block(const float* xk, int64_t width, int64_t K, const float* w, const S* bias, S* y,
                                   int64_t ldy) {
  vec8 acc[MR][2] = {};
  for (int64_t k = 0; k < K; ++k, xk += width, w += 16) {
    const vec8 w0 = load8(w), w1 = load8(w + 8);
    for (int i = 0; i < MR; ++i) {
      acc[i][0] += xk[i] * w0;
      acc[i][1] += xk[i] * w1;
    }
  }
  const vec8 b0 = bias == nullptr ? vec8{} : load8(bias), b1 = bias == nullptr ? vec8{} : load8(bias + 8);
  for (int i = 0; i < MR; ++i) {
    const vec8 v0 = acc[i][0] + b0, v1 = acc[i][1] + b1;
    S* out = y + i * ldy;
    if constexpr (sizeof(S) == sizeof(float)) {
      store_vec(reinterpret_cast<float*>(out), v0);
      store_vec(reinterpret_cast<float*>(out) + 8, v1);
    } else {
      for (int j = 0; j < 8; ++j) {
        store(out, j, v0[j]);
        store(out, 8 + j, v1[j]);
      }
    }
  }
}

// Outputs [n0, n1) of a k-major W in blocks of 16, each block's weights
// against every panel; the last n1 - n0 < 16 outputs one dot product at a time.
template <typename S>
REAL_EXT_INLINE void k_major_t(int64_t M, const float* panels, int64_t K, const S* W, int64_t ldw, const S* bias, S* y,
                               int64_t ldy, int64_t n0, int64_t n1) {
  thread_local std::vector<float> block;  // W's columns n..n+16 as K rows of 16 floats
  block.resize(16 * K);
  int64_t n = n0;
  for (; n + 16 <= n1; n += 16) {
    for (int64_t k = 0; k < K; ++k) {
      store_vec(block.data() + k * 16, load8(W + k * ldw + n));
      store_vec(block.data() + k * 16 + 8, load8(W + k * ldw + n + 8));
    }
    const S* bn = bias == nullptr ? nullptr : bias + n;
    for (int64_t m0 = 0; m0 < M; m0 += kPanelRows) {
      const int64_t valid = std::min<int64_t>(kPanelRows, M - m0), width = valid > 8 ? 16 : 8;
      for (int64_t i0 = 0; i0 < valid; i0 += 6) {
        const float* xk = panels + m0 * K + i0;
        S* out = y + (m0 + i0) * ldy + n;
        switch (std::min<int64_t>(6, valid - i0)) {
          case 6: k_major_block<6>(xk, width, K, block.data(), bn, out, ldy); break;
          case 5: k_major_block<5>(xk, width, K, block.data(), bn, out, ldy); break;
          case 4: k_major_block<4>(xk, width, K, block.data(), bn, out, ldy); break;
          case 3: k_major_block<3>(xk, width, K, block.data(), bn, out, ldy); break;
          case 2: k_major_block<2>(xk, width, K, block.data(), bn, out, ldy); break;
          default: k_major_block<1>(xk, width, K, block.data(), bn, out, ldy); break;
        }
      }
    }
  }
  for (; n < n1; ++n)
    for (int64_t m = 0; m < M; ++m) {
      const int64_t m0 = m / kPanelRows * kPanelRows, width = M - m0 > 8 ? 16 : 8;
      const float* xm = panels + m0 * K + (m - m0);
      float sum = bias == nullptr ? 0.f : load(bias, n);
      for (int64_t k = 0; k < K; ++k) sum += xm[k * width] * load(W + k * ldw, n);
      store(y, m * ldy + n, sum);
    }
}

template <typename S>
REAL_EXT_INLINE void panels_t(int64_t M, const float* panels, int64_t K, const S* W, int64_t N, int64_t ldw,
                              const S* bias, S* y, int64_t ldy, int64_t n0, int64_t n1) {
  thread_local std::vector<float> widened;  // bfloat16 weights: the block's rows in float
  thread_local std::vector<float> tile;     // outputs of kTileRows weight rows, (row, m)
  const int64_t ldo = panels_size(M, 1);    // the panels' padded rows
  tile.resize(kTileRows * ldo);
  for (int64_t t0 = n0; t0 < n1; t0 += kTileRows) {
    const int64_t t1 = std::min(n1, t0 + kTileRows);
    for (int64_t n = t0; n < t1; n += kRowsW) {
      const int rows = static_cast<int>(std::min<int64_t>(kRowsW, t1 - n));
      const float* w;
      int64_t ld;
      if constexpr (sizeof(S) == sizeof(float)) {
        w = W + n * ldw;
        ld = ldw;
      } else {
        widened.resize(kRowsW * K);
        for (int i = 0; i < rows; ++i)
          for (int64_t k = 0; k < K; ++k) widened[i * K + k] = load(W + (n + i) * ldw, k);
        w = widened.data();
        ld = K;
      }
      // Float weights: the next block's rows are prefetched (into L2) while
      // the first panel runs, so the first panel of each block does not wait
      // on memory (the rest find the block in L1).
      const char* next = nullptr;
      if constexpr (sizeof(S) == sizeof(float))
        if (n + 2 * kRowsW <= N) next = reinterpret_cast<const char*>(W + (n + kRowsW) * ldw);
      float* out = tile.data() + (n - t0) * ldo;
      switch (rows) {
        case 6: rows_against_panels<6>(M, panels, K, w, ld, out, ldo, next); break;
        case 5: rows_against_panels<5>(M, panels, K, w, ld, out, ldo, next); break;
        case 4: rows_against_panels<4>(M, panels, K, w, ld, out, ldo, next); break;
        case 3: rows_against_panels<3>(M, panels, K, w, ld, out, ldo, next); break;
        case 2: rows_against_panels<2>(M, panels, K, w, ld, out, ldo, next); break;
        default: rows_against_panels<1>(M, panels, K, w, ld, out, ldo, next); break;
      }
    }
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = t0; n < t1; ++n)
        store(y, m * ldy + n, tile[(n - t0) * ldo + m] + (bias == nullptr ? 0.f : load(bias, n)));
  }
}

template <typename S>
REAL_EXT_INLINE void pack_t(int64_t M, const S* x, int64_t ldx, int64_t K, float* panels, int64_t p0, int64_t p1) {
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t m0 = p * kPanelRows, valid = std::min<int64_t>(kPanelRows, M - m0);
    const int64_t width = valid > 8 ? 16 : 8;  // panel_block's NV * 8
    float* out = panels + m0 * K;
    // 8 rows x 8 k at a time, transposed in registers (rows past the last
    // valid one are zeros); elementwise, the gather took a third of a small
    // decode product's time.
    int64_t k = 0;
    for (; k + 8 <= K; k += 8)
      for (int64_t mb = 0; mb < width; mb += 8) {
        vec8 r[8];
        for (int i = 0; i < 8; ++i) r[i] = mb + i < valid ? load8(x + (m0 + mb + i) * ldx + k) : vec8{};
        transpose8x8(r);
        for (int j = 0; j < 8; ++j) store_vec(out + (k + j) * width + mb, r[j]);
      }
    for (; k < K; ++k)
      for (int64_t m = 0; m < width; ++m) out[k * width + m] = m < valid ? load(x + (m0 + m) * ldx, k) : 0.f;
  }
}

}  // namespace

REAL_EXT_CPU_CLONES void pack_x_panels(int64_t M, const float* x, int64_t ldx, int64_t K, float* panels, int64_t p0,
                                       int64_t p1) {
  pack_t(M, x, ldx, K, panels, p0, p1);
}
REAL_EXT_CPU_CLONES void pack_x_panels(int64_t M, const uint16_t* x, int64_t ldx, int64_t K, float* panels,
                                       int64_t p0, int64_t p1) {
  pack_t(M, x, ldx, K, panels, p0, p1);
}

REAL_EXT_CPU_CLONES void linear_panels(int64_t M, const float* panels, int64_t K, const float* W, int64_t N,
                                       int64_t ldw, bool k_major, const float* bias, float* y, int64_t ldy, int64_t n0,
                                       int64_t n1) {
  if (k_major)
    k_major_t(M, panels, K, W, ldw, bias, y, ldy, n0, n1);
  else
    panels_t(M, panels, K, W, N, ldw, bias, y, ldy, n0, n1);
}
REAL_EXT_CPU_CLONES void linear_panels(int64_t M, const float* panels, int64_t K, const uint16_t* W, int64_t N,
                                       int64_t ldw, bool k_major, const uint16_t* bias, uint16_t* y, int64_t ldy,
                                       int64_t n0, int64_t n1) {
  if (k_major)
    k_major_t(M, panels, K, W, ldw, bias, y, ldy, n0, n1);
  else
    panels_t(M, panels, K, W, N, ldw, bias, y, ldy, n0, n1);
}

}  // namespace real_ext
