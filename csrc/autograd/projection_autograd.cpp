// Autograd of project, coefficients and reconstruct.
//
// project: Y = s·P_U G P_V (+ G when complementing, s = −1), P_U = U Uᵀ. The projection is
// self-adjoint, so Ḡ = project(Ȳ). For U, with A = G P_V: ⟨Ȳ, U Uᵀ A⟩ varies as
// Ū = s·(Ȳ Aᵀ U + A Ȳᵀ U); for V, with B = P_U G: V̄ = s·(Bᵀ Ȳ V + Ȳᵀ B V). These are exact
// derivatives of the formula (not of a projection onto the Stiefel manifold), which is what a
// caller learning U through an orthonormalizing parametrization needs.
// coefficients C = Uᵀ G V: Ḡ = U C̄ Vᵀ, Ū = G V C̄ᵀ, V̄ = Gᵀ U C̄.
// reconstruct Y = U C Vᵀ: C̄ = Uᵀ Ȳ V, Ū = Ȳ V Cᵀ, V̄ = Ȳᵀ U C.
// Broadcast batch dims are summed back to each input's shape.
#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/projection.h"

namespace unisub::detail {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor defined_or_empty(const OptTensor& t) { return t && t->defined() ? *t : at::Tensor(); }
OptTensor as_optional(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// A gradient summed over the batch dims its input was broadcast along, in the input's dtype.
at::Tensor fit(const at::Tensor& grad, const at::Tensor& input) {
  return at::sum_to(grad, input.sizes()).to(input.scalar_type());
}

at::Tensor compute_dtype_of(const at::Tensor& t, at::ScalarType compute) {
  return t.defined() ? t.to(compute) : t;
}

// Undefined optional inputs have no autograd edge, so edge indices shift; whether each input
// wants a gradient is recorded by position instead.
void save_inputs(AutogradContext* ctx, const at::Tensor& X, const OptTensor& U, const OptTensor& V) {
  const auto u = defined_or_empty(U), v = defined_or_empty(V);
  ctx->save_for_backward({X, u, v});
  ctx->saved_data["wants"] = std::vector<bool>{X.requires_grad(), u.defined() && u.requires_grad(),
                                               v.defined() && v.requires_grad()};
}

bool wants_grad(AutogradContext* ctx, size_t i) { return ctx->saved_data["wants"].toBoolList().get(i); }

template <typename Sig>
auto typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}
using OpSig = at::Tensor(const at::Tensor&, const OptTensor&, const OptTensor&, bool, bool);
using OpSig3 = at::Tensor(const at::Tensor&, const OptTensor&, const OptTensor&, bool);

class ProjectFunction : public torch::autograd::Function<ProjectFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& G, const OptTensor& U, const OptTensor& V,
                            bool complement, bool check_basis) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static auto op = typed_op<OpSig>("unisub::project");
    auto Y = op.call(G, U, V, complement, check_basis);  // validates
    save_inputs(ctx, G, U, V);
    ctx->saved_data["complement"] = complement;
    return Y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &G = saved[0], &U = saved[1], &V = saved[2];
    const bool complement = ctx->saved_data["complement"].toBool();
    const auto& dY = grads[0];
    at::Tensor dG, dU, dV;
    if (!dY.defined()) return {dG, dU, dV, at::Tensor(), at::Tensor()};
    const auto compute = dY.scalar_type();
    const auto Gc = G.to(compute), Uc = compute_dtype_of(U, compute), Vc = compute_dtype_of(V, compute);
    static auto op = typed_op<OpSig>("unisub::project");
    if (wants_grad(ctx, 0)) dG = fit(op.call(dY, as_optional(Uc), as_optional(Vc), complement, false), G);
    const double s = complement ? -1.0 : 1.0;
    if (U.defined() && wants_grad(ctx, 1)) {
      const auto A = Vc.defined() ? at::matmul(at::matmul(Gc, Vc), Vc.mT()) : Gc;
      dU = fit(at::matmul(dY, at::matmul(A.mT(), Uc)).add_(at::matmul(A, at::matmul(dY.mT(), Uc))).mul_(s), U);
    }
    if (V.defined() && wants_grad(ctx, 2)) {
      const auto B = Uc.defined() ? at::matmul(Uc, at::matmul(Uc.mT(), Gc)) : Gc;
      dV = fit(at::matmul(B.mT(), at::matmul(dY, Vc)).add_(at::matmul(dY.mT(), at::matmul(B, Vc))).mul_(s), V);
    }
    return {dG, dU, dV, at::Tensor(), at::Tensor()};
  }
};

