// The CPU float32 products of many rows (a prefill's thousands of prompt
// tokens, an inference forward) through OpenBLAS's sgemm, loaded by path at
// run time (use_cpu_blas; real_ext/ops/cpu_blas.py picks the library and the
// CPUs). On a Zen 3 (2 cores, AVX2) a prefill's products ran at 80-131
// GFLOP/s in torch's MKL and at 120-150 in OpenBLAS; on Intel's CPUs MKL is
// kept. Nothing is linked at build time, so a machine without the wheel
// builds and runs the same code on ATen's products.
//
// Each of ATen's threads multiplies its own rows of x, with OpenBLAS kept to
// one thread: OpenBLAS's own threads spin for a while after every product
// (OPENBLAS_THREAD_TIMEOUT), and on 2 cores they took the cores from the next
// ops' OpenMP workers: the rest of a prefill ran 2.2x slower and the whole
// prefill gained nothing.
#include "layers/cpu_blas.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <torch/library.h>

#include <atomic>
#include <climits>
#include <string>

namespace real_ext {
namespace {

using Sgemm = void (*)(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a, int lda,
                       const float* b, int ldb, float beta, float* c, int ldc);
using SetThreads = void (*)(int);
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;  // cblas.h's enum values
constexpr int64_t kMinRowsPerThread = 64;

std::atomic<Sgemm> loaded_sgemm{nullptr};
std::string loaded_path;  // written only by use_cpu_blas (Python holds the GIL)

// Load `path` and take its cblas sgemm (the symbols named with `prefix`, e.g.
// "scipy_" for the scipy-openblas32 wheel); "" on success, else what failed.
// An empty path goes back to ATen's products. The library stays loaded.
std::string use_cpu_blas(c10::string_view path, c10::string_view prefix) {
  if (path.empty()) {
    loaded_sgemm = nullptr;
    loaded_path.clear();
    return "";
  }
  const std::string file(path), pre(prefix);
  void* lib = dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) return "cannot load " + file + ": " + dlerror();
  auto* sgemm = reinterpret_cast<Sgemm>(dlsym(lib, (pre + "cblas_sgemm").c_str()));
  auto* threads = reinterpret_cast<SetThreads>(dlsym(lib, (pre + "openblas_set_num_threads").c_str()));
  if (sgemm == nullptr || threads == nullptr)
    return file + " has no " + pre + "cblas_sgemm or " + pre + "openblas_set_num_threads (wrong prefix?)";
  threads(1);
  loaded_path = file;
  loaded_sgemm = sgemm;
  return "";
}

// The library the products use, "" for ATen's.
std::string cpu_blas() { return loaded_sgemm.load() == nullptr ? "" : loaded_path; }

}  // namespace

bool blas_loaded() { return loaded_sgemm.load() != nullptr; }

bool blas_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                 at::Tensor& y) {
  const Sgemm sgemm = loaded_sgemm.load();
  if (sgemm == nullptr || x.scalar_type() != at::kFloat || x.stride(1) != 1) return false;
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  // Row-major weight rows (stride (ldw, 1)) are B transposed; a transposed
  // view (stride (1, ldw)) is B as it lies.
  const bool rows = weight.stride(1) == 1, k_major = !rows && weight.stride(0) == 1;
  const int64_t ldw = rows ? weight.stride(0) : weight.stride(1);
  if (!rows && !k_major) return false;
  if (M >= INT_MAX || N >= INT_MAX || K >= INT_MAX || ldw >= INT_MAX || x.stride(0) >= INT_MAX) return false;
  y = at::empty({M, N}, x.options());
  float beta = 0.f;
  if (bias.has_value()) {  // sgemm adds to y's rows already holding the bias
    y.copy_(bias->expand({M, N}));
    beta = 1.f;
  }
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t ldx = x.stride(0);
  at::parallel_for(0, M, kMinRowsPerThread, [&](int64_t m0, int64_t m1) {
    sgemm(kRowMajor, kNoTrans, rows ? kTrans : kNoTrans, static_cast<int>(m1 - m0), static_cast<int>(N),
          static_cast<int>(K), 1.f, xp + m0 * ldx, static_cast<int>(ldx), wp, static_cast<int>(ldw), beta,
          yp + m0 * N, static_cast<int>(N));
  });
  return true;
}

TORCH_LIBRARY_IMPL(real_ext, CompositeImplicitAutograd, m) {
  m.impl("use_cpu_blas", &use_cpu_blas);
  m.impl("cpu_blas", &cpu_blas);
}

}  // namespace real_ext
