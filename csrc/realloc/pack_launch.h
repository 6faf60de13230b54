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

// Copies every box of `flat` into `buffer` (unpack = false) or back
// (unpack = true). `boxes` is a device array of n PackBox; elem_bytes in
// {1,2,4,8}; max_units = the largest pack_units over the boxes.
cudaError_t realloc_copy_boxes_cuda(void* flat, void* buffer, const PackBox* boxes, int64_t n, int64_t elem_bytes,
                                    int64_t max_units, bool unpack, cudaStream_t stream);

// flat = eta * buffer + (1 - eta) * flat on every box (max_segments: the
// largest pack_segments over the boxes).
cudaError_t realloc_unpack_ema_cuda(void* flat, const void* buffer, const PackBox* boxes, int64_t n, PackDType dtype,
                                    int64_t max_segments, double eta, cudaStream_t stream);

}  // namespace real_ext::realloc
