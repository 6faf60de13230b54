// Packed (varlen) attention on the CPU: the flash-attention algorithm with
// BLAS on tiles (batches of only short sequences go to varlen_attn_short_cpu). Forward: one work item per (sequence, head, query tile),
// online softmax over key tiles. Backward (FA2 order): one work item per
// (sequence, head), key tiles outer, query tiles inner, so dq/dk/dv of an item
// are written by one thread only. Memory is O(tokens * heads * head_dim) plus
// per-thread tiles; no tokens x tokens matrix is ever formed.
//
// Math is float32 for float32/bfloat16 inputs (bfloat16 is widened once up
// front) and float64 for float64 inputs (gradcheck).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "attention/attn_cpu_rows.h"
#include "attention/varlen_attn_checks.h"
#include "attention/varlen_attn_short_cpu.h"
#include "common/cpu_math.h"
#include "common/cpu_parallel.h"

namespace real_ext {
namespace {

// Tile sizes: a (kBlockQ x kBlockK) float score tile is 64 KB, which stays in L2
// next to the K/V tiles it multiplies.
constexpr int64_t kBlockQ = 64;
constexpr int64_t kBlockK = 256;
constexpr int64_t kBwdBlockQ = 64;
constexpr int64_t kBwdBlockK = 128;

// dS = P * (dP - delta_row), in place in dp.
template <typename T>
REAL_EXT_INLINE void softmax_grad_t(const T* p, T* dp, int64_t rows, int64_t n, int64_t ld, const T* delta) {
  for (int64_t r = 0; r < rows; ++r) {
    const T d = delta[r];
    const T* pr = p + r * ld;
    T* dr = dp + r * ld;
    for (int64_t j = 0; j < n; ++j) dr[j] = pr[j] * (dr[j] - d);
  }
}

template <typename T>
REAL_EXT_INLINE void scale_rows_t(T* x, int64_t rows, int64_t cols, int64_t ld, const T* factor) {
  for (int64_t r = 0; r < rows; ++r) {
    const T f = factor[r];
    if (f == T(1)) continue;
    for (int64_t j = 0; j < cols; ++j) x[r * ld + j] *= f;
  }
}

REAL_EXT_CPU_CLONES void softmax_tile_update(float* s, int64_t rows, int64_t n, int64_t ld, const int64_t* cnt,
                                             float* m, float* l, float* alpha) {
  softmax_tile_update_t(s, rows, n, ld, cnt, m, l, alpha);
}
void softmax_tile_update(double* s, int64_t rows, int64_t n, int64_t ld, const int64_t* cnt, double* m, double* l,
                         double* alpha) {
  softmax_tile_update_t(s, rows, n, ld, cnt, m, l, alpha);
}
REAL_EXT_CPU_CLONES void probs_from_lse(float* s, int64_t rows, int64_t n, int64_t ld, const int64_t* cnt,
                                        const float* lse) {
  probs_from_lse_t(s, rows, n, ld, cnt, lse);
}
void probs_from_lse(double* s, int64_t rows, int64_t n, int64_t ld, const int64_t* cnt, const float* lse) {
  probs_from_lse_t(s, rows, n, ld, cnt, lse);
}
REAL_EXT_CPU_CLONES void softmax_grad(const float* p, float* dp, int64_t rows, int64_t n, int64_t ld,
                                      const float* delta) {
  softmax_grad_t(p, dp, rows, n, ld, delta);
}
void softmax_grad(const double* p, double* dp, int64_t rows, int64_t n, int64_t ld, const double* delta) {
  softmax_grad_t(p, dp, rows, n, ld, delta);
}
REAL_EXT_CPU_CLONES void scale_rows(float* x, int64_t rows, int64_t cols, int64_t ld, const float* factor) {
  scale_rows_t(x, rows, cols, ld, factor);
}
void scale_rows(double* x, int64_t rows, int64_t cols, int64_t ld, const double* factor) {
  scale_rows_t(x, rows, cols, ld, factor);
}

// ------------------------------------------------ scheduling

// Math dtype: float64 stays float64, everything else computes in float32.
at::ScalarType math_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// ------------------------------------------------ forward

struct FwdItem {
  int64_t b, h, i0, cost;
};

template <typename T>
void fwd_item(const FwdItem& it, const SeqView& sv, const T* q, const T* k, const T* v, T* out, float* lse,
              const VarlenAttnShape& s, T scale, bool causal, std::vector<T>& scratch) {
  const int64_t D = s.head_dim, group = s.heads_q / s.heads_kv, kvh = it.h / group;
  const int64_t ldq = s.heads_q * D, ldk = s.heads_kv * D;
  const int64_t rows = std::min(kBlockQ, sv.lq - it.i0);
  const int64_t kv_end = sv.visible(it.i0 + rows - 1, causal);
  scratch.resize(kBlockQ * kBlockK + kBlockQ * D + 3 * kBlockQ);
  T* S = scratch.data();
  T* O = S + kBlockQ * kBlockK;
  T* m = O + kBlockQ * D;
  T* l = m + kBlockQ;
  T* alpha = l + kBlockQ;
  int64_t cnt[kBlockQ];
  std::fill(O, O + rows * D, T(0));
  std::fill(m, m + rows, neg_inf<T>());
  std::fill(l, l + rows, T(0));
  const T* Q = q + (sv.q0 + it.i0) * ldq + it.h * D;
  for (int64_t j0 = 0; j0 < kv_end; j0 += kBlockK) {
    const int64_t n = std::min(kBlockK, kv_end - j0);
    const T* K = k + (sv.k0 + j0) * ldk + kvh * D;
    const T* V = v + (sv.k0 + j0) * ldk + kvh * D;
    gemm_rowmajor<T>(false, true, rows, n, D, scale, Q, ldq, K, ldk, T(0), S, kBlockK);
    for (int64_t r = 0; r < rows; ++r) cnt[r] = std::min(n, sv.visible(it.i0 + r, causal) - j0);
    softmax_tile_update(S, rows, n, kBlockK, cnt, m, l, alpha);
    scale_rows(O, rows, D, D, alpha);
    gemm_rowmajor<T>(false, false, rows, D, n, T(1), S, kBlockK, V, ldk, T(1), O, D);
  }
  T* Out = out + (sv.q0 + it.i0) * ldq + it.h * D;
  float* Lse = lse + it.h * s.total_q + sv.q0 + it.i0;
  for (int64_t r = 0; r < rows; ++r) {
    const T inv = l[r] > T(0) ? T(1) / l[r] : T(0);
    for (int64_t d = 0; d < D; ++d) Out[r * ldq + d] = O[r * D + d] * inv;
    Lse[r] = l[r] > T(0) ? static_cast<float>(m[r] + std::log(l[r])) : neg_inf<float>();
  }
}

template <typename T>
void fwd_all(const VarlenAttnShape& s, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
             at::Tensor& out, at::Tensor& lse, double scale, bool causal) {
  const std::vector<SeqView> seqs = seq_views(s);
  std::vector<FwdItem> items;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t i0 = 0; i0 < seqs[b].lq; i0 += kBlockQ) {
      const int64_t rows = std::min(kBlockQ, seqs[b].lq - i0);
      const int64_t keys = seqs[b].visible(i0 + rows - 1, causal);
      for (int64_t h = 0; h < s.heads_q; ++h) items.push_back({b, h, i0, rows * (keys + 16)});
    }
  std::stable_sort(items.begin(), items.end(), [](const FwdItem& a, const FwdItem& b) { return a.cost > b.cost; });
  const T *qp = q.data_ptr<T>(), *kp = k.data_ptr<T>(), *vp = v.data_ptr<T>();
  T* op = out.data_ptr<T>();
  float* lp = lse.data_ptr<float>();
  run_items_dynamic(static_cast<int64_t>(items.size()), [&](int64_t i) {
    thread_local std::vector<T> scratch;
    fwd_item<T>(items[i], seqs[items[i].b], qp, kp, vp, op, lp, s, static_cast<T>(scale), causal, scratch);
  });
}

std::tuple<at::Tensor, at::Tensor> varlen_attn_fwd_cpu(const at::Tensor& q, const at::Tensor& k,
                                                       const at::Tensor& v, const at::Tensor& cu_seqlens_q,
                                                       const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                                                       int64_t max_seqlen_k, double scale, bool causal) {
  const VarlenAttnShape s =
      check_varlen_attn_args("varlen_attn_fwd", q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k);
  if (varlen_attn_short_applies(s, q)) return varlen_attn_short_fwd(s, q, k, v, scale, causal);
  const at::ScalarType mt = math_dtype(q.scalar_type());
  const at::Tensor qm = q.to(mt).contiguous(), km = k.to(mt).contiguous(), vm = v.to(mt).contiguous();
  at::Tensor out = at::empty(q.sizes(), q.options().dtype(mt));
  at::Tensor lse = at::empty({s.heads_q, s.total_q}, q.options().dtype(at::kFloat));
  if (mt == at::kDouble)
    fwd_all<double>(s, qm, km, vm, out, lse, scale, causal);
  else
    fwd_all<float>(s, qm, km, vm, out, lse, scale, causal);
  return {out.to(q.scalar_type()), lse};
}

// ------------------------------------------------ backward

template <typename T>
struct BwdBuffers {
  const T *q, *k, *v, *dout, *delta;
  const float* lse;
  T *dq, *dk, *dv;  // dk, dv: (total_k, heads_q, D), one slot per query head
};

template <typename T>
void bwd_item(int64_t b, int64_t h, const SeqView& sv, const BwdBuffers<T>& x, const VarlenAttnShape& s, T scale,
              bool causal, std::vector<T>& scratch) {
  const int64_t D = s.head_dim, group = s.heads_q / s.heads_kv, kvh = h / group;
  const int64_t ldq = s.heads_q * D, ldk = s.heads_kv * D;
  scratch.resize(2 * kBwdBlockQ * kBwdBlockK);
  T* P = scratch.data();
  T* dP = P + kBwdBlockQ * kBwdBlockK;
  int64_t cnt[kBwdBlockQ];
  for (int64_t j0 = 0; j0 < sv.lk; j0 += kBwdBlockK) {
    const int64_t n = std::min(kBwdBlockK, sv.lk - j0);
    const T* K = x.k + (sv.k0 + j0) * ldk + kvh * D;
    const T* V = x.v + (sv.k0 + j0) * ldk + kvh * D;
    T* dK = x.dk + (sv.k0 + j0) * ldq + h * D;
    T* dV = x.dv + (sv.k0 + j0) * ldq + h * D;
    for (int64_t r = 0; r < n; ++r) {
      std::fill(dK + r * ldq, dK + r * ldq + D, T(0));
      std::fill(dV + r * ldq, dV + r * ldq + D, T(0));
    }
    // First query that sees key j0: i + (lk - lq) >= j0.
    const int64_t i_start = causal ? std::max<int64_t>(0, j0 - (sv.lk - sv.lq)) : 0;
    for (int64_t i0 = i_start; i0 < sv.lq; i0 += kBwdBlockQ) {
      const int64_t rows = std::min(kBwdBlockQ, sv.lq - i0);
      const T* Q = x.q + (sv.q0 + i0) * ldq + h * D;
      const T* dO = x.dout + (sv.q0 + i0) * ldq + h * D;
      T* dQ = x.dq + (sv.q0 + i0) * ldq + h * D;
      const float* lse = x.lse + h * s.total_q + sv.q0 + i0;
      const T* delta = x.delta + h * s.total_q + sv.q0 + i0;
      for (int64_t r = 0; r < rows; ++r) cnt[r] = std::min(n, sv.visible(i0 + r, causal) - j0);
      gemm_rowmajor<T>(false, true, rows, n, D, scale, Q, ldq, K, ldk, T(0), P, kBwdBlockK);
      probs_from_lse(P, rows, n, kBwdBlockK, cnt, lse);
      gemm_rowmajor<T>(true, false, n, D, rows, T(1), P, kBwdBlockK, dO, ldq, T(1), dV, ldq);
      gemm_rowmajor<T>(false, true, rows, n, D, T(1), dO, ldq, V, ldk, T(0), dP, kBwdBlockK);
      softmax_grad(P, dP, rows, n, kBwdBlockK, delta);
      gemm_rowmajor<T>(false, false, rows, D, n, scale, dP, kBwdBlockK, K, ldk, T(1), dQ, ldq);
      gemm_rowmajor<T>(true, false, n, D, rows, scale, dP, kBwdBlockK, Q, ldq, T(1), dK, ldq);
    }
  }
}

template <typename T>
void bwd_all(const VarlenAttnShape& s, const BwdBuffers<T>& x, double scale, bool causal) {
  const std::vector<SeqView> seqs = seq_views(s);
  std::vector<std::pair<int64_t, int64_t>> items;  // (cost, b * heads_q + h)
  for (int64_t b = 0; b < s.batch; ++b) {
    const int64_t cost = seqs[b].lq * seqs[b].lk / (causal ? 2 : 1) + seqs[b].lq + seqs[b].lk;
    for (int64_t h = 0; h < s.heads_q; ++h) items.push_back({cost, b * s.heads_q + h});
  }
  std::stable_sort(items.begin(), items.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  run_items_dynamic(static_cast<int64_t>(items.size()), [&](int64_t i) {
    thread_local std::vector<T> scratch;
    const int64_t b = items[i].second / s.heads_q, h = items[i].second % s.heads_q;
    bwd_item<T>(b, h, seqs[b], x, s, static_cast<T>(scale), causal, scratch);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_attn_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
    int64_t max_seqlen_k, double scale, bool causal) {
  const VarlenAttnShape s =
      check_varlen_attn_args("varlen_attn_bwd", q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k);
  check_varlen_attn_bwd_args("varlen_attn_bwd", s, dout, q, out, lse);
  if (varlen_attn_short_applies(s, q)) return varlen_attn_short_bwd(s, dout, q, k, v, lse, scale, causal);
  const at::ScalarType mt = math_dtype(q.scalar_type());
  const at::Tensor qm = q.to(mt).contiguous(), km = k.to(mt).contiguous(), vm = v.to(mt).contiguous(),
                   dom = dout.to(mt).contiguous(), lsef = lse.contiguous();
  // delta[h, t] = sum_d dout * out: the softmax-gradient row term.
  const at::Tensor delta = (dom * out.to(mt)).sum(-1).transpose(0, 1).contiguous();
  const auto opt = q.options().dtype(mt);
  at::Tensor dq = at::zeros(q.sizes(), opt);
  at::Tensor dk_h = at::empty({s.total_k, s.heads_q, s.head_dim}, opt);
  at::Tensor dv_h = at::empty({s.total_k, s.heads_q, s.head_dim}, opt);
  AT_DISPATCH_FLOATING_TYPES(mt, "varlen_attn_bwd_cpu", [&] {
    const BwdBuffers<scalar_t> x{qm.data_ptr<scalar_t>(),    km.data_ptr<scalar_t>(),   vm.data_ptr<scalar_t>(),
                                 dom.data_ptr<scalar_t>(),   delta.data_ptr<scalar_t>(), lsef.data_ptr<float>(),
                                 dq.data_ptr<scalar_t>(),    dk_h.data_ptr<scalar_t>(), dv_h.data_ptr<scalar_t>()};
    bwd_all<scalar_t>(s, x, scale, causal);
  });
  // GQA: a kv head's gradient is the sum over the query heads that share it.
  const int64_t group = s.heads_q / s.heads_kv;
  at::Tensor dk = group == 1 ? dk_h : dk_h.view({s.total_k, s.heads_kv, group, s.head_dim}).sum(2);
  at::Tensor dv = group == 1 ? dv_h : dv_h.view({s.total_k, s.heads_kv, group, s.head_dim}).sum(2);
  return {dq.to(q.scalar_type()), dk.to(k.scalar_type()), dv.to(v.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(real_ext, CPU, m) {
  m.impl("varlen_attn_fwd", &varlen_attn_fwd_cpu);
  m.impl("varlen_attn_bwd", &varlen_attn_bwd_cpu);
}

}  // namespace real_ext
