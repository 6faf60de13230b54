// Short-sequence packed attention on the CPU. One work item is a (sequence,
// kv head): its keys and values are widened to float32 once into per-thread
// tiles (K also transposed), then each query head of the GQA group runs
//   forward:  S = (scale Q) K^T, P = softmax(S) (causal mask), O = P V / l;
//   backward: P from lse, dP = dO V^T, dS = P (dP - rowsum(P dP)),
//             dV += P^T dO, dK += dS^T (scale Q), dQ = scale dS K,
// with dK, dV summed over the group in the item's tiles and stored once. The
// products are register-blocked loops (4 rows x up to 64 columns of float32
// accumulators with AVX-512, 4 x 16 with AVX2) over tiles that stay in L1/L2;
// nothing is packed per call.
// rowsum(P dP) equals the usual dO . O without reading O (stored rounded in
// bfloat16).
#include "attention/varlen_attn_short_cpu.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "attention/attn_cpu_rows.h"
#include "common/check.h"
#include "common/cpu_math.h"
#include "common/cpu_parallel.h"
#include "common/cpu_vec16.h"
#include "common/cpu_vec8.h"

namespace real_ext {
namespace {

constexpr int64_t kLanes = 16;  // floats per vec16: tiles are padded to multiples of it
constexpr int64_t kRows = 4;    // rows per register block

// Register blocking of the products (kRows rows x up to kVecs vectors of
// accumulators): with AVX-512 (wide_vectors()) 4 x 4 vec16 of its 32 zmm;
// with AVX2, 4 x 2 vectors of 8 floats (one ymm each) of its 16. vec16 blocks
// there spill (two ymm per vector) and ran the products at ~4 GFLOP/s on a
// Zen 3.
struct WideBlocks {
  using Vec = vec16;
  static constexpr int kVecs = 4;
};
struct NarrowBlocks {
  using Vec = vec8;
  static constexpr int kVecs = 2;
};

REAL_EXT_INLINE int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// ------------------------------------------------ register-blocked products

// fn(std::integral_constant<int, NB>) for NB = nb in 1..kVecs of blocking B.
template <int N>
using Vecs = std::integral_constant<int, N>;
template <typename B, typename Fn>
REAL_EXT_INLINE void with_vecs(int64_t nb, const Fn& fn) {
  if constexpr (B::kVecs > 2) {
    switch (nb) {
      case 1: return fn(Vecs<1>{});
      case 2: return fn(Vecs<2>{});
      case 3: return fn(Vecs<3>{});
      default: return fn(Vecs<B::kVecs>{});
    }
  } else {
    if (nb == 1) return fn(Vecs<1>{});
    return fn(Vecs<B::kVecs>{});
  }
}

// C[r, 0:NB lanes] = sum_d X[r, d] Yt[d, 0:NB lanes] for kRows rows.
template <typename Vec, int NB>
REAL_EXT_INLINE void block_x_yt(const float* X, int64_t ldx, const float* Yt, int64_t ldy, int64_t depth, float* C,
                                int64_t ldc) {
  constexpr int64_t lanes = kVecLanes<Vec>;
  Vec acc[kRows][NB] = {};
  for (int64_t d = 0; d < depth; ++d) {
    Vec y[NB];
    for (int b = 0; b < NB; ++b) y[b] = load_vec<Vec>(Yt + d * ldy + lanes * b);
    for (int r = 0; r < kRows; ++r) {
      const float x = X[r * ldx + d];
      for (int b = 0; b < NB; ++b) acc[r][b] += x * y[b];
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int b = 0; b < NB; ++b) store_vec(C + r * ldc + lanes * b, acc[r][b]);
}

// C = X Yt on rows [0, rows) (a multiple of kRows); a block of rows needs only
// the columns its rows see (cnt), rounded up to whole vectors.
template <typename B>
REAL_EXT_INLINE void x_yt(const float* X, int64_t ldx, int64_t rows, const float* Yt, int64_t ldy, int64_t depth,
                          const int64_t* cnt, float* C, int64_t ldc) {
  using Vec = typename B::Vec;
  constexpr int64_t lanes = kVecLanes<Vec>;
  for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
    const int64_t n = *std::max_element(cnt + r0, cnt + r0 + kRows);
    for (int64_t c0 = 0; c0 < n; c0 += B::kVecs * lanes) {
      const float* x = X + r0 * ldx;
      float* c = C + r0 * ldc + c0;
      with_vecs<B>((n - c0 + lanes - 1) / lanes,
                   [&](auto nb) { block_x_yt<Vec, nb.value>(x, ldx, Yt + c0, ldy, depth, c, ldc); });
    }
  }
}

// C[r, 0:NA lanes] (+)= sum_{j < n} A[r, j] Y[j, 0:NA lanes] for kRows rows.
template <typename Vec, int NA, bool kAccumulate>
REAL_EXT_INLINE void block_a_y(const float* A, int64_t lda, const float* Y, int64_t ldy, int64_t n, float* C,
                               int64_t ldc) {
  constexpr int64_t lanes = kVecLanes<Vec>;
  Vec acc[kRows][NA] = {};
  for (int64_t j = 0; j < n; ++j) {
    Vec y[NA];
    for (int a = 0; a < NA; ++a) y[a] = load_vec<Vec>(Y + j * ldy + lanes * a);
    for (int r = 0; r < kRows; ++r) {
      const float w = A[r * lda + j];
      for (int a = 0; a < NA; ++a) acc[r][a] += w * y[a];
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int a = 0; a < NA; ++a) {
      float* c = C + r * ldc + lanes * a;
      store_vec(c, kAccumulate ? load_vec<Vec>(c) + acc[r][a] : acc[r][a]);
    }
}

// C = A Y on rows [0, rows) (a multiple of kRows): a block of rows sums over
// the columns of A its rows see (cnt; A is 0 past each row's count).
template <typename B>
REAL_EXT_INLINE void a_y(const float* A, int64_t lda, int64_t rows, const int64_t* cnt, const float* Y, int64_t ldy,
                         int64_t D, float* C, int64_t ldc) {
  using Vec = typename B::Vec;
  constexpr int64_t lanes = kVecLanes<Vec>;
  for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
    const int64_t n = *std::max_element(cnt + r0, cnt + r0 + kRows);
    for (int64_t d0 = 0; d0 < D; d0 += B::kVecs * lanes)
      with_vecs<B>(std::min<int64_t>(B::kVecs, (D - d0) / lanes), [&](auto na) {
        block_a_y<Vec, na.value, false>(A + r0 * lda, lda, Y + d0, ldy, n, C + r0 * ldc + d0, ldc);
      });
  }
}

// C[j, :] += sum_{i in [first(j0), rows_a)} A[i, j] Y[i, :] for the kRows
// columns j of A from j0, i.e. C += A^T Y, with A^T's rows read as columns
// (A is 0 where a query does not see a key, so rows before first are skipped).
template <typename Vec, int NA>
REAL_EXT_INLINE void block_at_y(const float* A, int64_t lda, int64_t i0, int64_t i1, const float* Y, int64_t ldy,
                                float* C, int64_t ldc) {
  constexpr int64_t lanes = kVecLanes<Vec>;
  Vec acc[kRows][NA] = {};
  for (int64_t i = i0; i < i1; ++i) {
    Vec y[NA];
    for (int a = 0; a < NA; ++a) y[a] = load_vec<Vec>(Y + i * ldy + lanes * a);
    for (int r = 0; r < kRows; ++r) {
      const float w = A[i * lda + r];
      for (int a = 0; a < NA; ++a) acc[r][a] += w * y[a];
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int a = 0; a < NA; ++a) {
      float* c = C + r * ldc + lanes * a;
      store_vec(c, load_vec<Vec>(c) + acc[r][a]);
    }
}

// C[0:cols, :] += A^T Y, A (rows_a x cols), Y (rows_a x D); first_row(j0) is
// the first row of A not 0 in columns j0...
template <typename B, typename First>
REAL_EXT_INLINE void at_y(const float* A, int64_t lda, int64_t rows_a, int64_t cols, const First& first_row,
                          const float* Y, int64_t ldy, int64_t D, float* C, int64_t ldc) {
  using Vec = typename B::Vec;
  constexpr int64_t lanes = kVecLanes<Vec>;
  for (int64_t j0 = 0; j0 < cols; j0 += kRows) {
    const int64_t i0 = first_row(j0);
    for (int64_t d0 = 0; d0 < D; d0 += B::kVecs * lanes)
      with_vecs<B>(std::min<int64_t>(B::kVecs, (D - d0) / lanes), [&](auto na) {
        block_at_y<Vec, na.value>(A + j0, lda, i0, rows_a, Y + d0, ldy, C + j0 * ldc + d0, ldc);
      });
  }
}

// ------------------------------------------------ tiles

// dst[r, :] = scale * src[r, :] (float32) for r < rows, 0 up to rows_padded.
template <typename T>
REAL_EXT_INLINE void load_rows(const T* src, int64_t ld, int64_t rows, int64_t rows_padded, int64_t D, float scale,
                               float* dst) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t d = 0; d < D; d += kLanes) store16(dst + r * D + d, load16(src + r * ld + d) * scale);
  std::fill(dst + rows * D, dst + rows_padded * D, 0.f);
}

// dst[d, r] = src[r, d] (float32) for r < rows, 0 up to ldt.
template <typename T>
REAL_EXT_INLINE void load_cols(const T* src, int64_t ld, int64_t rows, int64_t D, float* dst, int64_t ldt) {
  for (int64_t d = 0; d < D; ++d) {
    float* col = dst + d * ldt;
    for (int64_t r = 0; r < rows; ++r) col[r] = load(src, r * ld + d);
    std::fill(col + rows, col + ldt, 0.f);
  }
}

template <typename T>
REAL_EXT_INLINE void store_rows(const float* src, int64_t rows, int64_t D, T* dst, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t d = 0; d < D; d += kLanes) store16(dst + r * ld + d, load16(src + r * D + d));
}

