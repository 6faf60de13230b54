// y = x W^T + b on the CPU. For the few rows of a decode step's tail (M <= 8
// sequences still running) oneDNN and MKL spend 30-40 us per call on a small
// model's products, several times what reading the weights takes; here every
// weight row is read once (widened from bfloat16 on the fly) and applied to
// all M rows of x, the products of 16 (row, output) pairs reduced together
// (sum16x16). With AVX512-BF16, bfloat16 batches of rows (a decode step of many
// sequences) run in k-pair panels (linear_bf16_gemm_cpu.cpp). Without AVX-512
// (wide_vectors() false) the panels of linear_panels.h take float32 up to
// kMaxRowsPanels rows and bfloat16 at any M. Larger M goes to OpenBLAS where
// it is loaded (cpu_blas.cpp), else to MKL's products of packed weights inside
// a packed_weights scope (mkl_packed.cpp; there, with AVX-512, float32 at any
// M), else to at::linear.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "common/cpu_math.h"
#include "common/cpu_parallel.h"
#include "common/cpu_vec16.h"
#include "layers/cpu_blas.h"
#include "layers/layer_checks.h"
#include "layers/linear_bf16_dot.h"
#include "layers/linear_panels.h"
#include "layers/mkl_packed.h"

namespace real_ext {
namespace {

// The kernels' largest M (at::linear above): past it oneDNN's bfloat16 products
// win on large K; MKL's float32 ones only past 8; with AVX512-BF16 dot products
// (linear_bf16_dot.h) bfloat16 runs here up to kMaxRowsBf16Dot rows (timed
// against oneDNN in turns, a small model's shapes: 1.0-2.2x up to 16 rows,
// about even at 20-32), then in k-pair panels up to kMaxRowsBf16Gemm (with the
// weights cycling through a model's layers: 1.1-1.3x at 32-128 rows, 1.05x at
// 256, 0.96x at 512 and 2048, where x's rows of a chunk leave L1).
constexpr int64_t kMaxRowsFloat = 8, kMaxRowsBFloat16 = 4, kMaxRowsBf16Dot = 24, kMaxRowsBf16Gemm = 256;
constexpr int64_t kPanelCols = 32;  // outputs per panel of linear_bf16_gemm
// linear_panels' rows per call (x's panels stay in L2): past it MKL's float32
// products win (a decode step's 33 products with cold weights on a Zen 3, in
// GFLOP/s, panels / MKL: 8 rows 55 / 15, 64 rows 106 / 66, 128 rows 113-134 /
// 94-105, 256 rows about even, 1024 rows 92 / 111: each 128-row chunk reads
// the weights again).
constexpr int64_t kMaxRowsPanels = 128;
constexpr int64_t kGrainBytes = 64 << 10;  // weight bytes per parallel work item, at least

// Outputs [n0, n1) of the M rows: xf (M, K) float32, W rows of stride ldw,
// y (M, N) row stride ldy. Dot products collect 16 at a time in `pending`.
template <int M, typename S>
REAL_EXT_INLINE void linear_rows_t(const float* xf, int64_t K, const S* W, int64_t ldw, const S* bias, S* y,
                                   int64_t ldy, int64_t n0, int64_t n1) {
  vec16 pending[16];
  float tails[16];
  int64_t where[16];  // m * ldy + n of each pending sum
  int np = 0;
  auto flush = [&](int count) {
    if (count == 16) {
      const vec16 r = sum16x16(pending);
      for (int j = 0; j < 16; ++j) store(y, where[j], r[j] + tails[j]);
    } else {
      for (int j = 0; j < count; ++j) {
        float s = tails[j];
        for (int l = 0; l < 16; ++l) s += pending[j][l];
        store(y, where[j], s);
      }
    }
  };
  // Two weight rows at a time: each x chunk loaded once for both.
  for (int64_t n = n0; n < n1; n += 2) {
    const bool pair = n + 1 < n1;
    const S* w0 = W + n * ldw;
    const S* w1 = pair ? w0 + ldw : w0;
    vec16 acc0[M] = {}, acc1[M] = {};
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
      const vec16 a = load16(w0 + k), b = load16(w1 + k);
      for (int m = 0; m < M; ++m) {
        const vec16 xv = load16(xf + m * K + k);
        acc0[m] += xv * a;
        acc1[m] += xv * b;
      }
    }
    for (int r = 0; r < (pair ? 2 : 1); ++r) {
      const S* w = r == 0 ? w0 : w1;
      const float b = bias == nullptr ? 0.f : load(bias, n + r);
      for (int m = 0; m < M; ++m) {
        float tail = b;
        for (int64_t kk = k; kk < K; ++kk) tail += xf[m * K + kk] * load(w, kk);
        pending[np] = r == 0 ? acc0[m] : acc1[m];
        tails[np] = tail;
        where[np] = m * ldy + n + r;
        if (++np == 16) {
          flush(16);
          np = 0;
        }
      }
    }
  }
  flush(np);
}

#define REAL_EXT_LINEAR_ENTRY(M, S)                                                                             \
  REAL_EXT_CPU_CLONES void linear_rows_##M(const float* xf, int64_t K, const S* W, int64_t ldw, const S* bias, \
                                           S* y, int64_t ldy, int64_t n0, int64_t n1) {                        \
    linear_rows_t<M>(xf, K, W, ldw, bias, y, ldy, n0, n1);                                                      \
  }
