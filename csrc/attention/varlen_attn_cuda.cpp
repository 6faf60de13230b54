// Torch glue for the CUDA varlen attention kernels (built only with a CUDA
// torch): validate, allocate, describe the call in plain pointers, launch.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "attention/varlen_attn_checks.h"
#include "attention/varlen_attn_params.h"

namespace real_ext {
namespace {

AttnDType attn_dtype(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16: return AttnDType::kBFloat16;
    case at::kHalf: return AttnDType::kFloat16;
    default: return AttnDType::kFloat32;
  }
}

void fill_common(VarlenAttnFwdParams& p, const VarlenAttnShape& s, const at::Tensor& q, const at::Tensor& k,
                 const at::Tensor& v, const at::Tensor& cu_q, const at::Tensor& cu_k, int64_t max_q, int64_t max_k,
                 double scale, bool causal) {
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.cu_seqlens_q = cu_q.data_ptr<int32_t>();
  p.cu_seqlens_k = cu_k.data_ptr<int32_t>();
  p.batch = static_cast<int>(s.batch);
  p.heads_q = static_cast<int>(s.heads_q);
  p.heads_kv = static_cast<int>(s.heads_kv);
  p.head_dim = static_cast<int>(s.head_dim);
  p.max_seqlen_q = static_cast<int>(max_q);
  p.max_seqlen_k = static_cast<int>(max_k);
  p.total_q = s.total_q;
  p.total_k = s.total_k;
  p.scale = static_cast<float>(scale);
  p.causal = causal;
  p.dtype = attn_dtype(q.scalar_type());
  p.num_sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
}

std::tuple<at::Tensor, at::Tensor> varlen_attn_fwd_cuda_op(const at::Tensor& q_in, const at::Tensor& k_in,
                                                           const at::Tensor& v_in, const at::Tensor& cu_seqlens_q,
                                                           const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                                                           int64_t max_seqlen_k, double scale, bool causal) {
  const VarlenAttnShape s = check_varlen_attn_args("varlen_attn_fwd", q_in, k_in, v_in, cu_seqlens_q, cu_seqlens_k,
                                                   max_seqlen_q, max_seqlen_k);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const at::Tensor cu_q = cu_seqlens_q.contiguous(), cu_k = cu_seqlens_k.contiguous();
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({s.heads_q, s.total_q}, q.options().dtype(at::kFloat));
  VarlenAttnFwdParams p;
  fill_common(p, s, q, k, v, cu_q, cu_k, max_seqlen_q, max_seqlen_k, scale, causal);
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  const cudaError_t err = varlen_attn_fwd_cuda(p, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "varlen_attn_fwd: CUDA kernel failed: ", cudaGetErrorString(err));
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_attn_bwd_cuda_op(
    const at::Tensor& dout_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& out_in, const at::Tensor& lse_in, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, double scale, bool causal) {
  const VarlenAttnShape s = check_varlen_attn_args("varlen_attn_bwd", q_in, k_in, v_in, cu_seqlens_q, cu_seqlens_k,
                                                   max_seqlen_q, max_seqlen_k);
  check_varlen_attn_bwd_args("varlen_attn_bwd", s, dout_in, q_in, out_in, lse_in);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const at::Tensor dout = dout_in.contiguous(), out = out_in.contiguous(), lse = lse_in.contiguous();
  const at::Tensor cu_q = cu_seqlens_q.contiguous(), cu_k = cu_seqlens_k.contiguous();
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  VarlenAttnBwdParams p;
  fill_common(p, s, q, k, v, cu_q, cu_k, max_seqlen_q, max_seqlen_k, scale, causal);
  p.out = const_cast<void*>(out.data_ptr());
  p.lse = const_cast<float*>(lse.data_ptr<float>());
  p.dout = dout.data_ptr();
  p.dq = dq.data_ptr();
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  const size_t ws_bytes = varlen_attn_bwd_workspace_bytes(p);
  at::Tensor workspace = at::empty({static_cast<int64_t>(ws_bytes) + 256}, q.options().dtype(at::kByte));
  const uintptr_t base = reinterpret_cast<uintptr_t>(workspace.data_ptr());
  p.workspace = reinterpret_cast<void*>((base + 255) & ~uintptr_t(255));
  const cudaError_t err = varlen_attn_bwd_cuda(p, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "varlen_attn_bwd: CUDA kernel failed: ", cudaGetErrorString(err));
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(real_ext, CUDA, m) {
  m.impl("varlen_attn_fwd", &varlen_attn_fwd_cuda_op);
  m.impl("varlen_attn_bwd", &varlen_attn_bwd_cuda_op);
}

}  // namespace real_ext