// A call's inputs: token rows of (heads, D), row stride ld (elements).
template <typename T>
struct Mat {
  T* p;
  int64_t ld;
  T* at(int64_t token, int64_t head, int64_t D) const { return p + token * ld + head * D; }
};

template <typename T>
Mat<const T> in_mat(const at::Tensor& t) {
  return {reinterpret_cast<const T*>(t.data_ptr()), t.stride(0)};
}
template <typename T>
Mat<T> out_mat(at::Tensor& t) {
  return {reinterpret_cast<T*>(t.data_ptr()), t.stride(0)};
}

struct Item {
  int64_t b, g, cost;
};

std::vector<Item> items_by_cost(const std::vector<SeqView>& seqs, int64_t heads_kv, int64_t group) {
  std::vector<Item> items;
  for (int64_t b = 0; b < static_cast<int64_t>(seqs.size()); ++b)
    for (int64_t g = 0; g < heads_kv; ++g)
      items.push_back({b, g, group * (seqs[b].lq + 4) * (seqs[b].lk + 16)});
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.cost > b.cost; });
  return items;
}

// Per row: the keys it sees; padding rows see none.
void visible_counts(const SeqView& sv, bool causal, int64_t rows_padded, int64_t* cnt) {
  for (int64_t i = 0; i < rows_padded; ++i) cnt[i] = i < sv.lq ? sv.visible(i, causal) : 0;
}

