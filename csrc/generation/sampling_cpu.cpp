// Fused token sampling on the CPU, rows in parallel. Per row: one scaled float32
// copy z = logits / temperature (banned ids set to -inf), a vectorized max and
// exp pass, then
//   top-k: the k-th largest z, and
//   top-p: the largest z* whose tokens {z >= z*} carry mass >= top_p, both by
//          a histogram (of counts / of mass) over z above a lower bound of the
//          answer, finished by a weighted quickselect in the bucket holding it;
//   draw:  inverse CDF in token order, located by 256-token block masses.
// Every threshold is a value of z and every keep test is `z >= threshold`, so
// ties at either boundary are kept, as on CUDA (sampling_kernel.cu).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common/cpu_math.h"
#include "generation/sampling_checks.h"

namespace real_ext {
namespace {

constexpr int64_t kLanes = 16;      // independent accumulators: lets -O3 vectorize the reductions
constexpr int64_t kBlock = 256;    // tokens per block of the inverse-CDF search
constexpr int32_t kBuckets = 2048;  // histogram of the top-k / top-p threshold search
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ------------------------------------------------ vectorized row passes

REAL_EXT_CPU_CLONES void scale_row(const float* x, int64_t n, float temperature, float* z) {
  for (int64_t i = 0; i < n; ++i) z[i] = x[i] / temperature;
}
REAL_EXT_CPU_CLONES void scale_row(const uint16_t* x, int64_t n, float temperature, float* z) {
  for (int64_t i = 0; i < n; ++i) z[i] = bf16_bits_to_float(x[i]) / temperature;
}

REAL_EXT_CPU_CLONES float row_max(const float* z, int64_t n) {
  float acc[kLanes];
  for (int64_t j = 0; j < kLanes; ++j) acc[j] = kNegInf;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) acc[j] = z[i + j] > acc[j] ? z[i + j] : acc[j];
  float m = kNegInf;
  for (; i < n; ++i) m = z[i] > m ? z[i] : m;
  for (int64_t j = 0; j < kLanes; ++j) m = acc[j] > m ? acc[j] : m;
  return m;
}

// e[i] = exp(z[i] - m); returns the sum of e (float64 accumulators).
REAL_EXT_CPU_CLONES double exp_shifted(const float* z, int64_t n, float m, float* e) {
  for (int64_t i = 0; i < n; ++i) e[i] = fast_expf(z[i] - m);
  double acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) acc[j] += e[i + j];
  double s = 0;
  for (; i < n; ++i) s += e[i];
  for (int64_t j = 0; j < kLanes; ++j) s += acc[j];
  return s;
}

// Sum of e over the tokens with z >= thr. NOTE: a multiply by the 0/1 mask,
// not a select: GCC 12 vectorizes only this form with the float64 accumulators.
REAL_EXT_CPU_CLONES double mass_at_least(const float* z, const float* e, int64_t n, float thr) {
  double acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) acc[j] += e[i + j] * static_cast<float>(z[i + j] >= thr);
  double s = 0;
  for (; i < n; ++i) s += e[i] * static_cast<float>(z[i] >= thr);
  for (int64_t j = 0; j < kLanes; ++j) s += acc[j];
  return s;
}

// The smallest finite z (+inf if none).
REAL_EXT_CPU_CLONES float row_min_finite(const float* z, int64_t n) {
  const float inf = std::numeric_limits<float>::infinity();
  float acc[kLanes];
  for (int64_t j = 0; j < kLanes; ++j) acc[j] = inf;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) acc[j] = z[i + j] < acc[j] && z[i + j] > kNegInf ? z[i + j] : acc[j];
  float v = inf;
  for (; i < n; ++i) v = z[i] < v && z[i] > kNegInf ? z[i] : v;
  for (int64_t j = 0; j < kLanes; ++j) v = acc[j] < v ? acc[j] : v;
  return v;
}

REAL_EXT_CPU_CLONES int64_t count_at_least(const float* z, int64_t n, float thr) {
  int64_t c = 0;
  for (int64_t i = 0; i < n; ++i) c += z[i] >= thr;
  return c;
}

// ------------------------------------------------ thresholds

struct Cand {
  float z, e;
};

double sum_e(const Cand* c, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += c[i].e;
  return s;
}

float median3(float a, float b, float c) { return std::max(std::min(a, b), std::min(std::max(a, b), c)); }

