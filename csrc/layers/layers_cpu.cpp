// The decoder layer's element-wise ops on the CPU, each one pass over its rows
// in float32 (float64 for float64 tensors): RMSNorm forward and backward, the
// rotary embedding, SwiGLU (silu(gate) * up) forward and backward. Without
// them a bfloat16 layer runs ~8 ATen ops per norm and per rope, each a pass
// over memory with a dtype conversion (about a tenth of a small model's step).
// Rows run in parallel; the row loops are compiled per ISA
// (REAL_EXT_CPU_CLONES): RMSNorm and rope take explicit vector steps, of
// vec16 with AVX-512 and vec8 otherwise (wide_vectors(): a vec16 held in two
// ymm spilled to the stack every step of a row's sum, and a 64 x 512 RMSNorm
// took 37 us on a Zen 3), SwiGLU's plain loops GCC vectorizes itself.
// bfloat16 travels as its uint16_t bits.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "common/cpu_math.h"
#include "common/cpu_vec8.h"
#include "layers/layer_checks.h"

namespace real_ext {
namespace {

constexpr int64_t kGrainElems = 1 << 14;  // elements per parallel work item, at least

// v rounded to the storage type S (HF rounds the normalized row before the weight).
REAL_EXT_INLINE float round_as(const float*, float v) { return v; }
REAL_EXT_INLINE double round_as(const double*, double v) { return v; }
REAL_EXT_INLINE float round_as(const uint16_t*, float v) { return bf16_bits_to_float(float_to_bf16_bits(v)); }
REAL_EXT_INLINE vec16 round_as(const float*, vec16 v) { return v; }
REAL_EXT_INLINE vec8 round_as(const float*, vec8 v) { return v; }
template <typename Vec>
REAL_EXT_INLINE Vec round_bf16(Vec v) {
  uint16_t h[kVecLanes<Vec>];
  store_row(h, v);
  return load_row<Vec>(h);
}
REAL_EXT_INLINE vec16 round_as(const uint16_t*, vec16 v) { return round_bf16(v); }
REAL_EXT_INLINE vec8 round_as(const uint16_t*, vec8 v) { return round_bf16(v); }

template <typename S> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
// float32 and bfloat16 rows take 16-lane vector steps; float64 (tests) runs scalar.
template <typename S> constexpr bool kVec = !std::is_same_v<S, double>;

REAL_EXT_INLINE float sigmoid(float g) { return 1.f / (1.f + fast_expf(std::min(-g, 88.f))); }
REAL_EXT_INLINE double sigmoid(double g) { return 1.0 / (1.0 + std::exp(-g)); }

// A row's sums run in 16 lanes, one vec16 or two vec8 (kParts), added up in
// lane order: the same bits with either blocking.
constexpr int kSumLanes = 16;
template <typename Vec>
constexpr int kParts = kSumLanes / kVecLanes<Vec>;

template <typename Vec>
REAL_EXT_INLINE float hsum(const Vec* acc) {
  float s = 0.f;
  for (int p = 0; p < kParts<Vec>; ++p)
    for (int j = 0; j < kVecLanes<Vec>; ++j) s += acc[p][j];
  return s;
}

// Rows are (pointer, row stride); columns are unit-stride. Vec: vec16 or vec8.
template <typename Vec, typename S>
REAL_EXT_INLINE void rms_fwd_t(const S* x, int64_t ldx, const S* w, S* out, typename Acc<S>::type* rstd, int64_t r0,
                               int64_t r1, int64_t H, double eps) {
  using A = typename Acc<S>::type;
  constexpr int L = kVecLanes<Vec>;
  for (int64_t r = r0; r < r1; ++r) {
    const S* xr = x + r * ldx;
    S* o = out + r * H;
    int64_t i = 0;
    A ss = 0;
    if constexpr (kVec<S>) {
      Vec acc[kParts<Vec>] = {};
      for (; i + kSumLanes <= H; i += kSumLanes)
        for (int p = 0; p < kParts<Vec>; ++p) {
          const Vec v = load_row<Vec>(xr + i + p * L);
          acc[p] += v * v;
        }
      ss = hsum(acc);
    }
    for (; i < H; ++i) ss += load(xr, i) * load(xr, i);
    const A inv = A(1) / std::sqrt(ss / A(H) + A(eps));
    rstd[r] = inv;
    int64_t k = 0;
    if constexpr (kVec<S>)
      for (; k + L <= H; k += L) store_row(o + k, load_row<Vec>(w + k) * round_as(xr, load_row<Vec>(xr + k) * inv));
    for (; k < H; ++k) store(o, k, load(w, k) * round_as(xr, load(xr, k) * inv));
  }
}

// dx = rstd * (dout * w - n * mean(dout * w * n)), n = x * rstd; dw_part += dout * n (n rounded as stored).
template <typename Vec, typename S>
REAL_EXT_INLINE void rms_bwd_t(const S* dout, const S* x, int64_t ldx, const S* w, const typename Acc<S>::type* rstd,
                               S* dx, typename Acc<S>::type* dw_part, int64_t r0, int64_t r1, int64_t H) {
  using A = typename Acc<S>::type;
  constexpr int L = kVecLanes<Vec>;
  for (int64_t r = r0; r < r1; ++r) {
    const S* xr = x + r * ldx;
    const S* gr = dout + r * H;
    S* d = dx + r * H;
    const A inv = rstd[r];
    int64_t i = 0;
    A dot = 0;
    if constexpr (kVec<S>) {
      Vec acc[kParts<Vec>] = {};
      for (; i + kSumLanes <= H; i += kSumLanes)
        for (int p = 0; p < kParts<Vec>; ++p) {
          const int64_t e = i + p * L;
          acc[p] += load_row<Vec>(gr + e) * load_row<Vec>(w + e) * (load_row<Vec>(xr + e) * inv);
        }
      dot = hsum(acc);
    }
    for (; i < H; ++i) dot += load(gr, i) * load(w, i) * (load(xr, i) * inv);
    const A c = dot / A(H);
    int64_t k = 0;
    if constexpr (kVec<S>)
      for (; k + L <= H; k += L) {
        const Vec g = load_row<Vec>(gr + k), n = load_row<Vec>(xr + k) * inv;
        store_row(d + k, inv * (g * load_row<Vec>(w + k) - n * c));
        store_row(dw_part + k, load_row<Vec>(dw_part + k) + g * round_as(xr, n));
      }
    for (; k < H; ++k) {
      const A n = load(xr, k) * inv;
      store(d, k, inv * (load(gr, k) * load(w, k) - n * c));
      dw_part[k] += load(gr, k) * round_as(xr, n);
    }
  }
}

// One head's rotation: o = x * cos + rotate_half(x) * sin, or its transpose
// (the backward): for i < D/2, with a = x[i], b = x[i + D/2],
//   forward:   o[i] = a c[i] - b s[i],   o[i + D/2] = b c[i + D/2] + a s[i + D/2]
//   transpose: o[i] = a c[i] + b s[i + D/2],   o[i + D/2] = b c[i + D/2] - a s[i]
template <bool kTranspose, typename Vec, typename S>
REAL_EXT_INLINE void rope_head(const S* x, const S* c, const S* s, S* o, int64_t half) {
  using A = typename Acc<S>::type;
  constexpr int L = kVecLanes<Vec>;
  int64_t i = 0;
  if constexpr (kVec<S>)
    for (; i + L <= half; i += L) {
      const Vec a = load_row<Vec>(x + i), b = load_row<Vec>(x + i + half), s_lo = load_row<Vec>(s + i),
                s_hi = load_row<Vec>(s + i + half);
      store_row(o + i, a * load_row<Vec>(c + i) + (kTranspose ? b * s_hi : -b * s_lo));
      store_row(o + i + half, b * load_row<Vec>(c + i + half) + (kTranspose ? -a * s_lo : a * s_hi));
    }
  for (; i < half; ++i) {
    const A a = load(x, i), b = load(x, i + half), s_lo = load(s, i), s_hi = load(s, i + half);
    store(o, i, a * load(c, i) + (kTranspose ? b * s_hi : -b * s_lo));
    store(o, i + half, b * load(c, i + half) + (kTranspose ? -a * s_lo : a * s_hi));
  }
}

// Tokens [r0, r1) of x (token stride sx0, head stride sx1) into out (contiguous).
template <typename Vec, typename S>
REAL_EXT_INLINE void rope_t(const S* x, int64_t sx0, int64_t sx1, const S* cos, const S* sin, S* out, int64_t r0,
                            int64_t r1, int64_t heads, int64_t D, bool transpose) {
  for (int64_t t = r0; t < r1; ++t)
    for (int64_t h = 0; h < heads; ++h) {
      const S* xr = x + t * sx0 + h * sx1;
      S* o = out + (t * heads + h) * D;
      if (transpose)
        rope_head<true, Vec>(xr, cos + t * D, sin + t * D, o, D / 2);
      else
        rope_head<false, Vec>(xr, cos + t * D, sin + t * D, o, D / 2);
    }
}

template <typename S>
REAL_EXT_INLINE void silu_mul_fwd_t(const S* gate, int64_t ldg, const S* up, int64_t ldu, S* out, int64_t r0,
                                    int64_t r1, int64_t I) {
  using A = typename Acc<S>::type;
  for (int64_t r = r0; r < r1; ++r) {
    const S* g = gate + r * ldg;
    const S* u = up + r * ldu;
    S* o = out + r * I;
    // g * sigmoid(g) rounds unlike ATen's g / (1 + exp(-g)), which would save a
    // product; the shipped runs follow this order (that one change moved the
    // quickstart's PPO onto a trajectory that exploits its reward model:
    // bench/RESULTS.md, Experiments, stop 29).
    for (int64_t k = 0; k < I; ++k) {
      const A gv = load(g, k);
      store(o, k, gv * sigmoid(gv) * load(u, k));
    }
  }
}

// d silu(g) / dg = s * (1 + g * (1 - s)), s = sigmoid(g).
template <typename S>
REAL_EXT_INLINE void silu_mul_bwd_t(const S* dout, const S* gate, int64_t ldg, const S* up, int64_t ldu, S* dgate,
                                    S* dup, int64_t r0, int64_t r1, int64_t I) {
  using A = typename Acc<S>::type;
  for (int64_t r = r0; r < r1; ++r) {
    const S* d = dout + r * I;
    const S* g = gate + r * ldg;
    const S* u = up + r * ldu;
    for (int64_t k = 0; k < I; ++k) {
      const A gv = load(g, k), dv = load(d, k), s = sigmoid(gv);
      store(dgate + r * I, k, dv * load(u, k) * s * (A(1) + gv * (A(1) - s)));
      store(dup + r * I, k, dv * gv * s);
    }
  }
}

// One ISA-cloned entry per storage type (clones cannot be templates); wide:
// wide_vectors(), vec16 steps (else vec8).
#define REAL_EXT_LAYER_ENTRIES(S)                                                                                  \
  REAL_EXT_CPU_CLONES void rms_fwd(const S* x, int64_t ldx, const S* w, S* out, Acc<S>::type* rstd, int64_t r0,    \
                                   int64_t r1, int64_t H, double eps, bool wide) {                                 \
    if (wide) return rms_fwd_t<vec16>(x, ldx, w, out, rstd, r0, r1, H, eps);                                       \
    rms_fwd_t<vec8>(x, ldx, w, out, rstd, r0, r1, H, eps);                                                         \
  }                                                                                                                \
  REAL_EXT_CPU_CLONES void rms_bwd(const S* dout, const S* x, int64_t ldx, const S* w, const Acc<S>::type* rstd,  \
                                   S* dx, Acc<S>::type* dw_part, int64_t r0, int64_t r1, int64_t H, bool wide) {   \
    if (wide) return rms_bwd_t<vec16>(dout, x, ldx, w, rstd, dx, dw_part, r0, r1, H);                              \
    rms_bwd_t<vec8>(dout, x, ldx, w, rstd, dx, dw_part, r0, r1, H);                                                \
  }                                                                                                                \
  REAL_EXT_CPU_CLONES void rope_rows(const S* x, int64_t sx0, int64_t sx1, const S* cos, const S* sin, S* out,     \
                                     int64_t r0, int64_t r1, int64_t heads, int64_t D, bool transpose, bool wide) {\
    if (wide) return rope_t<vec16>(x, sx0, sx1, cos, sin, out, r0, r1, heads, D, transpose);                       \
    rope_t<vec8>(x, sx0, sx1, cos, sin, out, r0, r1, heads, D, transpose);                                         \
  }                                                                                                                \
  REAL_EXT_CPU_CLONES void silu_mul_fwd_rows(const S* gate, int64_t ldg, const S* up, int64_t ldu, S* out,         \
                                             int64_t r0, int64_t r1, int64_t I) {                                  \
    silu_mul_fwd_t(gate, ldg, up, ldu, out, r0, r1, I);                                                            \
  }                                                                                                                \
  REAL_EXT_CPU_CLONES void silu_mul_bwd_rows(const S* dout, const S* gate, int64_t ldg, const S* up, int64_t ldu,  \
                                             S* dgate, S* dup, int64_t r0, int64_t r1, int64_t I) {                \
    silu_mul_bwd_t(dout, gate, ldg, up, ldu, dgate, dup, r0, r1, I);                                               \
  }
REAL_EXT_LAYER_ENTRIES(float)
REAL_EXT_LAYER_ENTRIES(double)
REAL_EXT_LAYER_ENTRIES(uint16_t)
#undef REAL_EXT_LAYER_ENTRIES

// Calls f with a typed null pointer of x's storage type (uint16_t for bfloat16).
template <typename F>
void dispatch_storage(const at::Tensor& x, F&& f) {
  switch (x.scalar_type()) {
    case at::kDouble: f(static_cast<double*>(nullptr)); break;
    case at::kBFloat16: f(static_cast<uint16_t*>(nullptr)); break;
    default: f(static_cast<float*>(nullptr)); break;
  }
}

template <typename S>
S* ptr(const at::Tensor& t) {
  return static_cast<S*>(t.data_ptr());
}

int64_t grain_rows(int64_t row_elems) { return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, row_elems)); }

