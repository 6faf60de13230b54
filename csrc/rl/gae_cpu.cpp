// Packed GAE on the CPU: sequences in parallel, each a backward recurrence
//   delta_t = r_t + gamma * V_{t+1} - V_t,  A_t = delta_t + gamma * lam * A_{t+1}.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "rl/gae_checks.h"

namespace real_ext {
namespace {

std::tuple<at::Tensor, at::Tensor> gae_cpu(const at::Tensor& rewards, const at::Tensor& values,
                                           const at::Tensor& cu_seqlens, const at::Tensor& bootstrap, double gamma,
                                           double lam) {
  const std::vector<int32_t> cu = check_gae_args(rewards, values, cu_seqlens, bootstrap, gamma, lam);
  const int64_t batch = static_cast<int64_t>(cu.size()) - 1;
  const at::Tensor r = rewards.contiguous(), v = values.contiguous(), boot = bootstrap.contiguous();
  at::Tensor adv = at::empty_like(r), ret = at::empty_like(r);
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "gae_cpu", [&] {
    const scalar_t* rp = r.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    const bool* bp = boot.data_ptr<bool>();
    scalar_t* ap = adv.data_ptr<scalar_t>();
    scalar_t* tp = ret.data_ptr<scalar_t>();
    const scalar_t g = static_cast<scalar_t>(gamma), gl = static_cast<scalar_t>(gamma * lam);
    at::parallel_for(0, batch, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t t0 = cu[i], t1 = cu[i + 1];
        const scalar_t* V = vp + t0 + i;  // this sequence's t1 - t0 + 1 values
        scalar_t next_value = bp[i] ? V[t1 - t0] : scalar_t(0);
        scalar_t a = 0;
        for (int64_t t = t1 - 1; t >= t0; --t) {
          const scalar_t value = V[t - t0];
          a = rp[t] + g * next_value - value + gl * a;
          ap[t] = a;
          tp[t] = a + value;
          next_value = value;
        }
      }
    });
  });
  return {adv, ret};
}

}  // namespace

TORCH_LIBRARY_IMPL(real_ext, CPU, m) { m.impl("gae", &gae_cpu); }

}  // namespace real_ext