#define REAL_EXT_LINEAR_ENTRIES(S)                                                                   \
  REAL_EXT_LINEAR_ENTRY(1, S)                                                                        \
  REAL_EXT_LINEAR_ENTRY(2, S)                                                                        \
  REAL_EXT_LINEAR_ENTRY(3, S)                                                                        \
  REAL_EXT_LINEAR_ENTRY(4, S)                                                                        \
  REAL_EXT_LINEAR_ENTRY(5, S)                                                                        \
  REAL_EXT_LINEAR_ENTRY(6, S)                                                                        \
  REAL_EXT_LINEAR_ENTRY(7, S)                                                                        \
  REAL_EXT_LINEAR_ENTRY(8, S)                                                                        \
  void linear_rows(int64_t M, const float* xf, int64_t K, const S* W, int64_t ldw, const S* bias, S* y, \
                   int64_t ldy, int64_t n0, int64_t n1) {                                            \
    switch (M) {                                                                                     \
      case 1: return linear_rows_1(xf, K, W, ldw, bias, y, ldy, n0, n1);                             \
      case 2: return linear_rows_2(xf, K, W, ldw, bias, y, ldy, n0, n1);                             \
      case 3: return linear_rows_3(xf, K, W, ldw, bias, y, ldy, n0, n1);                             \
      case 4: return linear_rows_4(xf, K, W, ldw, bias, y, ldy, n0, n1);                             \
      case 5: return linear_rows_5(xf, K, W, ldw, bias, y, ldy, n0, n1);                             \
      case 6: return linear_rows_6(xf, K, W, ldw, bias, y, ldy, n0, n1);                             \
      case 7: return linear_rows_7(xf, K, W, ldw, bias, y, ldy, n0, n1);                             \
      default: return linear_rows_8(xf, K, W, ldw, bias, y, ldy, n0, n1);                            \
    }                                                                                                \
  }
REAL_EXT_LINEAR_ENTRIES(float)
REAL_EXT_LINEAR_ENTRIES(uint16_t)
#undef REAL_EXT_LINEAR_ENTRIES
#undef REAL_EXT_LINEAR_ENTRY

