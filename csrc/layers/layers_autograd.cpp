// Autograd of the decoder-layer ops, in C++ for every backend. A decode step
// calls these ~30 times on a handful of tokens: Python autograd rules
// (torch.library.register_autograd) cost ~10 us per call even under no_grad,
// more than the kernels themselves; these cost ~1-2 us.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

namespace real_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using RmsFwd = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double);
using RmsBwd = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                  const at::Tensor&);
using Rope = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool);
using SiluFwd = at::Tensor(const at::Tensor&, const at::Tensor&);
using SiluBwd = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&);

struct RmsNormFn : public torch::autograd::Function<RmsNormFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight, double eps) {
    static const auto fwd = op<RmsFwd>("real_ext::rms_norm_fwd");
    at::AutoDispatchBelowADInplaceOrView below;
    auto [out, rstd] = fwd.call(x, weight, eps);
    ctx->save_for_backward({x, weight, rstd});
    ctx->mark_non_differentiable({rstd});
    return {out, rstd};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto bwd = op<RmsBwd>("real_ext::rms_norm_bwd");
    const auto saved = ctx->get_saved_variables();
    auto [dx, dweight] = bwd.call(grads[0].contiguous(), saved[0], saved[1], saved[2]);
    return {dx, dweight, at::Tensor()};
  }
};

struct RopeFn : public torch::autograd::Function<RopeFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                            bool transpose) {
    static const auto rope = op<Rope>("real_ext::rope");
    at::AutoDispatchBelowADInplaceOrView below;
    ctx->save_for_backward({cos, sin});
    ctx->saved_data["transpose"] = transpose;
    return rope.call(x, cos, sin, transpose);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto rope = op<Rope>("real_ext::rope");
    const auto saved = ctx->get_saved_variables();
    const bool transpose = ctx->saved_data["transpose"].toBool();
    return {rope.call(grads[0], saved[0], saved[1], !transpose), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

struct SiluMulFn : public torch::autograd::Function<SiluMulFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gate, const at::Tensor& up) {
    static const auto fwd = op<SiluFwd>("real_ext::silu_mul_fwd");
    at::AutoDispatchBelowADInplaceOrView below;
    ctx->save_for_backward({gate, up});
    return fwd.call(gate, up);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto bwd = op<SiluBwd>("real_ext::silu_mul_bwd");
    const auto saved = ctx->get_saved_variables();
    auto [dgate, dup] = bwd.call(grads[0].contiguous(), saved[0], saved[1]);
    return {dgate, dup};
  }
};

std::tuple<at::Tensor, at::Tensor> rms_norm_fwd_autograd(const at::Tensor& x, const at::Tensor& weight, double eps) {
  auto out = RmsNormFn::apply(x, weight, eps);
  return {out[0], out[1]};
}

at::Tensor rope_autograd(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool transpose) {
  return RopeFn::apply(x, cos, sin, transpose);
}

at::Tensor silu_mul_fwd_autograd(const at::Tensor& gate, const at::Tensor& up) { return SiluMulFn::apply(gate, up); }

}  // namespace

TORCH_LIBRARY_IMPL(real_ext, Autograd, m) {
  m.impl("rms_norm_fwd", &rms_norm_fwd_autograd);
  m.impl("rope", &rope_autograd);
  m.impl("silu_mul_fwd", &silu_mul_fwd_autograd);
}

}  // namespace real_ext
