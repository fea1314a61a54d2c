// Autograd of mode_gram. With S = Ḡ + Ḡᵀ, the gradient of G = D₍dim₎D₍dim₎ᵀ is S·D₍dim₎ folded
// back; centring D = X − mean₀(X) is a symmetric projection, so it is applied to that gradient too.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/checks.h"
#include "ops/gram.h"

namespace unisub::detail {
namespace {

at::Tensor mode_gram_backward(const at::Tensor& grad_G, const at::Tensor& X, int64_t dim, bool center) {
  const auto compute = result_dtype(X);
  auto D = X.to(compute);
  if (center) D = D - D.mean(0, /*keepdim=*/true);
  const Unfolding u = describe_unfolding(X, dim);
  const auto S = (grad_G + grad_G.t()).to(compute);
  auto grad_D = at::matmul(S, D.reshape({u.outer, u.rows, u.inner})).reshape(X.sizes());
  if (center) grad_D = grad_D - grad_D.mean(0, /*keepdim=*/true);
  return grad_D.to(X.scalar_type());
}

class ModeGramFunction : public torch::autograd::Function<ModeGramFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& X, int64_t dim,
                            bool center) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("unisub::mode_gram", "")
                         .typed<at::Tensor(const at::Tensor&, int64_t, bool)>();
    auto G = op.call(X, dim, center);  // validates X and dim
    ctx->save_for_backward({X});
    ctx->saved_data["dim"] = wrap_dim(dim, X.dim(), "mode_gram", "dim");
    ctx->saved_data["center"] = center;
    return G;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto X = ctx->get_saved_variables()[0];
    at::Tensor grad_X;
    if (grads[0].defined()) {
      grad_X = mode_gram_backward(grads[0], X, ctx->saved_data["dim"].toInt(),
                                  ctx->saved_data["center"].toBool());
    }
    return {grad_X, at::Tensor(), at::Tensor()};
  }
};

}  // namespace
}  // namespace unisub::detail

TORCH_LIBRARY_IMPL(unisub, Autograd, m) {
  m.impl("mode_gram", [](const at::Tensor& X, int64_t dim, bool center) {
    return unisub::detail::ModeGramFunction::apply(X, dim, center);
  });
}