// ------------------------------------------------ forward

template <typename T>
struct FwdArgs {
  int64_t group, D, total_q;
  float scale;
  bool causal;
  Mat<const T> q, k, v;
  Mat<T> out;
  float* lse;
};

template <typename B, typename T>
REAL_EXT_INLINE void fwd_item_t(const SeqView& sv, int64_t g, const FwdArgs<T>& x, std::vector<float>& scratch) {
  const int64_t group = x.group, D = x.D;
  const bool causal = x.causal;
  const int64_t lq4 = round_up(sv.lq, kRows), lk16 = round_up(std::max<int64_t>(sv.lk, 1), kLanes);
  scratch.resize(2 * D * lk16 + 2 * lq4 * D + lq4 * lk16 + 3 * lq4);
  float* Kt = scratch.data();         // D x lk16
  float* V = Kt + D * lk16;           // lk16 x D
  float* Q = V + D * lk16;            // lq4 x D, scaled
  float* O = Q + lq4 * D;             // lq4 x D
  float* S = O + lq4 * D;             // lq4 x lk16
  float* m = S + lq4 * lk16;
  float* l = m + lq4;
  float* alpha = l + lq4;
  int64_t cnt[kShortSeqLen + kRows];
  visible_counts(sv, causal, lq4, cnt);
  load_cols(x.k.at(sv.k0, g, D), x.k.ld, sv.lk, D, Kt, lk16);
  load_rows(x.v.at(sv.k0, g, D), x.v.ld, sv.lk, sv.lk, D, 1.f, V);
  for (int64_t h = g * group; h < (g + 1) * group; ++h) {
    load_rows(x.q.at(sv.q0, h, D), x.q.ld, sv.lq, lq4, D, x.scale, Q);
    x_yt<B>(Q, D, lq4, Kt, lk16, D, cnt, S, lk16);
    std::fill(m, m + lq4, neg_inf<float>());
    std::fill(l, l + lq4, 0.f);
    softmax_tile_update_t(S, lq4, lk16, lk16, cnt, m, l, alpha);
    a_y<B>(S, lk16, lq4, cnt, V, D, D, O, D);
    float* lse_h = x.lse + h * x.total_q + sv.q0;
    for (int64_t i = 0; i < sv.lq; ++i) {
      const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;
      for (int64_t d = 0; d < D; d += kLanes) store16(O + i * D + d, load16(O + i * D + d) * inv);
      lse_h[i] = l[i] > 0.f ? m[i] + std::log(l[i]) : neg_inf<float>();
    }
    store_rows(O, sv.lq, D, x.out.at(sv.q0, h, D), x.out.ld);
  }
}

