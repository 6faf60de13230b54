// Pack / unpack of strided boxes on CUDA, one launch for any number of boxes.
// Within a box, its rows are cut into units of the widest word (16, 8, 4, 2
// or 1 bytes) that the row starts, strides and length of both buffers allow,
// the units are numbered row-major, and the box's slices (a block's worth of
// threads each) deal them out kUnroll at a time: each thread issues its
// kUnroll loads before its stores, so several loads are in flight per thread
// (what keeps HBM busy), and narrow rows (a 256-byte head-dim slice) still
// fill every lane of a warp. The work items, (box, slice) pairs, are dealt to
// a grid of a few waves of resident blocks that loop over them: many small
// boxes or one narrow slice then run on long-lived blocks instead of tens of
// thousands of one-pass blocks, each paying its launch and prologue; each
// block loads its next item's box before copying the current one, so the
// box's load latency no longer stalls the copy between items.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>

#include "realloc/pack_launch.h"

namespace real_ext::realloc {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;
constexpr int kMaxBoxSlices = 4096;  // slices per box, at most (then each thread loops within its slice)
constexpr int kBlocksPerSm = 2;      // resident copy blocks per SM (__launch_bounds__ below; 96 registers, 3 would spill)
constexpr int kWaves = 4;            // the grid: this many times the resident blocks

// The widest word size in {16, 8, 4, 2, 1} dividing every address and stride.
__device__ __forceinline__ int word_bytes(uintptr_t bits) {
  return (bits & 15) == 0 ? 16 : (bits & 7) == 0 ? 8 : (bits & 3) == 0 ? 4 : (bits & 1) == 0 ? 2 : 1;
}

// Row and column of unit u in a box of `per_row` units per row.
__device__ __forceinline__ void row_col(int64_t u, int64_t per_row, bool narrow, int64_t& r, int64_t& c) {
  if (narrow) {  // 32-bit division where it fits: 64-bit division is slow on the GPU
    const uint32_t q = static_cast<uint32_t>(u) / static_cast<uint32_t>(per_row);
    r = q;
    c = u - static_cast<int64_t>(q) * per_row;
  } else {
    r = u / per_row;
    c = u - r * per_row;
  }
}

template <typename W>
__device__ void copy_units(char* dst, int64_t dst_ld, const char* src, int64_t src_ld, int64_t per_row, int64_t total,
                           int64_t first, int64_t stride) {
  const bool narrow = total <= 0xffffffffLL;
  for (int64_t u0 = first; u0 < total; u0 += stride * kUnroll) {
    W v[kUnroll];
    int64_t at[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int64_t u = u0 + k * stride;
      if (u < total) {
        int64_t r, c;
        row_col(u, per_row, narrow, r, c);
        v[k] = *reinterpret_cast<const W*>(src + r * src_ld + c * static_cast<int64_t>(sizeof(W)));
        at[k] = r * dst_ld + c * static_cast<int64_t>(sizeof(W));
      }
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k)
      if (u0 + k * stride < total) *reinterpret_cast<W*>(dst + at[k]) = v[k];
  }
}

// Box i of the list: from the kernel's parameters (constant bank) or device memory.
__device__ __forceinline__ PackBox box_at(const PackBoxList& list, int64_t i) {
  return list.device != nullptr ? list.device[i] : list.inline_boxes[i];
}

__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    copy_boxes_kernel(char* flat, char* buffer, const __grid_constant__ PackBoxList boxes, int64_t es, bool unpack,
                      int64_t slices) {
  const int64_t stride = slices * blockDim.x, items = boxes.n * slices;
  PackBox next = blockIdx.x < items ? box_at(boxes, blockIdx.x / slices) : PackBox{};
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t b = item / slices;
    const int64_t first = (item - b * slices) * blockDim.x + threadIdx.x;
    const PackBox box = next;
    if (item + gridDim.x < items) next = box_at(boxes, (item + gridDim.x) / slices);
    const int64_t row_bytes = box.cols * es;
    if (box.rows == 0 || row_bytes == 0) continue;
    char* f = flat + box.offset * es;
    char* s = buffer + box.buf_offset * es;
    const int64_t f_ld = box.rows > 1 ? box.ld * es : row_bytes, s_ld = row_bytes;
    char* dst = unpack ? f : s;
    const char* src = unpack ? s : f;
    const int64_t dst_ld = unpack ? f_ld : s_ld, src_ld = unpack ? s_ld : f_ld;
    const int w = word_bytes(reinterpret_cast<uintptr_t>(f) | reinterpret_cast<uintptr_t>(s) |
                             static_cast<uintptr_t>(f_ld) | static_cast<uintptr_t>(row_bytes));
    const int64_t per_row = row_bytes / w, total = per_row * box.rows;
    switch (w) {
      case 16: copy_units<uint4>(dst, dst_ld, src, src_ld, per_row, total, first, stride); break;
      case 8: copy_units<uint2>(dst, dst_ld, src, src_ld, per_row, total, first, stride); break;
      case 4: copy_units<uint32_t>(dst, dst_ld, src, src_ld, per_row, total, first, stride); break;
      case 2: copy_units<uint16_t>(dst, dst_ld, src, src_ld, per_row, total, first, stride); break;
      default: copy_units<uint8_t>(dst, dst_ld, src, src_ld, per_row, total, first, stride); break;
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
__global__ void unpack_ema_kernel(T* flat, const T* buffer, const __grid_constant__ PackBoxList boxes, Acc eta, int64_t slices) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  constexpr int64_t kSeg = 2048;  // elements per warp-sized segment of a row
  for (int64_t item = blockIdx.x; item < boxes.n * slices; item += gridDim.x) {
    const int64_t b = item / slices, slice = item - b * slices;
    const PackBox box = box_at(boxes, b);
    const int64_t segs = (box.cols + kSeg - 1) / kSeg;
    for (int64_t i = slice * warps + warp; i < box.rows * segs; i += slices * warps) {
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

int sm_count() {
  static std::atomic<int> counts[64];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) device = 0;
  int n = counts[device].load(std::memory_order_relaxed);
  if (n == 0) {
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || n < 1) n = 1;
    counts[device].store(n, std::memory_order_relaxed);
  }
  return n;
}

// Slices per box: enough for the largest box's work once over, per_block
// items a slice, at most kMaxBoxSlices. The copy kernel's items are 16-byte
// words, kUnroll per thread; the EMA kernel's are 2048-element row segments,
// one per warp.
int64_t slices_for(int64_t max_work, int64_t per_block) {
  const int64_t y = (max_work + per_block - 1) / per_block;
  return y < 1 ? 1 : y > kMaxBoxSlices ? kMaxBoxSlices : y;
}

// Blocks for `items` (box, slice) work items: a few waves of resident blocks.
unsigned blocks_for(int64_t n, int64_t slices) {
  const int64_t items = n * slices, cap = static_cast<int64_t>(sm_count()) * kBlocksPerSm * kWaves;
  return static_cast<unsigned>(items < cap ? items : cap);
}

}  // namespace

cudaError_t realloc_copy_boxes_cuda(void* flat, void* buffer, const PackBoxList& boxes, int64_t elem_bytes,
                                    int64_t max_units, bool unpack, cudaStream_t stream) {
  if (boxes.n == 0) return cudaSuccess;
  const int64_t slices = slices_for(max_units, kThreads * kUnroll);
  copy_boxes_kernel<<<blocks_for(boxes.n, slices), kThreads, 0, stream>>>(
      static_cast<char*>(flat), static_cast<char*>(buffer), boxes, elem_bytes, unpack, slices);
  return cudaGetLastError();
}

cudaError_t realloc_unpack_ema_cuda(void* flat, const void* buffer, const PackBoxList& boxes, PackDType dtype,
                                    int64_t max_segments, double eta, cudaStream_t stream) {
  if (boxes.n == 0) return cudaSuccess;
  const int64_t slices = slices_for(max_segments, kThreads / 32);
  const unsigned grid = blocks_for(boxes.n, slices);
  switch (dtype) {
    case PackDType::kFloat32:
      unpack_ema_kernel<float, float><<<grid, kThreads, 0, stream>>>(
          static_cast<float*>(flat), static_cast<const float*>(buffer), boxes, static_cast<float>(eta), slices);
      break;
    case PackDType::kFloat64:
      unpack_ema_kernel<double, double><<<grid, kThreads, 0, stream>>>(
          static_cast<double*>(flat), static_cast<const double*>(buffer), boxes, eta, slices);
      break;
    case PackDType::kBFloat16:
      unpack_ema_kernel<__nv_bfloat16, float><<<grid, kThreads, 0, stream>>>(
          static_cast<__nv_bfloat16*>(flat), static_cast<const __nv_bfloat16*>(buffer), boxes,
          static_cast<float>(eta), slices);
      break;
    case PackDType::kFloat16:
      unpack_ema_kernel<__half, float><<<grid, kThreads, 0, stream>>>(
          static_cast<__half*>(flat), static_cast<const __half*>(buffer), boxes, static_cast<float>(eta), slices);
      break;
  }
  return cudaGetLastError();
}

}  // namespace real_ext::realloc
