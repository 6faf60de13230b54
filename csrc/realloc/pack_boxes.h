// Box lists of the pack/unpack ops: which strided boxes of a flat buffer go
// where in a contiguous staging buffer. Raw struct usable from CUDA kernels.
#pragma once

#include <cstdint>

namespace real_ext::realloc {

struct PackBox {
  int64_t offset;      // flat index of the box's first element
  int64_t ld;          // row stride in the flat buffer (elements)
  int64_t rows, cols;  // box extent
  int64_t buf_offset;  // where its rows*cols elements start in the staging buffer
};

}  // namespace real_ext::realloc