// The instances, compiled per ISA; wide: wide_vectors().
REAL_EXT_CPU_CLONES void fwd_item(const SeqView& sv, int64_t g, const FwdArgs<float>& x, std::vector<float>& scratch,
                                  bool wide) {
  wide ? fwd_item_t<WideBlocks>(sv, g, x, scratch) : fwd_item_t<NarrowBlocks>(sv, g, x, scratch);
}
REAL_EXT_CPU_CLONES void fwd_item(const SeqView& sv, int64_t g, const FwdArgs<uint16_t>& x,
                                  std::vector<float>& scratch, bool wide) {
  wide ? fwd_item_t<WideBlocks>(sv, g, x, scratch) : fwd_item_t<NarrowBlocks>(sv, g, x, scratch);
}

template <typename T>
void fwd_all(const VarlenAttnShape& s, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
             at::Tensor& out, at::Tensor& lse, float scale, bool causal) {
  const std::vector<SeqView> seqs = seq_views(s);
  const int64_t D = s.head_dim, group = s.heads_q / s.heads_kv;
  const std::vector<Item> items = items_by_cost(seqs, s.heads_kv, group);
  const FwdArgs<T> x{group, D, s.total_q, scale, causal, in_mat<T>(q), in_mat<T>(k), in_mat<T>(v), out_mat<T>(out),
                     lse.data_ptr<float>()};
  const bool wide = wide_vectors();
  run_items_dynamic(static_cast<int64_t>(items.size()), [&](int64_t i) {
    thread_local std::vector<float> scratch;
    fwd_item(seqs[items[i].b], items[i].g, x, scratch, wide);
  });
}

// ------------------------------------------------ backward

template <typename T>
struct BwdArgs {
  int64_t group, D, total_q;
  float scale;
  bool causal;
  Mat<const T> q, k, v, dout;
  const float* lse;
  Mat<T> dq, dk, dv;
};

