// Which register blocking the CPU kernels use (see wide_vectors in cpu_math.h).
#include <cstdlib>
#include <cstring>

#include "common/cpu_math.h"

namespace real_ext {

bool wide_vectors() {
  // REAL_EXT_VECTOR_BLOCKING=wide|narrow forces one (the tests run both kinds
  // of blocking on whatever CPU they have).
  static const bool yes = [] {
    const char* force = std::getenv("REAL_EXT_VECTOR_BLOCKING");
    if (force != nullptr && std::strcmp(force, "wide") == 0) return true;
    if (force != nullptr && std::strcmp(force, "narrow") == 0) return false;
#if defined(__GNUC__) && defined(__x86_64__)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
    return false;
#endif
  }();
  return yes;
}

}  // namespace real_ext