// The largest z value v among c[0, n) with above + sum{e : z >= v} >= target,
// where `above` is the mass of tokens above all of c (above < target): a
// quickselect weighted by mass (expected O(n), deterministic pivots).
float mass_threshold(Cand* c, int64_t n, double above, double target) {
  int64_t lo = 0, hi = n;
  while (true) {
    const float pivot = median3(c[lo].z, c[lo + (hi - lo) / 2].z, c[hi - 1].z);
    // [lo, lt): z > pivot; [lt, gt): z == pivot; [gt, hi): z < pivot
    int64_t lt = lo, i = lo, gt = hi;
    while (i < gt) {
      if (c[i].z > pivot) {
        std::swap(c[lt++], c[i++]);
      } else if (c[i].z < pivot) {
        std::swap(c[i], c[--gt]);
      } else {
        ++i;
      }
    }
    const double m_gt = sum_e(c + lo, lt - lo), m_eq = sum_e(c + lt, gt - lt);
    if (above + m_gt >= target) {  // then m_gt > 0: the answer lies above the pivot
      hi = lt;
      continue;
    }
    if (above + m_gt + m_eq >= target || gt == hi) return pivot;  // gt == hi: rounding left no mass below
    above += m_gt + m_eq;
    lo = gt;
  }
}

struct Workspace {
  std::vector<float> z, e;
  std::vector<int32_t> index, bucket;
  std::vector<double> hist, block_mass;
  std::vector<Cand> cand;
};

// The largest z value v >= lo with sum{w : z >= v} >= target, w = e or, when
// e is null, 1. The caller knows the answer is >= lo (tokens below lo never
// count) and <= m, the row maximum. A histogram over [lo, m] in z (the bucket
// is non-increasing in z, so buckets are z-ordered and ties share one) finds
// the bucket where the weight from the top reaches the target; a quickselect
// finishes inside it. Returns `fallback` if rounding leaves [lo, m] short.
float histogram_threshold(const float* z, const float* e, int64_t vocab, float lo, float m, double target,
                          float fallback, Workspace& ws) {
  if (!(lo < m)) return m;
  // Only tokens at or above lo take part: gather their indices (branch-free).
  int32_t* index = ws.index.data();
  int64_t n = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    index[n] = static_cast<int32_t>(i);
    n += z[i] >= lo;
  }
  const float scale = static_cast<float>(std::min(1e30, kBuckets / (static_cast<double>(m) - lo)));
  const float top = static_cast<float>(kBuckets - 1);
  int32_t* bucket = ws.bucket.data();
  ws.hist.assign(kBuckets, 0.0);
  double* hist = ws.hist.data();
  for (int64_t c = 0; c < n; ++c) {
    const int32_t i = index[c];
    bucket[c] = static_cast<int32_t>(std::min((m - z[i]) * scale, top));
    hist[bucket[c]] += e != nullptr ? static_cast<double>(e[i]) : 1.0;
  }
  double above = 0;
  int32_t j = 0;
  for (; j < kBuckets && above + hist[j] < target; ++j) above += hist[j];
  if (j == kBuckets) return fallback;
  ws.cand.clear();
  for (int64_t c = 0; c < n; ++c)
    if (bucket[c] == j) ws.cand.push_back({z[index[c]], e != nullptr ? e[index[c]] : 1.f});
  return mass_threshold(ws.cand.data(), static_cast<int64_t>(ws.cand.size()), above, target);
}

// The k-th largest z (1 < k < number of finite tokens; ties counted).
float top_k_threshold(const float* z, int64_t vocab, int64_t k, float m, Workspace& ws) {
  // k chunk maxima are k distinct tokens, so their minimum is <= the k-th largest.
  float lo = kNegInf;
  if (k * 16 <= vocab) {
    const int64_t chunk = vocab / k;
    lo = m;
    for (int64_t c = 0; c < k; ++c) lo = std::min(lo, row_max(z + c * chunk, chunk));
  }
  if (!(lo >= -FLT_MAX)) lo = row_min_finite(z, vocab);
  return histogram_threshold(z, nullptr, vocab, lo, m, static_cast<double>(k), lo, ws);
}

// Top-p threshold among the tokens with z >= thr (the top-k survivors): the
// largest z* with sum{e : z >= z*} >= top_p * sum{e : z >= thr}.
float top_p_threshold(const float* z, const float* e, int64_t vocab, float m, float thr, double total, double top_p,
                      Workspace& ws) {
  const double s = thr == -FLT_MAX ? total : mass_at_least(z, e, vocab, thr);
  const double target = top_p * s;
  if (target <= 1.0) return m;  // the top token alone carries e = 1
  // The n' <= n tokens at or below z* each carry at most e(z*) and together
  // more than s - target, so e(z*) > (s - target) / n: z* >= lo below.
  const int64_t n = count_at_least(z, vocab, thr);
  const double slack = 0.5 * (s - target) / static_cast<double>(n);
  float lo = thr;
  if (slack > 0) lo = std::max(lo, static_cast<float>(m + std::log(slack)));
  return histogram_threshold(z, e, vocab, lo, m, target, thr, ws);
}

// ------------------------------------------------ one row

struct SampleConfig {
  bool greedy;
  int64_t top_k;
  double top_p;
};

