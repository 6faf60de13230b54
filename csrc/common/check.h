// Argument checks that raise Python ValueError / TypeError naming the argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>
#include <vector>

namespace real_ext {

// "[3, 4, 5]" for error messages.
inline std::string shape_str(const at::Tensor& t) { return c10::str(t.sizes()); }

// Check a tensor's rank; `what` describes the expected shape, e.g. "(total_q, heads_q, head_dim)".
inline void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim, const char* what) {
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": ", name, " must be ", dim, "-D ", what, ", got shape ",
                    shape_str(t));
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                              const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name,
                    " is on ", ref.device(), "; move them to one device");
}

// Host copy of a (B+1,) int32 offsets tensor, validated: starts at 0, never
// decreases, ends at `total`. Returns the longest segment.
int64_t check_cu_seqlens(const char* op, const char* name, const at::Tensor& cu_seqlens, int64_t total,
                         const char* total_what, std::vector<int32_t>* host);

}  // namespace real_ext
