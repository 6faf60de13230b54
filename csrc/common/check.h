// Argument checks that raise Python ValueError / TypeError naming the argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdio>
#include <string>
#include <type_traits>
#include <vector>

namespace real_ext {

// NOTE: error messages format numbers with std::to_string / snprintf, never
// with iostreams. On the GPU image (extension built by /opt/gcc's g++) the
// iostream number formatting that c10::str instantiates inside our .so crashed
// (SIGSEGV in ostream::_M_insert<long>, H200, 2026-11-26); text and the
// operator<< that libc10 itself defines (Device) were fine.
namespace detail {
template <typename T>
void append(std::string& out, const T& x) {
  if constexpr (std::is_convertible_v<const T&, const char*> || std::is_same_v<T, std::string>) {
    out += x;
  } else if constexpr (std::is_same_v<T, bool>) {
    out += x ? "true" : "false";
  } else if constexpr (std::is_integral_v<T>) {
    out += std::to_string(x);
  } else if constexpr (std::is_floating_point_v<T>) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%g", static_cast<double>(x));
    out += buf;
  } else {
    out += c10::str(x);  // Device, ScalarType: printed as text by c10
  }
}
}  // namespace detail

template <typename... Args>
std::string check_msg(const Args&... args) {
  std::string out;
  (detail::append(out, args), ...);
  return out;
}

// TORCH_CHECK_VALUE / TORCH_CHECK_TYPE (Python ValueError / TypeError) with a
// message built by check_msg; arguments are evaluated only when cond fails.
#define REAL_EXT_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, ::real_ext::check_msg(__VA_ARGS__))
#define REAL_EXT_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, ::real_ext::check_msg(__VA_ARGS__))

// A (tokens, heads, head_dim) operand as the CPU kernels read it: each token's
// row contiguous, any token stride (views of a fused q/k/v projection stay
// uncopied); anything else is copied.
inline at::Tensor token_rows_view(const at::Tensor& t) {
  return t.stride(2) == 1 && t.stride(1) == t.size(2) ? t : t.contiguous();
}

// "[3, 4, 5]" for error messages.
inline std::string shape_str(const at::Tensor& t) {
  std::string out = "[";
  for (int64_t i = 0; i < t.dim(); ++i) out += (i ? ", " : "") + std::to_string(t.size(i));
  return out + "]";
}

// Check a tensor's rank; `what` describes the expected shape, e.g. "(total_q, heads_q, head_dim)".
inline void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim, const char* what) {
  REAL_EXT_CHECK_VALUE(t.dim() == dim, op, ": ", name, " must be ", dim, "-D ", what, ", got shape ",
                    shape_str(t));
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                              const at::Tensor& ref) {
  REAL_EXT_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name,
                    " is on ", ref.device(), "; move them to one device");
}

// Host copy of a (B+1,) int32 offsets tensor, validated: starts at 0, never
// decreases, ends at `total`. Returns the longest segment.
int64_t check_cu_seqlens(const char* op, const char* name, const at::Tensor& cu_seqlens, int64_t total,
                         const char* total_what, std::vector<int32_t>* host);

}  // namespace real_ext
