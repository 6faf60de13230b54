// Validation shared by the CPU and CUDA implementations of fused sampling.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace real_ext {

struct SampleShape {
  int64_t batch, vocab, n_banned;
};

// Shapes, dtypes, devices and the scalar arguments (raises ValueError / TypeError).
SampleShape check_sample_args(const at::Tensor& logits, const at::Tensor& uniform, const at::Tensor& suppress,
                              const at::Tensor& banned, double temperature, int64_t top_k, double top_p);

// Value checks, called where the values are read (on the host for CPU, from
// the kernel's error report for CUDA): each raises ValueError when it fails.
void check_banned_id(int64_t i, int64_t id, int64_t vocab);
void check_uniform_value(int64_t row, float u);
void check_row_finite(int64_t row, bool finite_max);

}  // namespace real_ext
