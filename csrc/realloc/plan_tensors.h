// Plans travel between Python and C++ as int64 tensors (layout in registration.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "realloc/planner.h"

namespace real_ext::realloc {

// Reads an (M, 11) int64 transfer tensor; raises ValueError when malformed.
std::vector<Transfer> read_transfers(const at::Tensor& transfers);

}  // namespace real_ext::realloc
