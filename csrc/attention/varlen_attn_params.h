// Plain-pointer description of a packed (varlen) attention call, shared by the
// torch glue (varlen_attn_cuda.cpp) and the CUDA kernels (*_kernel.cu). No torch
// headers here: the kernels must compile with a bare nvcc (see DESIGN.md, Build).
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

namespace real_ext {

enum class AttnDType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// Layouts (all row-major, head_dim contiguous):
//   q, out, dout, dq: (total_q, heads_q, head_dim)     row stride heads_q * head_dim
//   k, v, dk, dv:     (total_k, heads_kv, head_dim)    row stride heads_kv * head_dim
//   lse:              (heads_q, total_q) float32       natural-log sum of exp(scale * q.k)
//   cu_seqlens_*:     (batch + 1,) int32 on the device, validated by the caller
// Causal masking is aligned to the bottom-right corner (flash-attn): query i of a
// sequence sees key j iff j <= i + (len_k - len_q). A query row that sees no key
// gets out = 0 and lse = -inf.
struct VarlenAttnFwdParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;
  const int32_t* cu_seqlens_q = nullptr;
  const int32_t* cu_seqlens_k = nullptr;
  int batch = 0, heads_q = 0, heads_kv = 0, head_dim = 0;
  int max_seqlen_q = 0, max_seqlen_k = 0;
  int64_t total_q = 0, total_k = 0;
  float scale = 1.f;
  bool causal = true;
  AttnDType dtype = AttnDType::kBFloat16;
  int num_sms = 0;  // device multiprocessor count, for grid sizing
};

struct VarlenAttnBwdParams : VarlenAttnFwdParams {
  const void* dout = nullptr;  // same dtype and layout as out
  void* dq = nullptr;          // same dtype and layout as q
  void* dk = nullptr;          // same dtype and layout as k
  void* dv = nullptr;          // same dtype and layout as v
  void* workspace = nullptr;   // varlen_attn_bwd_workspace_bytes(*this) bytes, 256-aligned
};

// Bytes of device scratch the backward needs (float32 accumulators etc.).
size_t varlen_attn_bwd_workspace_bytes(const VarlenAttnBwdParams& p);

// Launch on `stream`; return the first CUDA error seen (cudaSuccess otherwise).
// Supported: dtype bf16 / fp16 (tensor cores, sm_80+) and fp32; head_dim <= 256
// and a multiple of 8.
cudaError_t varlen_attn_fwd_cuda(const VarlenAttnFwdParams& p, cudaStream_t stream);
cudaError_t varlen_attn_bwd_cuda(const VarlenAttnBwdParams& p, cudaStream_t stream);

}  // namespace real_ext