std::tuple<at::Tensor, at::Tensor> rms_norm_fwd_cpu(const at::Tensor& x_in, const at::Tensor& weight_in, double eps) {
  check_rms_norm_args(x_in, weight_in, eps);
  const at::Tensor x = rows_view(x_in), w = weight_in.contiguous();
  const int64_t T = x.size(0), H = x.size(1);
  at::Tensor out = at::empty({T, H}, x.options());
  at::Tensor rstd = at::empty({T}, x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  dispatch_storage(x, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    at::parallel_for(0, T, grain_rows(H), [&](int64_t r0, int64_t r1) {
      rms_fwd(ptr<S>(x), x.stride(0), ptr<S>(w), ptr<S>(out), ptr<typename Acc<S>::type>(rstd), r0, r1, H, eps,
              wide_vectors());
    });
  });
  return {out, rstd};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_bwd_cpu(const at::Tensor& dout_in, const at::Tensor& x_in,
                                                    const at::Tensor& weight_in, const at::Tensor& rstd_in) {
  check_rms_norm_bwd_args(dout_in, x_in, weight_in, rstd_in);
  const at::Tensor dout = dout_in.contiguous(), x = rows_view(x_in), w = weight_in.contiguous(),
                   rstd = rstd_in.contiguous();
  const int64_t T = x.size(0), H = x.size(1);
  at::Tensor dx = at::empty({T, H}, x.options());
  // dweight sums over rows: each chunk of rows into its own partial row, then one sum.
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(T, at::get_num_threads()));
  at::Tensor dw_part = at::zeros({chunks, H}, rstd.options());
  dispatch_storage(x, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    using A = typename Acc<S>::type;
    const int64_t per = (T + chunks - 1) / chunks;
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c)
        rms_bwd(ptr<S>(dout), ptr<S>(x), x.stride(0), ptr<S>(w), ptr<A>(rstd), ptr<S>(dx), ptr<A>(dw_part) + c * H,
                std::min(T, c * per), std::min(T, (c + 1) * per), H, wide_vectors());
    });
  });
  return {dx, dw_part.sum(0).to(x.scalar_type())};
}

