// Validation of pack/unpack arguments, shared by the CPU and CUDA glue.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "realloc/pack_boxes.h"

namespace real_ext::realloc {

// Reads the (n, 5) int64 CPU box list and checks every box lies inside a flat
// buffer of flat_numel elements and a staging buffer of buf_numel elements.
std::vector<PackBox> read_pack_boxes(const char* op, const at::Tensor& boxes, int64_t flat_numel,
                                     int64_t buf_numel);

// flat must be 1-D and contiguous.
void check_flat(const char* op, const char* name, const at::Tensor& t);

}  // namespace real_ext::realloc
