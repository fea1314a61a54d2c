// Autograd of svd. The backward is the exact derivative of the thin SVD (real case):
//   Ā = U [ (skew(UᵀŪ) ∘ F) S + S (skew(VᵀV̄) ∘ F) + diag(S̄) ] Vᵀ
//       + (I − UUᵀ) Ū S⁻¹ Vᵀ + U S⁻¹ V̄ᵀ (I − VVᵀ),     F_ij = 1 / (σ_j² − σ_i²), F_ii = 0.
// For rank < min(m, n) the forward keeps the full thin SVD and the backward pads the incoming
// gradients with zeros, so truncated outputs get their exact gradient (the discarded σ couple in
// through F). Exactly repeated σ make F infinite; those pairs are dropped (F = 0), which is exact
// for losses that do not depend on the choice of basis inside a repeated singular subspace.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

namespace unisub::detail {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor skew(const at::Tensor& X) { return X - X.mT(); }

at::Tensor svd_backward(const at::Tensor& gU, const at::Tensor& gS, const at::Tensor& gVh,
                        const at::Tensor& U, const at::Tensor& S, const at::Tensor& Vh) {
  const int64_t m = U.size(-2), n = Vh.size(-1), k = S.size(-1);
  auto inner = gS.defined() ? at::diag_embed(gS) : at::zeros_like(at::diag_embed(S));
  const auto S2 = S * S;
  const auto E = S2.unsqueeze(-2) - S2.unsqueeze(-1);  // E_ij = σ_j² − σ_i²
  // reciprocals of safe denominators: where() passes a NaN derivative of 1/0 through in a double
  // backward, even from the branch it does not take
  const auto zero_E = E == 0, positive_S = S > 0;
  const auto F = at::where(zero_E, at::zeros_like(E), at::where(zero_E, at::ones_like(E), E).reciprocal());
  const auto S_inv = at::where(positive_S, at::where(positive_S, S, at::ones_like(S)).reciprocal(), at::zeros_like(S));
  at::Tensor grad;
  at::Tensor UtgU, VtgV;
  if (gU.defined()) {
    UtgU = at::matmul(U.mT(), gU);
    inner = inner + (skew(UtgU) * F) * S.unsqueeze(-2);
  }
  if (gVh.defined()) {
    VtgV = at::matmul(Vh, gVh.mT());  // Vᵀ V̄ with V̄ = gVhᵀ
    inner = inner + S.unsqueeze(-1) * (skew(VtgV) * F);
  }
  grad = at::matmul(at::matmul(U, inner), Vh);
  if (gU.defined() && m > k) {
    grad = grad + at::matmul((gU - at::matmul(U, UtgU)) * S_inv.unsqueeze(-2), Vh);
  }
  if (gVh.defined() && n > k) {
    grad = grad + at::matmul(U, S_inv.unsqueeze(-1) * (gVh - at::matmul(VtgV.mT(), Vh)));
  }
  return grad;
}

at::Tensor pad_last(const at::Tensor& g, int64_t dim, int64_t full) {
  if (!g.defined() || g.size(dim) == full) return g;
  auto sizes = g.sizes().vec();
  sizes[dim < 0 ? sizes.size() + dim : dim] = full - g.size(dim);
  return at::cat({g, at::zeros(sizes, g.options())}, dim);
}

class SvdFunction : public torch::autograd::Function<SvdFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& A, int64_t rank,
                               c10::string_view method) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("unisub::svd", "")
                         .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, int64_t, c10::string_view)>();
    const int64_t full = std::min(A.size(-2), A.size(-1));
    const bool truncated = rank > 0 && rank < full;
    // Exact gradients of a truncated SVD need the whole spectrum; a sketch has none.
    const std::string full_method = (truncated && method == "randomized") ? "lapack" : std::string(method);
    auto [U, S, Vh] = op.call(A, truncated ? -1 : rank, full_method);
    // Saved as the outputs they are, U, S and Vh carry their dependence on A into a double
    // backward (create_graph=True), which then differentiates the formula above exactly; the full
    // factors a truncated svd saves are no outputs, so its double backward is refused instead
    ctx->save_for_backward({U, S, Vh});
    ctx->saved_data["truncated"] = truncated;
    if (!truncated) return {U, S, Vh};
    return {U.narrow(-1, 0, rank).contiguous(), S.narrow(-1, 0, rank).contiguous(), Vh.narrow(-2, 0, rank).contiguous()};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &U = saved[0], &S = saved[1], &Vh = saved[2];
    const int64_t full = S.size(-1);
    if (!grads[0].defined() && !grads[1].defined() && !grads[2].defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    TORCH_CHECK(!(at::GradMode::is_enabled() && ctx->saved_data["truncated"].toBool()),
                "unisub.svd: second derivatives (backward with create_graph=True) of a truncated svd (rank < min(m, n)) "
                "are not available: take the full svd and narrow it, or use torch.linalg.svd");
    auto gA = svd_backward(pad_last(grads[0], -1, full), pad_last(grads[1], -1, full),
                           pad_last(grads[2], -2, full), U, S, Vh);
    return {gA, at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> svd_autograd(const at::Tensor& A, int64_t rank,
                                                            c10::string_view method) {
  if (!(at::GradMode::is_enabled() && A.requires_grad())) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("unisub::svd", "")
                         .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, int64_t, c10::string_view)>();
    return op.call(A, rank, method);
  }
  auto out = SvdFunction::apply(A, rank, method);
  return {out[0], out[1], out[2]};
}

}  // namespace
}  // namespace unisub::detail

TORCH_LIBRARY_IMPL(unisub, Autograd, m) {
  m.impl("svd", unisub::detail::svd_autograd);
}
