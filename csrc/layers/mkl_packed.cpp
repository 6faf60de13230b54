// The CPU float32 products of a generate() call with the weights packed once.
//
// sgemm packs its B operand (here the weight) into its kernel's panel order on
// every call. A decode step multiplies a few dozen rows by every weight of
// the model, so that packing is a large share of the product: on a 2-core
// AVX-512 Xeon, 64 rows x a 32M-parameter LLaMA's weights, perf put 25% of
// MKL's time in its B-packing copy, and the products with B packed once
// (cblas_sgemm_pack, then cblas_sgemm_compute) ran at 1.3-1.45x the rate of
// at::mm (bench/RESULTS.md). The packed copies live inside a scope
// (real_ext/ops/cpu_blas.py: packed_weights(), entered by generate()), in
// which the weights do not change: each weight is packed at its first product
// in the scope, keyed by its address, sizes and strides, and the entry holds
// the weight so that no other tensor can take that address while the scope
// lasts; a weight whose version counter moved is packed again. Leaving the
// outermost scope drops every copy.
//
// The MKL symbols are weak: torch's CPU builds for x86-64 export them from
// libtorch_cpu (MKL is linked in); elsewhere they resolve to null and the
// products stay with the caller's other paths.
#include "layers/mkl_packed.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <climits>
#include <map>
#include <mutex>
#include <tuple>

extern "C" {
// MKL's cblas packed-GEMM interface (mkl_cblas.h; LP64: MKL_INT is int).
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha, const float* src,
                      int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a, int lda,
                         const float* b, int ldb, float beta, float* c, int ldc) __attribute__((weak));
}

namespace real_ext {
namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162;  // mkl_cblas.h

// The rows the weights are packed for. A packed weight serves any number of
// rows (the results equal at::mm's), but MKL lays it out for this count: one
// packed at a prefill's 4352 rows multiplied 64 rows at 80 GFLOP/s where one
// packed at 64 rows did at 96, and the 4352-row products ran as fast on either.
constexpr int kPackRows = 64;

bool available() {
  return cblas_sgemm_pack_get_size != nullptr && cblas_sgemm_pack != nullptr && cblas_sgemm_compute != nullptr;
}

// (address, N, K, stride 0, stride 1) of a weight.
using Key = std::tuple<const void*, int64_t, int64_t, int64_t, int64_t>;
struct Entry {
  at::Tensor weight;  // held: no other tensor takes its address while the entry lives
  uint32_t version;
  at::Tensor packed;  // MKL's opaque packed B (it must not move: never copied)
};

struct Scope {
  std::mutex mutex;
  int depth = 0;
  std::map<Key, Entry> entries;
};
Scope& scope() {
  static Scope s;
  return s;
}

// enter: one level deeper; else one level out, the copies dropped when the
// outermost scope ends. Returns the weights packed in the scope so far.
int64_t packed_weights_scope(bool enter) {
  Scope& s = scope();
  std::lock_guard<std::mutex> lock(s.mutex);
  const int64_t held = static_cast<int64_t>(s.entries.size());
  if (enter) {
    ++s.depth;
  } else {
    TORCH_CHECK(s.depth > 0, "packed_weights_scope(False) without a scope to leave");
    if (--s.depth == 0) s.entries.clear();
  }
  return held;
}

bool mkl_packing_available() { return available(); }

}  // namespace

bool packed_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                   at::Tensor& y) {
  if (!available() || x.scalar_type() != at::kFloat || weight.scalar_type() != at::kFloat || x.stride(1) != 1)
    return false;
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  const bool rows = weight.stride(1) == 1, k_major = !rows && weight.stride(0) == 1;
  const int64_t ldw = rows ? weight.stride(0) : weight.stride(1);
  if ((!rows && !k_major) || M == 0 || K == 0 || N == 0) return false;
  if (M >= INT_MAX || N >= INT_MAX || K >= INT_MAX || ldw >= INT_MAX || x.stride(0) >= INT_MAX) return false;
  at::Tensor packed;
  {
    Scope& s = scope();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (s.depth == 0) return false;
    const Key key{weight.data_ptr(), N, K, weight.stride(0), weight.stride(1)};
    const uint32_t version = weight._version();
    auto it = s.entries.find(key);
    if (it == s.entries.end() || it->second.version != version) {
      // Row-major weight rows are B transposed; a transposed view is B as it lies.
      const size_t bytes = cblas_sgemm_pack_get_size(kBMatrix, kPackRows, static_cast<int>(N), static_cast<int>(K));
      at::Tensor buffer = at::empty({static_cast<int64_t>(bytes)}, x.options().dtype(at::kByte));
      cblas_sgemm_pack(kRowMajor, kBMatrix, rows ? kTrans : kNoTrans, kPackRows, static_cast<int>(N),
                       static_cast<int>(K), 1.f, weight.data_ptr<float>(), static_cast<int>(ldw),
                       reinterpret_cast<float*>(buffer.data_ptr()));
      it = s.entries.insert_or_assign(key, Entry{weight, version, buffer}).first;
    }
    packed = it->second.packed;
  }
  y = at::empty({M, N}, x.options());
  float beta = 0.f;
  if (bias.has_value()) {  // compute adds to y's rows already holding the bias
    y.copy_(bias->expand({M, N}));
    beta = 1.f;
  }
  // ldb is ignored for a packed B.
  cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K),
                      x.data_ptr<float>(), static_cast<int>(x.stride(0)),
                      reinterpret_cast<const float*>(packed.data_ptr()), static_cast<int>(N), beta,
                      y.data_ptr<float>(), static_cast<int>(N));
  return true;
}

TORCH_LIBRARY_IMPL(real_ext, CompositeImplicitAutograd, m) {
  m.impl("packed_weights_scope", &packed_weights_scope);
  m.impl("mkl_packing_available", &mkl_packing_available);
}

}  // namespace real_ext
