// Torch glue for the CUDA GAE kernel (built only with a CUDA torch).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "rl/gae_checks.h"
#include "rl/gae_launch.h"

namespace real_ext {
namespace {

std::tuple<at::Tensor, at::Tensor> gae_cuda(const at::Tensor& rewards, const at::Tensor& values,
                                            const at::Tensor& cu_seqlens, const at::Tensor& bootstrap, double gamma,
                                            double lam) {
  const std::vector<int32_t> cu = check_gae_args(rewards, values, cu_seqlens, bootstrap, gamma, lam);
  const c10::cuda::CUDAGuard guard(rewards.device());
  const at::Tensor r = rewards.contiguous(), v = values.contiguous(), boot = bootstrap.contiguous(),
                   offsets = cu_seqlens.contiguous();
  at::Tensor adv = at::empty_like(r), ret = at::empty_like(r);
  const int batch = static_cast<int>(cu.size()) - 1;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  cudaError_t err;
  if (r.scalar_type() == at::kDouble) {
    err = gae_cuda_launch<double>(r.data_ptr<double>(), v.data_ptr<double>(), offsets.data_ptr<int32_t>(),
                                  boot.data_ptr<bool>(), batch, gamma, lam, adv.data_ptr<double>(),
                                  ret.data_ptr<double>(), stream);
  } else {
    err = gae_cuda_launch<float>(r.data_ptr<float>(), v.data_ptr<float>(), offsets.data_ptr<int32_t>(),
                                 boot.data_ptr<bool>(), batch, gamma, lam, adv.data_ptr<float>(),
                                 ret.data_ptr<float>(), stream);
  }
  TORCH_CHECK(err == cudaSuccess, "gae: CUDA kernel launch failed: ", cudaGetErrorString(err));
  return {adv, ret};
}

}  // namespace

TORCH_LIBRARY_IMPL(real_ext, CUDA, m) { m.impl("gae", &gae_cuda); }

}  // namespace real_ext