template <typename B, typename T>
REAL_EXT_INLINE void bwd_item_t(const SeqView& sv, int64_t g, const BwdArgs<T>& x, std::vector<float>& scratch) {
  const int64_t group = x.group, D = x.D;
  const bool causal = x.causal;
  const int64_t lq4 = round_up(sv.lq, kRows), lk16 = round_up(std::max<int64_t>(sv.lk, 1), kLanes);
  scratch.resize(3 * D * lk16 + 2 * lk16 * D + 3 * lq4 * D + 2 * lq4 * lk16);
  float* Kt = scratch.data();     // D x lk16
  float* Vt = Kt + D * lk16;      // D x lk16
  float* K = Vt + D * lk16;       // lk16 x D
  float* dK = K + lk16 * D;       // lk16 x D, summed over the group
  float* dV = dK + lk16 * D;      // lk16 x D, summed over the group
  float* Q = dV + lk16 * D;       // lq4 x D, scaled
  float* dO = Q + lq4 * D;        // lq4 x D
  float* dQ = dO + lq4 * D;       // lq4 x D
  float* P = dQ + lq4 * D;        // lq4 x lk16
  float* dS = P + lq4 * lk16;     // lq4 x lk16: dP, then dS in place
  int64_t cnt[kShortSeqLen + kRows];
  visible_counts(sv, causal, lq4, cnt);
  load_cols(x.k.at(sv.k0, g, D), x.k.ld, sv.lk, D, Kt, lk16);
  load_cols(x.v.at(sv.k0, g, D), x.v.ld, sv.lk, D, Vt, lk16);
  load_rows(x.k.at(sv.k0, g, D), x.k.ld, sv.lk, sv.lk, D, 1.f, K);
  std::fill(dK, dK + 2 * lk16 * D, 0.f);
  // Queries before this one see none of the keys from j0 on.
  auto first_query = [&](int64_t j0) { return causal ? std::clamp<int64_t>(j0 - (sv.lk - sv.lq), 0, sv.lq) : 0; };
  for (int64_t h = g * group; h < (g + 1) * group; ++h) {
    const float* lse_h = x.lse + h * x.total_q + sv.q0;
    load_rows(x.q.at(sv.q0, h, D), x.q.ld, sv.lq, lq4, D, x.scale, Q);
    load_rows(x.dout.at(sv.q0, h, D), x.dout.ld, sv.lq, lq4, D, 1.f, dO);
    x_yt<B>(Q, D, lq4, Kt, lk16, D, cnt, P, lk16);
    probs_from_lse_t(P, sv.lq, lk16, lk16, cnt, lse_h);
    std::fill(P + sv.lq * lk16, P + lq4 * lk16, 0.f);
    x_yt<B>(dO, D, lq4, Vt, lk16, D, cnt, dS, lk16);
    for (int64_t i = 0; i < lq4; ++i) {
      float* p = P + i * lk16;
      float* ds = dS + i * lk16;
      const int64_t c = i < sv.lq && lse_h[i] != neg_inf<float>() ? cnt[i] : 0;
      float delta = 0.f;
      for (int64_t j = 0; j < c; ++j) delta += p[j] * ds[j];
      for (int64_t j = 0; j < c; ++j) ds[j] = p[j] * (ds[j] - delta);
      std::fill(ds + c, ds + lk16, 0.f);
    }
    const int64_t lk4 = round_up(sv.lk, kRows);
    at_y<B>(P, lk16, sv.lq, lk4, first_query, dO, D, D, dV, D);
    at_y<B>(dS, lk16, sv.lq, lk4, first_query, Q, D, D, dK, D);
    a_y<B>(dS, lk16, lq4, cnt, K, D, D, dQ, D);
    for (int64_t i = 0; i < sv.lq; ++i)
      for (int64_t d = 0; d < D; d += kLanes) store16(dQ + i * D + d, load16(dQ + i * D + d) * x.scale);
    store_rows(dQ, sv.lq, D, x.dq.at(sv.q0, h, D), x.dq.ld);
  }
  store_rows(dK, sv.lk, D, x.dk.at(sv.k0, g, D), x.dk.ld);
  store_rows(dV, sv.lk, D, x.dv.at(sv.k0, g, D), x.dv.ld);
}

