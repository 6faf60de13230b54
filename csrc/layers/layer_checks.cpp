#include "layers/layer_checks.h"

#include <ATen/ATen.h>

#include "common/check.h"

namespace real_ext {
namespace {

// float64, float32, bfloat16 everywhere; float16 on CUDA too.
void check_float_dtype(const char* op, const char* name, const at::Tensor& t) {
  const auto dt = t.scalar_type();
  REAL_EXT_CHECK_TYPE(dt == at::kDouble || dt == at::kFloat || dt == at::kBFloat16 || (t.is_cuda() && dt == at::kHalf),
                      op, ": ", name, " has dtype ", dt, "; supported: float64, float32, bfloat16, float16 (",
                      t.is_cuda() ? "on CUDA)" : "on CUDA only)");
}

void check_like(const char* op, const char* name, const at::Tensor& t, const char* ref_name, const at::Tensor& ref) {
  check_same_device(op, name, t, ref_name, ref);
  REAL_EXT_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(), " but ",
                      ref_name, " has ", ref.scalar_type(), "; cast them to one dtype");
}

void check_same_shape(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                      const at::Tensor& ref) {
  REAL_EXT_CHECK_VALUE(t.sizes() == ref.sizes(), op, ": ", name, " must have the shape of ", ref_name, " ",
                       shape_str(ref), ", got ", shape_str(t));
}

}  // namespace

void check_rms_norm_args(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const char* op = "rms_norm";
  check_dim(op, "x", x, 2, "(tokens, hidden)");
  check_dim(op, "weight", weight, 1, "(hidden,)");
  check_float_dtype(op, "x", x);
  check_like(op, "weight", weight, "x", x);
  REAL_EXT_CHECK_VALUE(weight.size(0) == x.size(1), op, ": weight has ", weight.size(0), " elements but x has hidden ",
                       x.size(1));
  REAL_EXT_CHECK_VALUE(eps > 0, op, ": eps must be > 0, got ", eps);
}

void check_rms_norm_bwd_args(const at::Tensor& dout, const at::Tensor& x, const at::Tensor& weight,
                             const at::Tensor& rstd) {
  const char* op = "rms_norm_bwd";
  check_rms_norm_args(x, weight, 1.0);
  check_like(op, "dout", dout, "x", x);
  check_same_shape(op, "dout", dout, "x", x);
  check_dim(op, "rstd", rstd, 1, "(tokens,)");
  check_same_device(op, "rstd", rstd, "x", x);
  const auto want = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  REAL_EXT_CHECK_TYPE(rstd.scalar_type() == want, op, ": rstd has dtype ", rstd.scalar_type(), ", expected ", want,
                      " (rms_norm_fwd's second output)");
  REAL_EXT_CHECK_VALUE(rstd.size(0) == x.size(0), op, ": rstd has ", rstd.size(0), " rows but x has ", x.size(0));
}

void check_rope_args(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const char* op = "rope";
  check_dim(op, "x", x, 3, "(tokens, heads, head_dim)");
  check_float_dtype(op, "x", x);
  REAL_EXT_CHECK_VALUE(x.size(2) % 2 == 0, op, ": head_dim must be even, got ", x.size(2));
  check_dim(op, "cos", cos, 2, "(tokens, head_dim)");
  check_dim(op, "sin", sin, 2, "(tokens, head_dim)");
  check_like(op, "cos", cos, "x", x);
  check_like(op, "sin", sin, "x", x);
  REAL_EXT_CHECK_VALUE(cos.size(0) == x.size(0) && cos.size(1) == x.size(2), op, ": cos must be (tokens, head_dim) = (",
                       x.size(0), ", ", x.size(2), "), got ", shape_str(cos));
  check_same_shape(op, "sin", sin, "cos", cos);
}

void check_silu_mul_args(const char* op, const at::Tensor& gate, const at::Tensor& up) {
  check_dim(op, "gate", gate, 2, "(tokens, intermediate)");
  check_float_dtype(op, "gate", gate);
  check_like(op, "up", up, "gate", gate);
  check_same_shape(op, "up", up, "gate", gate);
}

void check_linear_args(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  const char* op = "linear";
  check_dim(op, "x", x, 2, "(rows, in_features)");
  check_dim(op, "weight", weight, 2, "(out_features, in_features)");
  check_float_dtype(op, "x", x);
  check_like(op, "weight", weight, "x", x);
  REAL_EXT_CHECK_VALUE(weight.size(1) == x.size(1), op, ": weight has in_features ", weight.size(1), " but x has ",
                       x.size(1));
  if (bias.has_value()) {
    check_dim(op, "bias", *bias, 1, "(out_features,)");
    check_like(op, "bias", *bias, "x", x);
    REAL_EXT_CHECK_VALUE(bias->size(0) == weight.size(0), op, ": bias has ", bias->size(0),
                         " elements but weight has out_features ", weight.size(0));
  }
}

}  // namespace real_ext
