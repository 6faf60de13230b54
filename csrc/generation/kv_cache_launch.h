// Raw-pointer entry of the CUDA KV-cache append kernel (no torch headers:
// compiles with bare nvcc).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace real_ext {

// k_cache[slots[t]] = k[t] and v_cache[slots[t]] = v[t] for t < tokens, rows
// of row_bytes bytes; k and v contiguous (tokens, row); slots (tokens,) int64
// on the device, already checked to lie in the caches. One launch.
cudaError_t kv_cache_append_cuda(void* k_cache, void* v_cache, const void* k, const void* v, const int64_t* slots,
                                 int64_t tokens, int64_t row_bytes, cudaStream_t stream);

}  // namespace real_ext