at::Tensor rope_cpu(const at::Tensor& x_in, const at::Tensor& cos_in, const at::Tensor& sin_in, bool transpose) {
  check_rope_args(x_in, cos_in, sin_in);
  const at::Tensor x = x_in.stride(2) == 1 ? x_in : x_in.contiguous(), cos = cos_in.contiguous(),
                   sin = sin_in.contiguous();
  const int64_t T = x.size(0), heads = x.size(1), D = x.size(2);
  at::Tensor out = at::empty({T, heads, D}, x.options());
  dispatch_storage(x, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    at::parallel_for(0, T, grain_rows(heads * D), [&](int64_t r0, int64_t r1) {
      rope_rows(ptr<S>(x), x.stride(0), x.stride(1), ptr<S>(cos), ptr<S>(sin), ptr<S>(out), r0, r1, heads, D,
                transpose, wide_vectors());
    });
  });
  return out;
}

at::Tensor silu_mul_fwd_cpu(const at::Tensor& gate_in, const at::Tensor& up_in) {
  check_silu_mul_args("silu_mul", gate_in, up_in);
  const at::Tensor gate = rows_view(gate_in), up = rows_view(up_in);
  const int64_t T = gate.size(0), I = gate.size(1);
  at::Tensor out = at::empty({T, I}, gate.options());
  dispatch_storage(gate, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    at::parallel_for(0, T, grain_rows(I), [&](int64_t r0, int64_t r1) {
      silu_mul_fwd_rows(ptr<S>(gate), gate.stride(0), ptr<S>(up), up.stride(0), ptr<S>(out), r0, r1, I);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> silu_mul_bwd_cpu(const at::Tensor& dout_in, const at::Tensor& gate_in,
                                                    const at::Tensor& up_in) {
  check_silu_mul_args("silu_mul_bwd", gate_in, up_in);
  check_silu_mul_args("silu_mul_bwd", dout_in, gate_in);
  const at::Tensor dout = dout_in.contiguous(), gate = rows_view(gate_in), up = rows_view(up_in);
  const int64_t T = gate.size(0), I = gate.size(1);
  at::Tensor dgate = at::empty({T, I}, gate.options()), dup = at::empty({T, I}, gate.options());
  dispatch_storage(gate, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    at::parallel_for(0, T, grain_rows(I), [&](int64_t r0, int64_t r1) {
      silu_mul_bwd_rows(ptr<S>(dout), ptr<S>(gate), gate.stride(0), ptr<S>(up), up.stride(0), ptr<S>(dgate),
                        ptr<S>(dup), r0, r1, I);
    });
  });
  return {dgate, dup};
}

}  // namespace

TORCH_LIBRARY_IMPL(real_ext, CPU, m) {
  m.impl("rms_norm_fwd", &rms_norm_fwd_cpu);
  m.impl("rms_norm_bwd", &rms_norm_bwd_cpu);
  m.impl("rope", &rope_cpu);
  m.impl("silu_mul_fwd", &silu_mul_fwd_cpu);
  m.impl("silu_mul_bwd", &silu_mul_bwd_cpu);
}

}  // namespace real_ext
