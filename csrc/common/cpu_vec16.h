// 16 floats as one GCC vector (one zmm, two ymm or four xmm depending on the
// REAL_EXT_CPU_CLONES clone), with loads and stores of float32 and bfloat16
// rows. For loops GCC will not vectorize on its own: horizontal sums of many
// dot products, and short rows (a 16-element rope half) where its cost model
// keeps the scalar loop once bfloat16 conversions are involved.
// NOTE: -Wpsabi warns that such values change the calling convention between
// ISAs; every function taking or returning one is always_inline, so none is
// ever called across clones.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/cpu_math.h"

#pragma GCC diagnostic ignored "-Wpsabi"

namespace real_ext {

typedef float vec16 __attribute__((vector_size(64)));
typedef int32_t vec16i __attribute__((vector_size(64)));
typedef uint32_t vec16u __attribute__((vector_size(64)));
typedef uint16_t vec16h __attribute__((vector_size(32)));

REAL_EXT_INLINE vec16 load16(const float* p) {
  vec16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
// bfloat16 bits widened: the high half of each float32.
REAL_EXT_INLINE vec16 load16(const uint16_t* p) {
  vec16h h;
  std::memcpy(&h, p, sizeof(h));
  const vec16u bits = __builtin_convertvector(h, vec16u) << 16;
  vec16 v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

REAL_EXT_INLINE void store16(float* p, vec16 v) { std::memcpy(p, &v, sizeof(v)); }
// v's lanes narrowed to bfloat16 at p: rounded to nearest even, NaN kept a
// quiet NaN (as float_to_bf16_bits). Bits / Half: v's width in uint32_t /
// uint16_t lanes (vec16u / vec16h here, vec8u / vec8h for vec8).
template <typename Bits, typename Half, typename Vec>
REAL_EXT_INLINE void store_bf16(uint16_t* p, Vec v) {
  Bits bits;
  std::memcpy(&bits, &v, sizeof(bits));
  Bits rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const Bits nan = (Bits)((bits & 0x7fffffffu) > 0x7f800000u);  // all ones where NaN
  rounded = (rounded & ~nan) | (0x7fc0u & nan);
  const Half h = __builtin_convertvector(rounded, Half);
  std::memcpy(p, &h, sizeof(h));
}
REAL_EXT_INLINE void store16(uint16_t* p, vec16 v) { store_bf16<vec16u, vec16h>(p, v); }

// Lanes 0..15 of the result: the sums of v[0..15] (v is clobbered). Four
// levels of "even lanes + odd lanes" of neighbouring pairs: 15 two-source
// shuffle pairs for 16 dot products instead of a shuffle tree for each.
REAL_EXT_INLINE vec16 sum16x16(vec16* v) {
#if defined(__clang__)
#define REAL_EXT_SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define REAL_EXT_SHUFFLE(a, b, ...) __builtin_shuffle(a, b, vec16i{__VA_ARGS__})
#endif
  for (int n = 8; n >= 1; n /= 2)
    for (int i = 0; i < n; ++i) {
      const vec16 a = v[2 * i], b = v[2 * i + 1];
      v[i] = REAL_EXT_SHUFFLE(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
             REAL_EXT_SHUFFLE(a, b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    }
#undef REAL_EXT_SHUFFLE
  return v[0];
}

}  // namespace real_ext
