// 8 floats as one GCC vector (one ymm in the AVX2 clone): the register-block
// element of the CPU kernels where wide_vectors() is false (AVX2's 16
// registers), with loads and stores of float32 and bfloat16 rows in either
// float vector type (vec8 or vec16) for kernels written over both.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/cpu_vec16.h"

namespace real_ext {

typedef float vec8 __attribute__((vector_size(32)));
typedef uint32_t vec8u __attribute__((vector_size(32)));
typedef uint16_t vec8h __attribute__((vector_size(16)));
typedef int32_t vec8i __attribute__((vector_size(32)));

template <typename Vec>
constexpr int kVecLanes = sizeof(Vec) / sizeof(float);  // 8 or 16
template <typename Vec>
REAL_EXT_INLINE Vec load_vec(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename Vec>
REAL_EXT_INLINE void store_vec(float* p, Vec v) {
  std::memcpy(p, &v, sizeof(v));
}

REAL_EXT_INLINE vec8 load8(const float* p) { return load_vec<vec8>(p); }
// bfloat16 widened: each value shifted into the high half of a float32.
REAL_EXT_INLINE vec8 load8(const uint16_t* p) {
  vec8h h;
  std::memcpy(&h, p, sizeof(h));
  const vec8u bits = __builtin_convertvector(h, vec8u) << 16;
  vec8 v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

REAL_EXT_INLINE void store8(float* p, vec8 v) { store_vec(p, v); }
REAL_EXT_INLINE void store8(uint16_t* p, vec8 v) { store_bf16<vec8u, vec8h>(p, v); }

// Rows of float32 or bfloat16 (its bits) as either vector type, for kernels
// written over both: load_row<Vec>(p), store_row(p, v).
template <typename Vec>
REAL_EXT_INLINE Vec load_row(const float* p) {
  return load_vec<Vec>(p);
}
template <typename Vec>
REAL_EXT_INLINE Vec load_row(const uint16_t* p) {
  if constexpr (kVecLanes<Vec> == 16)
    return load16(p);
  else
    return load8(p);
}
template <typename S>
REAL_EXT_INLINE void store_row(S* p, vec16 v) {
  store16(p, v);
}
template <typename S>
REAL_EXT_INLINE void store_row(S* p, vec8 v) {
  store8(p, v);
}

#if defined(__clang__)
#define REAL_EXT_SHUFFLE8(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define REAL_EXT_SHUFFLE8(a, b, ...) __builtin_shuffle(a, b, vec8i{__VA_ARGS__})
#endif

// Lanes 0..7 of the result: the sums of v[0..7] (v is clobbered); sum16x16's
// levels of "even lanes + odd lanes" on 8 vectors of 8.
REAL_EXT_INLINE vec8 sum8x8(vec8* v) {
  for (int n = 4; n >= 1; n /= 2)
    for (int i = 0; i < n; ++i) {
      const vec8 a = v[2 * i], b = v[2 * i + 1];
      v[i] = REAL_EXT_SHUFFLE8(a, b, 0, 2, 4, 6, 8, 10, 12, 14) + REAL_EXT_SHUFFLE8(a, b, 1, 3, 5, 7, 9, 11, 13, 15);
    }
  return v[0];
}

// r[0..7] becomes the columns of the 8 x 8 matrix whose rows it held: pairs
// of rows interleaved, then pairs of pairs, then the 128-bit halves swapped
// (AVX2's unpcklps / shufps / vperm2f128 steps, 24 shuffles in all).
REAL_EXT_INLINE void transpose8x8(vec8* r) {
  vec8 t[8], s[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = REAL_EXT_SHUFFLE8(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = REAL_EXT_SHUFFLE8(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4) {  // s[i + j]: column j | column j + 4 of rows i..i+3
    s[i] = REAL_EXT_SHUFFLE8(t[i], t[i + 2], 0, 1, 8, 9, 4, 5, 12, 13);
    s[i + 1] = REAL_EXT_SHUFFLE8(t[i], t[i + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    s[i + 2] = REAL_EXT_SHUFFLE8(t[i + 1], t[i + 3], 0, 1, 8, 9, 4, 5, 12, 13);
    s[i + 3] = REAL_EXT_SHUFFLE8(t[i + 1], t[i + 3], 2, 3, 10, 11, 6, 7, 14, 15);
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = REAL_EXT_SHUFFLE8(s[j], s[j + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    r[j + 4] = REAL_EXT_SHUFFLE8(s[j], s[j + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}
#undef REAL_EXT_SHUFFLE8

}  // namespace real_ext
