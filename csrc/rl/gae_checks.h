// Validation shared by the CPU and CUDA implementations of packed GAE.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace real_ext {

// Checks shapes, dtypes, devices, offsets and gamma/lam; returns the host offsets.
std::vector<int32_t> check_gae_args(const at::Tensor& rewards, const at::Tensor& values, const at::Tensor& cu_seqlens,
                                    const at::Tensor& bootstrap, double gamma, double lam);

}  // namespace real_ext