class CoefficientsFunction : public torch::autograd::Function<CoefficientsFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& G, const OptTensor& U, const OptTensor& V,
                            bool check_basis) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static auto op = typed_op<OpSig3>("unisub::coefficients");
    auto C = op.call(G, U, V, check_basis);
    save_inputs(ctx, G, U, V);
    return C;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &G = saved[0], &U = saved[1], &V = saved[2];
    const auto& dC = grads[0];
    at::Tensor dG, dU, dV;
    if (!dC.defined()) return {dG, dU, dV, at::Tensor()};
    const auto compute = dC.scalar_type();
    const auto Gc = G.to(compute), Uc = compute_dtype_of(U, compute), Vc = compute_dtype_of(V, compute);
    if (wants_grad(ctx, 0)) dG = fit(reconstruct_compute(dC, as_optional(Uc), as_optional(Vc)), G);
    if (U.defined() && wants_grad(ctx, 1)) {
      const auto GV = Vc.defined() ? at::matmul(Gc, Vc) : Gc;
      dU = fit(at::matmul(GV, dC.mT()), U);
    }
    if (V.defined() && wants_grad(ctx, 2)) {
      const auto UtG = Uc.defined() ? at::matmul(Uc.mT(), Gc) : Gc;
      dV = fit(at::matmul(UtG.mT(), dC), V);
    }
    return {dG, dU, dV, at::Tensor()};
  }
};

class ReconstructFunction : public torch::autograd::Function<ReconstructFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& C, const OptTensor& U, const OptTensor& V,
                            bool check_basis) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static auto op = typed_op<OpSig3>("unisub::reconstruct");
    auto Y = op.call(C, U, V, check_basis);
    save_inputs(ctx, C, U, V);
    return Y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &C = saved[0], &U = saved[1], &V = saved[2];
    const auto& dY = grads[0];
    at::Tensor dC, dU, dV;
    if (!dY.defined()) return {dC, dU, dV, at::Tensor()};
    const auto compute = dY.scalar_type();
    const auto Cc = C.to(compute), Uc = compute_dtype_of(U, compute), Vc = compute_dtype_of(V, compute);
    if (wants_grad(ctx, 0)) dC = fit(coefficients_compute(dY, as_optional(Uc), as_optional(Vc)), C);
    if (U.defined() && wants_grad(ctx, 1)) {
      const auto dYV = Vc.defined() ? at::matmul(dY, Vc) : dY;
      dU = fit(at::matmul(dYV, Cc.mT()), U);
    }
    if (V.defined() && wants_grad(ctx, 2)) {
      const auto UC = Uc.defined() ? at::matmul(Uc, Cc) : Cc;
      dV = fit(at::matmul(dY.mT(), UC), V);
    }
    return {dC, dU, dV, at::Tensor()};
  }
};

}  // namespace
}  // namespace unisub::detail

TORCH_LIBRARY_IMPL(unisub, Autograd, m) {
  using namespace unisub::detail;
  m.impl("project", [](const at::Tensor& G, const OptTensor& U, const OptTensor& V, bool complement, bool check) {
    return ProjectFunction::apply(G, U, V, complement, check);
  });
  m.impl("coefficients", [](const at::Tensor& G, const OptTensor& U, const OptTensor& V, bool check) {
    return CoefficientsFunction::apply(G, U, V, check);
  });
  m.impl("reconstruct", [](const at::Tensor& C, const OptTensor& U, const OptTensor& V, bool check) {
    return ReconstructFunction::apply(C, U, V, check);
  });
}
