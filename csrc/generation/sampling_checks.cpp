#include "generation/sampling_checks.h"

#include <cmath>

#include "common/check.h"

namespace real_ext {

namespace {
constexpr const char* kOp = "sample_tokens";
}

SampleShape check_sample_args(const at::Tensor& logits, const at::Tensor& uniform, const at::Tensor& suppress,
                              const at::Tensor& banned, double temperature, int64_t top_k, double top_p) {
  check_dim(kOp, "logits", logits, 2, "(B, V)");
  const auto dt = logits.scalar_type();
  const bool cuda = logits.device().is_cuda();
  REAL_EXT_CHECK_TYPE(dt == at::kFloat || dt == at::kBFloat16 || (dt == at::kHalf && cuda), kOp,
                      ": logits must be float32 or bfloat16 (float16 on CUDA only), got ", dt);
  const int64_t batch = logits.size(0), vocab = logits.size(1);
  REAL_EXT_CHECK_VALUE(vocab >= 1 && vocab <= INT32_MAX, kOp, ": logits must have 1 to 2^31 - 1 columns (V), got ",
                       vocab);
  check_dim(kOp, "uniform", uniform, 1, "(B,)");
  REAL_EXT_CHECK_TYPE(uniform.scalar_type() == at::kFloat, kOp, ": uniform must be float32, got ",
                      uniform.scalar_type());
  REAL_EXT_CHECK_VALUE(uniform.size(0) == batch, kOp, ": uniform must have one entry per row of logits (", batch,
                       "), got ", uniform.size(0));
  check_dim(kOp, "suppress", suppress, 1, "(B,)");
  REAL_EXT_CHECK_TYPE(suppress.scalar_type() == at::kBool, kOp, ": suppress must be bool, got ",
                      suppress.scalar_type());
  REAL_EXT_CHECK_VALUE(suppress.size(0) == batch, kOp, ": suppress must have one entry per row of logits (", batch,
                       "), got ", suppress.size(0));
  check_dim(kOp, "banned", banned, 1, "(n,)");
  REAL_EXT_CHECK_TYPE(banned.scalar_type() == at::kLong, kOp, ": banned must be int64, got ", banned.scalar_type());
  check_same_device(kOp, "uniform", uniform, "logits", logits);
  check_same_device(kOp, "suppress", suppress, "logits", logits);
  check_same_device(kOp, "banned", banned, "logits", logits);
  // z = logits / temperature is computed in float32: the float32 temperature must be usable.
  const float t = static_cast<float>(temperature);
  REAL_EXT_CHECK_VALUE(std::isfinite(temperature) && t > 0.f && std::isfinite(t), kOp,
                       ": temperature must be positive and finite (in float32), got ", temperature);
  REAL_EXT_CHECK_VALUE(top_k >= 0, kOp, ": top_k must be >= 0 (0 disables top-k), got ", top_k);
  REAL_EXT_CHECK_VALUE(top_p > 0.0 && top_p <= 1.0, kOp, ": top_p must be in (0, 1] (1 disables top-p), got ",
                       top_p);
  return {batch, vocab, banned.size(0)};
}

void check_banned_id(int64_t i, int64_t id, int64_t vocab) {
  REAL_EXT_CHECK_VALUE(id >= 0 && id < vocab, kOp, ": banned[", i, "] = ", id, " is not a token id in [0, ", vocab,
                       ")");
}

void check_uniform_value(int64_t row, float u) {
  REAL_EXT_CHECK_VALUE(u >= 0.f && u < 1.f, kOp, ": uniform values must be in [0, 1), got uniform[", row, "] = ", u);
}

void check_row_finite(int64_t row, bool finite_max) {
  REAL_EXT_CHECK_VALUE(finite_max, kOp, ": logits row ", row,
                       " has no finite maximum (every logit is -inf after banning, or the maximum is +inf)");
}

}  // namespace real_ext
