// Pack / unpack of strided boxes on CUDA, one launch for any number of boxes:
// blockIdx.x walks boxes, blockIdx.y splits a box's rows, threads copy a row in
// 16-byte words when the row's two ends are 16-byte aligned, else element-wise.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "realloc/pack_launch.h"

namespace real_ext::realloc {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxRowBlocks = 4096;  // blocks per box along its row segments, at most

// Rows are cut into segments of kSegmentBytes so that one long row (a whole
// 1-D parameter) still spreads over many warps.
constexpr int64_t kSegmentBytes = 4096;

template <typename T>
__device__ void copy_row(char* dst, const char* src, int64_t bytes, int lane) {
  const int64_t n = bytes / sizeof(T);
  T* d = reinterpret_cast<T*>(dst);
  const T* s = reinterpret_cast<const T*>(src);
  for (int64_t i = lane; i < n; i += 32) d[i] = s[i];
}

// One warp per row segment: narrow rows (a head-dim slice is 256 bytes) still
// keep thousands of warps in flight; blockIdx.x walks boxes, blockIdx.y and the
// warp index split a box's segments.
__global__ void copy_boxes_kernel(char* flat, char* buffer, const PackBox* boxes, int64_t n, int64_t es,
                                  bool unpack) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int64_t b = blockIdx.x; b < n; b += gridDim.x) {
    const PackBox box = boxes[b];
    const int64_t bytes = box.cols * es;
    const int64_t segs = (bytes + kSegmentBytes - 1) / kSegmentBytes;
    for (int64_t i = blockIdx.y * warps + warp; i < box.rows * segs; i += gridDim.y * warps) {
      const int64_t r = i / segs, lo = (i % segs) * kSegmentBytes;
      const int64_t len = bytes - lo < kSegmentBytes ? bytes - lo : kSegmentBytes;
      char* f = flat + (box.offset + r * box.ld) * es + lo;
      char* s = buffer + (box.buf_offset + r * box.cols) * es + lo;
      char* dst = unpack ? f : s;
      const char* src = unpack ? s : f;
      const bool vec16 = ((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src) | len) & 15) == 0;
      if (vec16) {
        copy_row<uint4>(dst, src, len, lane);
      } else if (es == 8) {
        copy_row<uint64_t>(dst, src, len, lane);
      } else if (es == 4) {
        copy_row<uint32_t>(dst, src, len, lane);
      } else if (es == 2) {
        copy_row<uint16_t>(dst, src, len, lane);
      } else {
        copy_row<uint8_t>(dst, src, len, lane);
      }
    }
  }
}

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ double to_f(double x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }

template <typename T, typename Acc>
__global__ void unpack_ema_kernel(T* flat, const T* buffer, const PackBox* boxes, int64_t n, Acc eta) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  constexpr int64_t kSeg = kSegmentBytes / 2;  // elements per segment (the grid counts 2-byte segments)
  for (int64_t b = blockIdx.x; b < n; b += gridDim.x) {
    const PackBox box = boxes[b];
    const int64_t segs = (box.cols + kSeg - 1) / kSeg;
    for (int64_t i = blockIdx.y * warps + warp; i < box.rows * segs; i += gridDim.y * warps) {
      const int64_t r = i / segs, c0 = (i % segs) * kSeg;
      const int64_t c1 = box.cols - c0 < kSeg ? box.cols : c0 + kSeg;
      T* d = flat + box.offset + r * box.ld;
      const T* s = buffer + box.buf_offset + r * box.cols;
      for (int64_t c = c0 + lane; c < c1; c += 32) {
        const Acc v = eta * static_cast<Acc>(to_f(s[c])) + (Acc(1) - eta) * static_cast<Acc>(to_f(d[c]));
        if constexpr (sizeof(T) == 8) {
          d[c] = v;
        } else {
          d[c] = from_f<T>(static_cast<float>(v));
        }
      }
    }
  }
}

// Enough blocks along y for the largest box (one warp per segment), no more.
dim3 grid_for(int64_t n, int64_t max_segments) {
  const int64_t y = (max_segments + kThreads / 32 - 1) / (kThreads / 32);
  return dim3(static_cast<unsigned>(n < 65535 ? n : 65535),
              static_cast<unsigned>(y < 1 ? 1 : y > kMaxRowBlocks ? kMaxRowBlocks : y));
}

}  // namespace

cudaError_t realloc_copy_boxes_cuda(void* flat, void* buffer, const PackBox* boxes, int64_t n, int64_t elem_bytes,
                                    int64_t max_row_bytes_segments, bool unpack, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  copy_boxes_kernel<<<grid_for(n, max_row_bytes_segments), kThreads, 0, stream>>>(static_cast<char*>(flat), static_cast<char*>(buffer),
                                                          boxes, n, elem_bytes, unpack);
  return cudaGetLastError();
}

cudaError_t realloc_unpack_ema_cuda(void* flat, const void* buffer, const PackBox* boxes, int64_t n, PackDType dtype,
                                    int64_t max_segments, double eta, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const dim3 grid = grid_for(n, max_segments);
  switch (dtype) {
    case PackDType::kFloat32:
      unpack_ema_kernel<float, float><<<grid, kThreads, 0, stream>>>(
          static_cast<float*>(flat), static_cast<const float*>(buffer), boxes, n, static_cast<float>(eta));
      break;
    case PackDType::kFloat64:
      unpack_ema_kernel<double, double><<<grid, kThreads, 0, stream>>>(
          static_cast<double*>(flat), static_cast<const double*>(buffer), boxes, n, eta);
      break;
    case PackDType::kBFloat16:
      unpack_ema_kernel<__nv_bfloat16, float><<<grid, kThreads, 0, stream>>>(
          static_cast<__nv_bfloat16*>(flat), static_cast<const __nv_bfloat16*>(buffer), boxes, n,
          static_cast<float>(eta));
      break;
    case PackDType::kFloat16:
      unpack_ema_kernel<__half, float><<<grid, kThreads, 0, stream>>>(
          static_cast<__half*>(flat), static_cast<const __half*>(buffer), boxes, n, static_cast<float>(eta));
      break;
  }
  return cudaGetLastError();
}

}  // namespace real_ext::realloc
