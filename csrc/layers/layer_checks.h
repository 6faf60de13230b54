// Validation shared by the CPU and CUDA decoder-layer ops (rms_norm, rope,
// silu_mul): shapes, dtypes and devices, each error naming the argument.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace real_ext {

// x (T, H), weight (H,), eps > 0; weight in x's dtype on x's device.
void check_rms_norm_args(const at::Tensor& x, const at::Tensor& weight, double eps);
// dout like x; rstd (T,) float32 (float64 for float64 x).
void check_rms_norm_bwd_args(const at::Tensor& dout, const at::Tensor& x, const at::Tensor& weight,
                             const at::Tensor& rstd);
// x (T, heads, head_dim), head_dim even; cos, sin (T, head_dim) in x's dtype.
void check_rope_args(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
// gate, up (T, I) of one dtype and device; dout (bwd) the same.
void check_silu_mul_args(const char* op, const at::Tensor& gate, const at::Tensor& up);

// A 2-D operand as the kernels read it: unit column stride, any row stride
// (views of a fused product stay uncopied).
inline at::Tensor rows_view(const at::Tensor& t) { return t.stride(1) == 1 ? t : t.contiguous(); }

// x (M, K), weight (N, K), bias (N,) or none; one dtype and device.
void check_linear_args(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias);

}  // namespace real_ext
