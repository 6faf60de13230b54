// Small CPU building blocks shared by the CPU kernels: a row-major sgemm on
// top of the BLAS that libtorch_cpu carries, a vectorizable expf, and a macro
// that compiles hot loops for several x86 ISAs (dispatched once at load time).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
// GCC emits one copy per target and an ifunc resolver: AVX-512 where the CPU
// has it, AVX2+FMA, else baseline SSE2. Loops are written so -O3 vectorizes them.
#define REAL_EXT_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define REAL_EXT_CPU_CLONES
#endif
// Helpers called from a cloned function must be inlined into each clone to be
// compiled for its ISA (an out-of-line call runs the baseline code).
#define REAL_EXT_INLINE inline __attribute__((always_inline))

namespace real_ext {
// True where the CPU has AVX-512 (the x86-64-v4 clone runs): 32 registers of
// 16 floats. Register-blocked kernels hold up to 4 x 4 vec16 accumulators
// there; with AVX2's 16 registers of 8 floats a vec16 takes two and such a
// block spills (on a Zen 3: prefill attention 8.6x, decode attention 2.4x
// slower than with blocks of 8-float vectors), so they pick a narrower
// block of such vectors when this is false. One decision per process
// (REAL_EXT_VECTOR_BLOCKING=wide|narrow overrides it).
bool wide_vectors();
}  // namespace real_ext

// Fortran BLAS symbol exported by libtorch_cpu (MKL on x86-64 wheels, OpenBLAS
// elsewhere). ATen's float cpublas::gemm wraps the same call but is not exported.
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n,
                       const int* k, const float* alpha, const float* a, const int* lda,
                       const float* b, const int* ldb, const float* beta, float* c, const int* ldc);
extern "C" void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
                       const double* beta, double* c, const int* ldc);

namespace real_ext {

inline void blas_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
                      const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
                      const int* ldc) {
  sgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline void blas_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
                      const double* a, const int* lda, const double* b, const int* ldb, const double* beta,
                      double* c, const int* ldc) {
  dgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// Row-major C[M x N] = alpha * op(A) op(B) + beta * C, op(X) = X or X^T
// (trans_a: A is stored K x M; trans_b: B is stored N x K). lda/ldb/ldc are
// row strides in elements. Implemented as the column-major call on C^T.
template <typename T>
inline void gemm_rowmajor(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    return;
  }
  const char ta = trans_b ? 'T' : 'N', tb = trans_a ? 'T' : 'N';
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
  blas_gemm(&ta, &tb, &m, &n, &k, &alpha, B, &la, A, &lb, &beta, C, &lc);
}

// expf for x in [-inf, 88]: Cephes range reduction and degree-6 polynomial,
// about 2 ulp. Branch-free so that loops calling it vectorize; rounding uses the
// 1.5 * 2^23 trick because GCC will not vectorize floorf (trapping math).
REAL_EXT_INLINE float fast_expf(float x) {
  x = x < -87.3f ? -87.3f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  // Below -87.3 the true value is < 1.2e-38: flush to zero (also exp(-inf)).
  return x <= -87.3f ? 0.f : y * scale;
}

// bfloat16 is the high half of a float32: widening is a shift; narrowing
// rounds to nearest even and keeps NaN a (quiet) NaN, as c10::BFloat16 does.
REAL_EXT_INLINE float bf16_bits_to_float(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &wide, sizeof(f));
  return f;
}
REAL_EXT_INLINE uint16_t float_to_bf16_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  // NaN -> 0x7fc0 with integer arithmetic only: a select here stops GCC 12
  // from vectorizing the loops that store bfloat16.
  const uint32_t nan_mask = 0u - static_cast<uint32_t>((bits & 0x7fffffffu) > 0x7f800000u);
  return static_cast<uint16_t>(rounded ^ ((rounded ^ 0x7fc0u) & nan_mask));
}

// Element access by storage type, math in float32 (float64 for double);
// bfloat16 travels as its uint16_t bits.
REAL_EXT_INLINE float load(const float* p, int64_t i) { return p[i]; }
REAL_EXT_INLINE double load(const double* p, int64_t i) { return p[i]; }
REAL_EXT_INLINE float load(const uint16_t* p, int64_t i) { return bf16_bits_to_float(p[i]); }
REAL_EXT_INLINE void store(float* p, int64_t i, float v) { p[i] = v; }
REAL_EXT_INLINE void store(double* p, int64_t i, double v) { p[i] = v; }
REAL_EXT_INLINE void store(uint16_t* p, int64_t i, float v) { p[i] = float_to_bf16_bits(v); }

REAL_EXT_INLINE float exp_t(float x) { return fast_expf(x); }
inline double exp_t(double x) { return std::exp(x); }

}  // namespace real_ext