at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_linear_args(x, weight, bias);
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  const auto dt = x.scalar_type();
  const bool bf16_dot = dt == at::kBFloat16 && has_bf16_dot();
  const bool bf16_gemm = bf16_dot && M > kMaxRowsBf16Dot && M <= kMaxRowsBf16Gemm && K > 0 && K % 2 == 0;
  // Without AVX-512 (16 registers of 8 floats) the register blocks of
  // linear_panels.h take float32 up to kMaxRowsPanels rows and every bfloat16
  // product (oneDNN has no fast bfloat16 path there).
  const bool panels = !wide_vectors() && M > 0 && K > 0 &&
                      ((dt == at::kFloat && M <= kMaxRowsPanels) || (dt == at::kBFloat16 && !bf16_dot));
  const int64_t max_rows = bf16_dot              ? kMaxRowsBf16Dot
                           : dt == at::kFloat    ? kMaxRowsFloat
                           : dt == at::kBFloat16 ? kMaxRowsBFloat16
                                                 : 0;
  // A row-parallel weight of the flat buffer is a transposed view (stride (1,
  // ldk): real_ext/model/shards.py). The panels read it in place; the
  // AVX-512 kernels read weight rows, so there ATen's product (which takes a
  // transposed operand as it is) serves it.
  const bool k_major = weight.stride(1) != 1 && weight.stride(0) == 1;
  // Products the kernels here do not take: OpenBLAS's where it is loaded
  // (float32, cpu_blas.cpp), else ATen's.
  auto library = [&] {
    at::Tensor y;
    if (dt == at::kFloat && M > 0 && K > 0 && blas_linear(rows_view(x), weight, bias, y)) return y;
    return at::linear(x, weight, bias);
  };
  // Inside a packed_weights scope, where MKL serves the float32 products (no
  // OpenBLAS loaded), every float32 product the panels do not take multiplies
  // a weight packed once (mkl_packed.cpp): those past the kernels' sizes, and
  // the row kernels' few rows too, which the packed products beat: a decode
  // step's 1-8 rows by a 32M-parameter LLaMA's weights (cold) took 8.7-13.8
  // ms against the kernels' 9.5-18.7 on a 2-core AVX-512 Xeon.
  if (dt == at::kFloat && !panels && M > 0 && K > 0 && !blas_loaded()) {
    at::Tensor y;
    if (packed_linear(rows_view(x), weight, bias, y)) return y;
  }
  if (k_major && !panels) return library();
  if (!bf16_gemm && !panels && (M > max_rows || M == 0 || K == 0)) return library();
  const at::Tensor w = k_major ? weight : rows_view(weight);
  const int64_t ldw = k_major ? w.stride(1) : w.stride(0);
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty({M, N}, x.options());
  const int64_t grain_rows = std::max<int64_t>(16, kGrainBytes / std::max<int64_t>(1, K * w.element_size()));
  if (bf16_dot) {
    const at::Tensor xr = rows_view(x);
    const auto* xp = static_cast<const uint16_t*>(xr.data_ptr());
    const auto* wp = static_cast<const uint16_t*>(w.data_ptr());
    const auto* bp = b.defined() ? static_cast<const uint16_t*>(b.data_ptr()) : nullptr;
    auto* yp = static_cast<uint16_t*>(y.data_ptr());
    if (bf16_gemm) {  // whole panels of kPanelCols outputs per thread
      at::parallel_for(0, (N + kPanelCols - 1) / kPanelCols, 1, [&](int64_t p0, int64_t p1) {
        linear_bf16_gemm(M, xp, xr.stride(0), K, wp, w.stride(0), bp, yp, N, p0 * kPanelCols,
                         std::min(N, p1 * kPanelCols));
      });
    } else {
      at::parallel_for(0, N, grain_rows, [&](int64_t n0, int64_t n1) {
        linear_bf16_dot(M, xp, xr.stride(0), K, wp, w.stride(0), bp, yp, N, n0, n1);
      });
    }
    return y;
  }
  // linear_panels: x packed into panels per chunk of kMaxRowsPanels rows,
  // whose panels stay in L2 while the weights stream by (a prefill's
  // thousands of rows; a decode step is one chunk). linear_rows: x in float32.
  const int64_t chunk = panels ? kMaxRowsPanels : M;
  auto run = [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    const S* wp = static_cast<const S*>(w.data_ptr());
    const S* bp = b.defined() ? static_cast<const S*>(b.data_ptr()) : nullptr;
    for (int64_t m0 = 0; m0 < M; m0 += chunk) {
      const int64_t rows = std::min(chunk, M - m0);
      S* ym = static_cast<S*>(y.data_ptr()) + m0 * N;
      if (panels) {
        const at::Tensor xr = rows_view(x.narrow(0, m0, rows));
        const at::Tensor packed = at::empty({panels_size(rows, K)}, x.options().dtype(at::kFloat));
        at::parallel_for(0, (rows + kPanelRows - 1) / kPanelRows, 1, [&](int64_t p0, int64_t p1) {
          pack_x_panels(rows, static_cast<const S*>(xr.data_ptr()), xr.stride(0), K, packed.data_ptr<float>(), p0,
                        p1);
        });
        // Work items, each thread taking the next free one: first one long
        // run of weight rows per thread (3/4 of the rows in all: the
        // weights stream in order), then items of kPanelItemRows rows that
        // even out the threads' finishing times. Halves fixed in advance
        // left one thread waiting at the join for 9% of a decode step's
        // products (the two cores do not run at the same speed).
        const int64_t threads = at::get_num_threads();
        const int64_t units = (N + kPanelItemRows - 1) / kPanelItemRows, long_units = units * 3 / 4 / threads;
        const int64_t long_items = long_units > 0 ? threads : 0;
        const int64_t items = long_items + units - long_items * long_units;
        run_items_dynamic(items, [&](int64_t i) {
          const int64_t u0 = i < long_items ? i * long_units : long_items * long_units + (i - long_items);
          const int64_t u1 = i < long_items ? u0 + long_units : u0 + 1;
          linear_panels(rows, packed.data_ptr<float>(), K, wp, N, ldw, k_major, bp, ym, N, u0 * kPanelItemRows,
                        std::min(N, u1 * kPanelItemRows));
        });
      } else {
        const at::Tensor xf = x.narrow(0, m0, rows).to(at::kFloat).contiguous();
        at::parallel_for(0, N, grain_rows, [&](int64_t n0, int64_t n1) {
          linear_rows(rows, xf.data_ptr<float>(), K, wp, w.stride(0), bp, ym, N, n0, n1);
        });
      }
    }
  };
  if (dt == at::kBFloat16)
    run(static_cast<uint16_t*>(nullptr));
  else
    run(static_cast<float*>(nullptr));
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(real_ext, CPU, m) { m.impl("linear", &linear_cpu); }

}  // namespace real_ext
