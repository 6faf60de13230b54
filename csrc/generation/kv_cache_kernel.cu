// Paged KV-cache append on CUDA: one grid-stride launch over (token, word of
// its row), copying the k and v rows in the widest word (16 bytes down to 1)
// that divides the row and the alignment of all four pointers.
#include <cstdint>

#include "generation/kv_cache_launch.h"

namespace real_ext {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 16;

template <typename W>
__global__ void kv_cache_append_kernel(W* __restrict__ k_cache, W* __restrict__ v_cache, const W* __restrict__ k,
                                       const W* __restrict__ v, const int64_t* __restrict__ slots, int64_t tokens,
                                       int64_t words_per_row) {
  const int64_t total = tokens * words_per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t t = i / words_per_row;
    const int64_t dst = slots[t] * words_per_row + (i - t * words_per_row);
    k_cache[dst] = k[i];
    v_cache[dst] = v[i];
  }
}

template <typename W>
cudaError_t launch(void* k_cache, void* v_cache, const void* k, const void* v, const int64_t* slots, int64_t tokens,
                   int64_t row_bytes, cudaStream_t stream) {
  const int64_t words_per_row = row_bytes / static_cast<int64_t>(sizeof(W));
  const int64_t total = tokens * words_per_row;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  kv_cache_append_kernel<W><<<static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks), kThreads, 0, stream>>>(
      static_cast<W*>(k_cache), static_cast<W*>(v_cache), static_cast<const W*>(k), static_cast<const W*>(v), slots,
      tokens, words_per_row);
  return cudaGetLastError();
}

}  // namespace

cudaError_t kv_cache_append_cuda(void* k_cache, void* v_cache, const void* k, const void* v, const int64_t* slots,
                                 int64_t tokens, int64_t row_bytes, cudaStream_t stream) {
  if (tokens == 0 || row_bytes == 0) return cudaSuccess;
  const uint64_t bits = reinterpret_cast<uintptr_t>(k_cache) | reinterpret_cast<uintptr_t>(v_cache) |
                        reinterpret_cast<uintptr_t>(k) | reinterpret_cast<uintptr_t>(v) |
                        static_cast<uint64_t>(row_bytes);
  if (bits % 16 == 0) return launch<uint4>(k_cache, v_cache, k, v, slots, tokens, row_bytes, stream);
  if (bits % 8 == 0) return launch<uint2>(k_cache, v_cache, k, v, slots, tokens, row_bytes, stream);
  if (bits % 4 == 0) return launch<uint32_t>(k_cache, v_cache, k, v, slots, tokens, row_bytes, stream);
  if (bits % 2 == 0) return launch<uint16_t>(k_cache, v_cache, k, v, slots, tokens, row_bytes, stream);
  return launch<uint8_t>(k_cache, v_cache, k, v, slots, tokens, row_bytes, stream);
}

}  // namespace real_ext
