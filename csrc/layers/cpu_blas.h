// OpenBLAS's sgemm for the CPU float32 products of many rows, where Python has
// loaded it (real_ext/ops/cpu_blas.py; csrc/layers/cpu_blas.cpp says why).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace real_ext {

// Whether an sgemm is loaded (the float32 products past the kernels' sizes go to it).
bool blas_loaded();

// y = x weight^T (+ bias) through the loaded sgemm: x (M, K) float32 with
// unit column stride, weight (N, K) with a unit stride in either dimension (a
// transposed row-parallel weight is read in place). False, y untouched, where
// no sgemm is loaded or the operands do not fit it (sizes past int32).
bool blas_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                 at::Tensor& y);

}  // namespace real_ext