REAL_EXT_CPU_CLONES void bwd_item(const SeqView& sv, int64_t g, const BwdArgs<float>& x, std::vector<float>& scratch,
                                  bool wide) {
  wide ? bwd_item_t<WideBlocks>(sv, g, x, scratch) : bwd_item_t<NarrowBlocks>(sv, g, x, scratch);
}
REAL_EXT_CPU_CLONES void bwd_item(const SeqView& sv, int64_t g, const BwdArgs<uint16_t>& x,
                                  std::vector<float>& scratch, bool wide) {
  wide ? bwd_item_t<WideBlocks>(sv, g, x, scratch) : bwd_item_t<NarrowBlocks>(sv, g, x, scratch);
}

template <typename T>
void bwd_all(const VarlenAttnShape& s, const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
             const at::Tensor& v, const at::Tensor& lse, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, float scale,
             bool causal) {
  const std::vector<SeqView> seqs = seq_views(s);
  const int64_t D = s.head_dim, group = s.heads_q / s.heads_kv;
  const std::vector<Item> items = items_by_cost(seqs, s.heads_kv, group);
  const BwdArgs<T> x{group,           D,           s.total_q,         scale,
                     causal,          in_mat<T>(q), in_mat<T>(k),      in_mat<T>(v),
                     in_mat<T>(dout), lse.data_ptr<float>(), out_mat<T>(dq), out_mat<T>(dk),
                     out_mat<T>(dv)};
  const bool wide = wide_vectors();
  run_items_dynamic(static_cast<int64_t>(items.size()), [&](int64_t i) {
    thread_local std::vector<float> scratch;
    bwd_item(seqs[items[i].b], items[i].g, x, scratch, wide);
  });
}

}  // namespace

bool varlen_attn_short_applies(const VarlenAttnShape& s, const at::Tensor& q) {
  const auto dt = q.scalar_type();
  if (!(dt == at::kFloat || dt == at::kBFloat16) || s.head_dim % kLanes != 0) return false;
  for (int64_t b = 0; b < s.batch; ++b)
    if (s.cu_q[b + 1] - s.cu_q[b] > kShortSeqLen || s.cu_k[b + 1] - s.cu_k[b] > kShortSeqLen) return false;
  return true;
}

std::tuple<at::Tensor, at::Tensor> varlen_attn_short_fwd(const VarlenAttnShape& s, const at::Tensor& q,
                                                         const at::Tensor& k, const at::Tensor& v, double scale,
                                                         bool causal) {
  const at::Tensor qr = token_rows_view(q), kr = token_rows_view(k), vr = token_rows_view(v);
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = at::empty({s.heads_q, s.total_q}, q.options().dtype(at::kFloat));
  if (q.scalar_type() == at::kBFloat16)
    fwd_all<uint16_t>(s, qr, kr, vr, out, lse, static_cast<float>(scale), causal);
  else
    fwd_all<float>(s, qr, kr, vr, out, lse, static_cast<float>(scale), causal);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_attn_short_bwd(const VarlenAttnShape& s, const at::Tensor& dout,
                                                                     const at::Tensor& q, const at::Tensor& k,
                                                                     const at::Tensor& v, const at::Tensor& lse,
                                                                     double scale, bool causal) {
  const at::Tensor qr = token_rows_view(q), kr = token_rows_view(k), vr = token_rows_view(v);
  const at::Tensor dor = token_rows_view(dout);
  const at::Tensor lsec = lse.contiguous();
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(k.sizes(), k.options());
  at::Tensor dv = at::empty(v.sizes(), v.options());
  if (q.scalar_type() == at::kBFloat16)
    bwd_all<uint16_t>(s, dor, qr, kr, vr, lsec, dq, dk, dv, static_cast<float>(scale), causal);
  else
    bwd_all<float>(s, dor, qr, kr, vr, lsec, dq, dk, dv, static_cast<float>(scale), causal);
  return {dq, dk, dv};
}

}  // namespace real_ext
