#include "common/check.h"

#include <ATen/ATen.h>

namespace real_ext {

int64_t check_cu_seqlens(const char* op, const char* name, const at::Tensor& cu_seqlens, int64_t total,
                         const char* total_what, std::vector<int32_t>* host) {
  REAL_EXT_CHECK_TYPE(cu_seqlens.scalar_type() == at::kInt, op, ": ", name, " must be int32, got ",
                   cu_seqlens.scalar_type(), " (use .to(torch.int32))");
  REAL_EXT_CHECK_VALUE(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 1, op, ": ", name,
                    " must be 1-D (batch+1,), got shape ", shape_str(cu_seqlens));
  // One small device-to-host copy on CUDA: worth it, a bad offset would read out of bounds.
  at::Tensor h = cu_seqlens.to(at::kCPU).contiguous();
  const int32_t* p = h.data_ptr<int32_t>();
  const int64_t n = h.size(0);
  REAL_EXT_CHECK_VALUE(p[0] == 0, op, ": ", name, "[0] must be 0, got ", p[0]);
  int64_t longest = 0;
  for (int64_t i = 1; i < n; ++i) {
    REAL_EXT_CHECK_VALUE(p[i] >= p[i - 1], op, ": ", name, " must be non-decreasing, but ", name, "[", i,
                      "] = ", p[i], " < ", name, "[", i - 1, "] = ", p[i - 1]);
    longest = std::max<int64_t>(longest, p[i] - p[i - 1]);
  }
  REAL_EXT_CHECK_VALUE(p[n - 1] == total, op, ": ", name, "[-1] = ", p[n - 1], " must equal ", total_what, " = ",
                    total);
  if (host) host->assign(p, p + n);
  return longest;
}

}  // namespace real_ext
