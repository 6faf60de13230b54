// Pieces shared by the CPU attention kernels (packed: tiled and short-sequence;
// decode): a sequence's place and causal mask, softmax over score rows.
#pragma once

#include <algorithm>
#include <limits>
#include <utility>
#include <vector>

#include "attention/varlen_attn_checks.h"
#include "common/cpu_math.h"

namespace real_ext {

template <typename T>
constexpr T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

// Where one sequence's queries and keys sit and how causality shifts them.
struct SeqView {
  int64_t q0, lq, k0, lk;
  // Number of keys query i (0-based in its sequence) may see: bottom-right aligned.
  int64_t visible(int64_t i, bool causal) const {
    return causal ? std::clamp<int64_t>(i + (lk - lq) + 1, 0, lk) : lk;
  }
};

// Row-wise tile arithmetic: inlined into the callers, which are compiled per
// ISA (REAL_EXT_CPU_CLONES).

// row[j] = exp(row[j] - mx) for j < c, mx the larger of `floor` and the
// row's max; returns (mx, sum of the exps). 16 independent lanes so that the
// reductions vectorize without -ffast-math.
template <typename T>
REAL_EXT_INLINE std::pair<T, T> exp_row_t(T* row, int64_t c, T floor) {
  T lanes[16];
  std::fill(lanes, lanes + 16, neg_inf<T>());
  int64_t j = 0;
  for (; j + 16 <= c; j += 16)
    for (int t = 0; t < 16; ++t) lanes[t] = row[j + t] > lanes[t] ? row[j + t] : lanes[t];
  T mx = floor;
  for (int t = 0; t < 16; ++t) mx = lanes[t] > mx ? lanes[t] : mx;
  for (; j < c; ++j) mx = row[j] > mx ? row[j] : mx;
  T sums[16] = {0};
  j = 0;
  for (; j + 16 <= c; j += 16)
    for (int t = 0; t < 16; ++t) {
      const T p = exp_t(row[j + t] - mx);
      row[j + t] = p;
      sums[t] += p;
    }
  T sum = 0;
  for (int t = 0; t < 16; ++t) sum += sums[t];
  for (; j < c; ++j) {
    row[j] = exp_t(row[j] - mx);
    sum += row[j];
  }
  return {mx, sum};
}

// Online-softmax update of a score tile (rows x n, row stride ld). Row r has
// cnt[r] real keys; the rest of the row becomes 0. Updates the running max m
// and sum l, writes P in place and the rescale factor exp(m_old - m_new).
template <typename T>
REAL_EXT_INLINE void softmax_tile_update_t(T* s, int64_t rows, int64_t n, int64_t ld, const int64_t* cnt, T* m,
                                           T* l, T* alpha) {
  for (int64_t r = 0; r < rows; ++r) {
    T* row = s + r * ld;
    const int64_t c = cnt[r];
    if (c <= 0) {
      std::fill(row, row + n, T(0));
      alpha[r] = T(1);
      continue;
    }
    const auto [mx, sum] = exp_row_t(row, c, m[r]);
    std::fill(row + c, row + n, T(0));
    const T a = m[r] == neg_inf<T>() ? T(0) : exp_t(m[r] - mx);
    alpha[r] = a;
    l[r] = l[r] * a + sum;
    m[r] = mx;
  }
}

// P = exp(S - lse) on the visible part of each row, 0 elsewhere (backward).
template <typename T>
REAL_EXT_INLINE void probs_from_lse_t(T* s, int64_t rows, int64_t n, int64_t ld, const int64_t* cnt, const float* lse) {
  for (int64_t r = 0; r < rows; ++r) {
    T* row = s + r * ld;
    const int64_t c = lse[r] == neg_inf<float>() ? 0 : std::max<int64_t>(cnt[r], 0);
    const T sub = lse[r];
    for (int64_t j = 0; j < c; ++j) row[j] = exp_t(row[j] - sub);
    std::fill(row + c, row + n, T(0));
  }
}

inline std::vector<SeqView> seq_views(const VarlenAttnShape& s) {
  std::vector<SeqView> v(s.batch);
  for (int64_t b = 0; b < s.batch; ++b)
    v[b] = {s.cu_q[b], s.cu_q[b + 1] - s.cu_q[b], s.cu_k[b], s.cu_k[b + 1] - s.cu_k[b]};
  return v;
}

}  // namespace real_ext
