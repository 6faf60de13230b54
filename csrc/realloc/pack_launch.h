// Raw-pointer entries of the CUDA pack/unpack kernels (no torch headers).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "realloc/pack_boxes.h"

namespace real_ext::realloc {

enum class PackDType : int { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

// Segments of a box (for grid sizing): rows * ceil(cols * elem_bytes / 4096).
inline int64_t pack_segments(const PackBox& b, int64_t elem_bytes) {
  return b.rows * ((b.cols * elem_bytes + 4095) / 4096);
}

// Copies every box of `flat` into `buffer` (unpack = false) or back
// (unpack = true). `boxes` is a device array of n PackBox; elem_bytes in
// {1,2,4,8}; max_segments = the largest pack_segments over the boxes.
cudaError_t realloc_copy_boxes_cuda(void* flat, void* buffer, const PackBox* boxes, int64_t n, int64_t elem_bytes,
                                    int64_t max_segments, bool unpack, cudaStream_t stream);

// flat = eta * buffer + (1 - eta) * flat on every box (max_segments as above,
// with elem_bytes 2).
cudaError_t realloc_unpack_ema_cuda(void* flat, const void* buffer, const PackBox* boxes, int64_t n, PackDType dtype,
                                    int64_t max_segments, double eta, cudaStream_t stream);

}  // namespace real_ext::realloc
