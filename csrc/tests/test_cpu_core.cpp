// C++ unit tests of the CPU core, run by ctest (see CMakeLists.txt): the BLAS
// wrapper and expf against naive loops and std::exp, the offsets validation,
// and the registered ops (through the dispatcher) against naive double loops.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "common/check.h"
#include "common/cpu_math.h"

namespace {

int failures = 0;

#define EXPECT(cond, ...)                                 \
  do {                                                    \
    if (!(cond)) {                                        \
      ++failures;                                         \
      std::printf("FAIL %s:%d: %s  ", __FILE__, __LINE__, #cond); \
      std::printf(__VA_ARGS__);                           \
      std::printf("\n");                                  \
    }                                                     \
  } while (0)

void test_gemm_rowmajor() {
  std::mt19937 rng(0);
  std::normal_distribution<float> dist;
  const int64_t M = 7, N = 5, K = 9, pad = 3;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      // Row strides larger than the logical widths, as in the attention tiles.
      const int64_t lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
      std::vector<float> A((ta ? K : M) * lda), B((tb ? N : K) * ldb), C(M * ldc);
      for (auto& x : A) x = dist(rng);
      for (auto& x : B) x = dist(rng);
      for (auto& x : C) x = dist(rng);
      std::vector<float> C0 = C;
      real_ext::gemm_rowmajor<float>(ta, tb, M, N, K, 0.5f, A.data(), lda, B.data(), ldb, 2.f, C.data(), ldc);
      double worst = 0;
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) {
          double acc = 0;
          for (int64_t k = 0; k < K; ++k) {
            const double a = ta ? A[k * lda + i] : A[i * lda + k];
            const double b = tb ? B[j * ldb + k] : B[k * ldb + j];
            acc += a * b;
          }
          worst = std::max(worst, std::abs(0.5 * acc + 2.0 * C0[i * ldc + j] - C[i * ldc + j]));
        }
      EXPECT(worst < 1e-4, "trans_a=%d trans_b=%d max error %g", ta, tb, worst);
    }
}

void test_fast_expf() {
  double worst = 0;
  for (float x = -87.f; x <= 0.f; x += 0.001f) {
    const double ref = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::abs(real_ext::fast_expf(x) - ref) / ref);
  }
  EXPECT(worst < 4e-7, "max relative error %g", worst);
  EXPECT(real_ext::fast_expf(-std::numeric_limits<float>::infinity()) == 0.f, "exp(-inf) must be 0");
  EXPECT(real_ext::fast_expf(0.f) == 1.f, "exp(0) = %g", real_ext::fast_expf(0.f));
}

void test_cu_seqlens_validation() {
  const auto offsets = [](std::vector<int32_t> v) { return at::tensor(v, at::kInt); };
  std::vector<int32_t> host;
  EXPECT(real_ext::check_cu_seqlens("t", "cu", offsets({0, 3, 3, 7}), 7, "total", &host) == 4, "longest");
  EXPECT(host.size() == 4 && host[3] == 7, "host copy");
  bool threw = false;
  try {
    real_ext::check_cu_seqlens("t", "cu", offsets({0, 5, 3}), 3, "total", nullptr);
  } catch (const c10::ValueError&) {
    threw = true;
  }
  EXPECT(threw, "non-decreasing offsets must raise ValueError");
}

// Naive causal attention of one sequence-batch, double precision, MHA.
void test_attention_op() {
  const int64_t H = 2, D = 16;
  const std::vector<int32_t> cu = {0, 5, 6, 75};
  const int64_t T = cu.back();
  at::manual_seed(1);
  const at::Tensor q = at::randn({T, H, D}), k = at::randn({T, H, D}), v = at::randn({T, H, D});
  const at::Tensor cut = at::tensor(cu, at::kInt);
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("real_ext::varlen_attn_fwd", "")
                .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                          const at::Tensor&, const at::Tensor&, int64_t, int64_t,
                                                          double, bool)>();
  const double scale = 0.25;
  const at::Tensor out = std::get<0>(op.call(q, k, v, cut, cut, 69, 69, scale, true));
  const auto qa = q.accessor<float, 3>(), ka = k.accessor<float, 3>(), va = v.accessor<float, 3>();
  const auto oa = out.accessor<float, 3>();
  double worst = 0;
  for (size_t b = 0; b + 1 < cu.size(); ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = cu[b]; i < cu[b + 1]; ++i) {
        std::vector<double> s;
        double mx = -1e300;
        for (int64_t j = cu[b]; j <= i; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += double(qa[i][h][d]) * ka[j][h][d];
          s.push_back(dot * scale);
          mx = std::max(mx, s.back());
        }
        double sum = 0;
        for (double& x : s) sum += (x = std::exp(x - mx));
        for (int64_t d = 0; d < D; ++d) {
          double acc = 0;
          for (int64_t j = cu[b]; j <= i; ++j) acc += s[j - cu[b]] / sum * va[j][h][d];
          worst = std::max(worst, std::abs(acc - oa[i][h][d]));
        }
      }
  EXPECT(worst < 1e-5, "varlen_attn_fwd max error %g", worst);
}

void test_gae_op() {
  const std::vector<int32_t> cu = {0, 4, 4, 9};
  const at::Tensor rewards = at::randn({9}, at::kDouble), values = at::randn({12}, at::kDouble);
  const at::Tensor boot = at::tensor(std::vector<uint8_t>{1, 0, 0}).to(at::kBool);
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("real_ext::gae", "")
                .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                          const at::Tensor&, double, double)>();
  const double gamma = 0.9, lam = 0.8;
  const at::Tensor adv = std::get<0>(op.call(rewards, values, at::tensor(cu, at::kInt), boot, gamma, lam));
  const double* r = rewards.data_ptr<double>();
  const double* v = values.data_ptr<double>();
  const double* a = adv.data_ptr<double>();
  const bool bootstrap[] = {true, false, false};
  double worst = 0;
  for (size_t i = 0; i + 1 < cu.size(); ++i) {
    // Forward definition: A_t = sum_l (gamma lam)^l delta_{t+l}.
    for (int64_t t = cu[i]; t < cu[i + 1]; ++t) {
      double acc = 0, w = 1;
      for (int64_t u = t; u < cu[i + 1]; ++u, w *= gamma * lam) {
        const double next = (u + 1 == cu[i + 1]) ? (bootstrap[i] ? v[u + 1 + i] : 0.0) : v[u + 1 + i];
        acc += w * (r[u] + gamma * next - v[u + i]);
      }
      worst = std::max(worst, std::abs(acc - a[t]));
    }
  }
  EXPECT(worst < 1e-12, "gae max error %g", worst);
}

}  // namespace

int main() {
  test_gemm_rowmajor();
  test_fast_expf();
  test_cu_seqlens_validation();
  test_attention_op();
  test_gae_op();
  if (failures) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all C++ core tests passed\n");
  return 0;
}
