// MKL's packed-weight products for the CPU float32 products of a generate()
// call (csrc/layers/mkl_packed.cpp says why and how).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace real_ext {

// y = x weight^T (+ bias) with the weight packed once per scope: x (M, K)
// float32 with unit column stride, weight (N, K) with a unit stride in either
// dimension. False, y untouched, outside a scope, where torch has no MKL, or
// where the operands do not fit it (sizes past int32, other dtypes).
bool packed_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                   at::Tensor& y);

}  // namespace real_ext