// Samples from z (already scaled and banned) with uniform u. Returns false
// when the row has no finite maximum.
bool sample_row(const SampleConfig& cfg, int64_t vocab, float u, Workspace& ws, int64_t* token, float* logprob) {
  const float* z = ws.z.data();
  float* e = ws.e.data();
  const float m = row_max(z, vocab);
  if (!std::isfinite(m)) return false;
  const double total = exp_shifted(z, vocab, m, e);
  if (cfg.greedy) {
    *token = std::find(z, z + vocab, m) - z;  // lowest index among ties
    *logprob = static_cast<float>(-std::log(total));
    return true;
  }

  // Keep set K = {z >= thr}; -FLT_MAX keeps every finite token.
  float thr = -FLT_MAX;
  if (cfg.top_k == 1) {
    thr = m;
  } else if (cfg.top_k > 1 && cfg.top_k < vocab && cfg.top_k < count_at_least(z, vocab, -FLT_MAX)) {
    thr = top_k_threshold(z, vocab, cfg.top_k, m, ws);
  }
  if (cfg.top_p < 1.0) thr = top_p_threshold(z, e, vocab, m, thr, total, cfg.top_p, ws);

  // Inverse CDF in token order: find the block, then the token inside it.
  const int64_t blocks = (vocab + kBlock - 1) / kBlock;
  ws.block_mass.resize(blocks);
  double kept = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t t0 = b * kBlock;
    ws.block_mass[b] = mass_at_least(z + t0, e + t0, std::min(kBlock, vocab - t0), thr);
    kept += ws.block_mass[b];
  }
  const double target = static_cast<double>(u) * kept;
  int64_t tok = -1;
  double cum = 0;
  for (int64_t b = 0; b < blocks && tok < 0; ++b) {
    if (cum + ws.block_mass[b] <= target) {
      cum += ws.block_mass[b];
      continue;
    }
    int64_t last = -1;  // the block's last kept token with mass: the answer if rounding finds none
    for (int64_t t = b * kBlock; t < std::min(vocab, (b + 1) * kBlock); ++t) {
      if (z[t] < thr || e[t] <= 0.f) continue;
      cum += e[t];
      last = t;
      if (cum > target) break;
    }
    tok = last;
  }
  if (tok < 0) {  // rounding left u * kept at or past the end: the last token of K (with mass, as on CUDA)
    tok = vocab - 1;
    while (z[tok] < thr || e[tok] <= 0.f) --tok;
  }
  *token = tok;
  *logprob = static_cast<float>(static_cast<double>(z[tok]) - m - std::log(kept));
  return true;
}

// ------------------------------------------------ op

std::tuple<at::Tensor, at::Tensor> sample_tokens_cpu(const at::Tensor& logits, const at::Tensor& uniform,
                                                     const at::Tensor& suppress, const at::Tensor& banned,
                                                     bool greedy, double temperature, int64_t top_k, double top_p) {
  const SampleShape shape = check_sample_args(logits, uniform, suppress, banned, temperature, top_k, top_p);
  const int64_t batch = shape.batch, vocab = shape.vocab;
  const at::Tensor x = logits.contiguous(), u = uniform.contiguous(), sup = suppress.contiguous(),
                   ban = banned.contiguous();
  const int64_t* ban_p = ban.data_ptr<int64_t>();
  for (int64_t i = 0; i < shape.n_banned; ++i) check_banned_id(i, ban_p[i], vocab);
  const float* u_p = u.data_ptr<float>();
  if (!greedy)  // greedy ignores uniform
    for (int64_t b = 0; b < batch; ++b) check_uniform_value(b, u_p[b]);

  at::Tensor tokens = at::empty({batch}, logits.options().dtype(at::kLong));
  at::Tensor logprobs = at::empty({batch}, logits.options().dtype(at::kFloat));
  int64_t* tok_p = tokens.data_ptr<int64_t>();
  float* lp_p = logprobs.data_ptr<float>();
  const bool* sup_p = sup.data_ptr<bool>();
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  const float t = static_cast<float>(temperature);
  const SampleConfig cfg{greedy, top_k, top_p};
  std::vector<char> finite(batch, 1);

  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    Workspace ws;
    ws.z.resize(vocab);
    ws.e.resize(vocab);
    ws.index.resize(vocab);
    ws.bucket.resize(vocab);
    for (int64_t b = begin; b < end; ++b) {
      if (bf16) {
        scale_row(reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()) + b * vocab, vocab, t, ws.z.data());
      } else {
        scale_row(x.data_ptr<float>() + b * vocab, vocab, t, ws.z.data());
      }
      if (sup_p[b])
        for (int64_t i = 0; i < shape.n_banned; ++i) ws.z[ban_p[i]] = kNegInf;
      finite[b] = sample_row(cfg, vocab, u_p[b], ws, tok_p + b, lp_p + b);
    }
  });
  for (int64_t b = 0; b < batch; ++b) check_row_finite(b, finite[b]);
  return {tokens, logprobs};
}

}  // namespace

TORCH_LIBRARY_IMPL(real_ext, CPU, m) { m.impl("sample_tokens", &sample_tokens_cpu); }

}  // namespace real_ext
