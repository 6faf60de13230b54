#include "rl/gae_checks.h"

#include "common/check.h"

namespace real_ext {

std::vector<int32_t> check_gae_args(const at::Tensor& rewards, const at::Tensor& values, const at::Tensor& cu_seqlens,
                                    const at::Tensor& bootstrap, double gamma, double lam) {
  constexpr const char* op = "gae";
  check_dim(op, "rewards", rewards, 1, "(T,)");
  check_dim(op, "values", values, 1, "(T + B,)");
  check_dim(op, "bootstrap", bootstrap, 1, "(B,)");
  check_same_device(op, "values", values, "rewards", rewards);
  check_same_device(op, "cu_seqlens", cu_seqlens, "rewards", rewards);
  check_same_device(op, "bootstrap", bootstrap, "rewards", rewards);
  const auto dt = rewards.scalar_type();
  REAL_EXT_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble, op, ": rewards must be float32 or float64, got ", dt);
  REAL_EXT_CHECK_TYPE(values.scalar_type() == dt, op, ": values must have the dtype of rewards (", dt, "), got ",
                   values.scalar_type());
  REAL_EXT_CHECK_TYPE(bootstrap.scalar_type() == at::kBool, op, ": bootstrap must be bool, got ",
                   bootstrap.scalar_type());
  REAL_EXT_CHECK_VALUE(gamma >= 0.0 && gamma <= 1.0, op, ": gamma must be in [0, 1], got ", gamma);
  REAL_EXT_CHECK_VALUE(lam >= 0.0 && lam <= 1.0, op, ": lam must be in [0, 1], got ", lam);
  std::vector<int32_t> cu;
  check_cu_seqlens(op, "cu_seqlens", cu_seqlens, rewards.size(0), "rewards.size(0)", &cu);
  const int64_t batch = static_cast<int64_t>(cu.size()) - 1;
  REAL_EXT_CHECK_VALUE(bootstrap.size(0) == batch, op, ": bootstrap must have one entry per sequence (", batch,
                    "), got ", bootstrap.size(0));
  REAL_EXT_CHECK_VALUE(values.size(0) == rewards.size(0) + batch, op,
                    ": values must hold T + B = ", rewards.size(0) + batch,
                    " entries (each sequence's values plus the value after its last token), got ", values.size(0));
  return cu;
}

}  // namespace real_ext
