// Raw-pointer entries of the CUDA pack/unpack kernels (no torch headers).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "realloc/pack_boxes.h"

namespace real_ext::realloc {

enum class PackDType : int { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

// 16-byte words of a box (for the copy kernel's grid): ceil(rows * cols * elem_bytes / 16).
inline int64_t pack_units(const PackBox& b, int64_t elem_bytes) { return (b.rows * b.cols * elem_bytes + 15) / 16; }

// 2048-element row segments of a box (for the EMA kernel's grid): rows * ceil(cols / 2048).
inline int64_t pack_segments(const PackBox& b) { return b.rows * ((b.cols + 2047) / 2048); }

// Box lists of up to kInlinePackBoxes travel inside the kernel's parameters
// (48 x 40 bytes, well within the 4 KiB a launch carries): no host-to-device
// copy on the stream and no pinned staging, which is most of a small pack's
// cost (one tp slice of one parameter). Longer lists are copied to the device
// first and `device` points at them.
constexpr int64_t kInlinePackBoxes = 48;
struct PackBoxList {
  const PackBox* device = nullptr;  // the list on the device, or nullptr: it is `inline_boxes`
  int64_t n = 0;
  PackBox inline_boxes[kInlinePackBoxes];
};

// Copies every box of `flat` into `buffer` (unpack = false) or back
// (unpack = true). elem_bytes in {1,2,4,8}; max_units = the largest pack_units
// over the boxes.
cudaError_t realloc_copy_boxes_cuda(void* flat, void* buffer, const PackBoxList& boxes, int64_t elem_bytes,
                                    int64_t max_units, bool unpack, cudaStream_t stream);

// flat = eta * buffer + (1 - eta) * flat on every box (max_segments: the
// largest pack_segments over the boxes).
cudaError_t realloc_unpack_ema_cuda(void* flat, const void* buffer, const PackBoxList& boxes, PackDType dtype,
                                    int64_t max_segments, double eta, cudaStream_t stream);

}  // namespace real_ext::realloc
