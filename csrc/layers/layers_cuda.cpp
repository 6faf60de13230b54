// Torch glue of the CUDA decoder-layer kernels (built only with a CUDA torch):
// validate, allocate, launch. linear is ATen's (cuBLAS serves every M well).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "layers/layer_checks.h"
#include "layers/layers_launch.h"

namespace real_ext {
namespace {

LayerDType layer_dtype(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return LayerDType::kFloat64;
    case at::kBFloat16: return LayerDType::kBFloat16;
    case at::kHalf: return LayerDType::kFloat16;
    default: return LayerDType::kFloat32;
  }
}

at::ScalarType stat_type(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor> rms_norm_fwd_cuda_op(const at::Tensor& x_in, const at::Tensor& weight_in,
                                                        double eps) {
  check_rms_norm_args(x_in, weight_in, eps);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = rows_view(x_in), w = weight_in.contiguous();
  const int64_t T = x.size(0), H = x.size(1);
  at::Tensor out = at::empty({T, H}, x.options());
  at::Tensor rstd = at::empty({T}, x.options().dtype(stat_type(x)));
  check_launch(rms_norm_fwd_cuda(layer_dtype(x.scalar_type()), x.data_ptr(), x.stride(0), w.data_ptr(),
                                 out.data_ptr(), rstd.data_ptr(), T, H, eps, at::cuda::getCurrentCUDAStream()),
               "rms_norm_fwd");
  return {out, rstd};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_bwd_cuda_op(const at::Tensor& dout_in, const at::Tensor& x_in,
                                                        const at::Tensor& weight_in, const at::Tensor& rstd_in) {
  check_rms_norm_bwd_args(dout_in, x_in, weight_in, rstd_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor dout = dout_in.contiguous(), x = rows_view(x_in), w = weight_in.contiguous(),
                   rstd = rstd_in.contiguous();
  const int64_t T = x.size(0), H = x.size(1), chunks = rms_norm_bwd_chunks(T);
  at::Tensor dx = at::empty({T, H}, x.options());
  at::Tensor partial = at::zeros({std::max<int64_t>(chunks, 1), H}, rstd.options());
  check_launch(rms_norm_bwd_cuda(layer_dtype(x.scalar_type()), dout.data_ptr(), x.data_ptr(), x.stride(0),
                                 w.data_ptr(), rstd.data_ptr(), dx.data_ptr(), partial.data_ptr(), chunks, T, H,
                                 at::cuda::getCurrentCUDAStream()),
               "rms_norm_bwd");
  return {dx, partial.sum(0).to(x.scalar_type())};
}

at::Tensor rope_cuda_op(const at::Tensor& x_in, const at::Tensor& cos_in, const at::Tensor& sin_in, bool transpose) {
  check_rope_args(x_in, cos_in, sin_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.stride(2) == 1 ? x_in : x_in.contiguous(), cos = cos_in.contiguous(),
                   sin = sin_in.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  check_launch(rope_cuda(layer_dtype(x.scalar_type()), x.data_ptr(), x.stride(0), x.stride(1), cos.data_ptr(),
                         sin.data_ptr(), out.data_ptr(), x.size(0), x.size(1), x.size(2), transpose,
                         at::cuda::getCurrentCUDAStream()),
               "rope");
  return out;
}

at::Tensor silu_mul_fwd_cuda_op(const at::Tensor& gate_in, const at::Tensor& up_in) {
  check_silu_mul_args("silu_mul", gate_in, up_in);
  const c10::cuda::CUDAGuard guard(gate_in.device());
  const at::Tensor gate = rows_view(gate_in), up = rows_view(up_in);
  at::Tensor out = at::empty(gate.sizes(), gate.options());
  check_launch(silu_mul_fwd_cuda(layer_dtype(gate.scalar_type()), gate.data_ptr(), gate.stride(0), up.data_ptr(),
                                 up.stride(0), out.data_ptr(), gate.size(0), gate.size(1),
                                 at::cuda::getCurrentCUDAStream()),
               "silu_mul_fwd");
  return out;
}

std::tuple<at::Tensor, at::Tensor> silu_mul_bwd_cuda_op(const at::Tensor& dout_in, const at::Tensor& gate_in,
                                                        const at::Tensor& up_in) {
  check_silu_mul_args("silu_mul_bwd", gate_in, up_in);
  check_silu_mul_args("silu_mul_bwd", dout_in, gate_in);
  const c10::cuda::CUDAGuard guard(gate_in.device());
  const at::Tensor dout = dout_in.contiguous(), gate = rows_view(gate_in), up = rows_view(up_in);
  at::Tensor dgate = at::empty(gate.sizes(), gate.options()), dup = at::empty(gate.sizes(), gate.options());
  check_launch(silu_mul_bwd_cuda(layer_dtype(gate.scalar_type()), dout.data_ptr(), gate.data_ptr(), gate.stride(0),
                                 up.data_ptr(), up.stride(0), dgate.data_ptr(), dup.data_ptr(), gate.size(0),
                                 gate.size(1), at::cuda::getCurrentCUDAStream()),
               "silu_mul_bwd");
  return {dgate, dup};
}

at::Tensor linear_cuda_op(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_linear_args(x, weight, bias);
  return at::linear(x, weight, bias);
}

}  // namespace

TORCH_LIBRARY_IMPL(real_ext, CUDA, m) {
  m.impl("rms_norm_fwd", &rms_norm_fwd_cuda_op);
  m.impl("rms_norm_bwd", &rms_norm_bwd_cuda_op);
  m.impl("rope", &rope_cuda_op);
  m.impl("silu_mul_fwd", &silu_mul_fwd_cuda_op);
  m.impl("silu_mul_bwd", &silu_mul_bwd_cuda_op);
  m.impl("linear", &linear_cuda_op);
}

}  // namespace real_ext
