// Subspace metrics: schemas, input checks, the device-independent drivers and the C++ API.
//
// principal_angles follows Björck–Golub with the sine/cosine split of Knyazev–Argentati: with
// A, B orthonormal (B the one with fewer columns, p of them), the cosines are the singular values
// of Aᵀ B and the sines those of the residual B − A (Aᵀ B). arccos is flat near 0 (an angle of
// 1e-8 has cos θ = 1 − 5e-17, which rounds to 1), so angles below π/4 are taken from the sines
// and the others from the cosines; both are then accurate to a few ε absolute. Everything runs in
// float64 (the problems are m × k, cheap), so float32 inputs lose only their own rounding.
#include "ops/metrics.h"

#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <string>

#include "ops/basis_checks.h"
#include "ops/checks.h"
#include "ops/square_range.h"
#include "unisub/metrics.h"

namespace unisub::detail {
namespace {

at::IntArrayRef batch_of(const at::Tensor& t) { return t.sizes().slice(0, t.dim() - 2); }

void check_basis_pair(const at::Tensor& U1, const at::Tensor& U2, std::string_view op, bool check_basis) {
  for (const auto& [B, name] : {std::pair{&U1, "U1"}, std::pair{&U2, "U2"}}) {
    check_float_input(*B, op, name);
    check_min_dim(*B, 2, op, name, "[*, m, k]");
    TORCH_CHECK(B->size(-1) <= B->size(-2), "unisub.", op, ": ", name,
                " must not have more columns than rows (a basis of at most ", B->size(-2),
                " orthonormal columns), got shape ", B->sizes());
  }
  check_same_device(U1, "U1", U2, "U2", op);
  TORCH_CHECK(U1.scalar_type() == U2.scalar_type(), "unisub.", op, ": U1 and U2 must have the same dtype, got ",
              U1.scalar_type(), " and ", U2.scalar_type());
  TORCH_CHECK(U1.size(-2) == U2.size(-2), "unisub.", op,
              ": U1 and U2 must span subspaces of the same space (equal row counts m), got shapes ", U1.sizes(),
              " and ", U2.sizes());
  const auto b1 = batch_of(U1), b2 = batch_of(U2);
  bool broadcastable = true;
  for (size_t i = 0; i < std::min(b1.size(), b2.size()); ++i) {
    const int64_t x = b1[b1.size() - 1 - i], y = b2[b2.size() - 1 - i];
    broadcastable = broadcastable && (x == y || x == 1 || y == 1);
  }
  TORCH_CHECK(broadcastable, "unisub.", op, ": the batch dims of U1 ", b1, " and U2 ", b2,
              " must broadcast, got shapes ", U1.sizes(), " and ", U2.sizes());
  if (check_basis) {
    check_orthonormal(U1, op, "U1");
    check_orthonormal(U2, op, "U2");
  }
}

// Angles in float64, [*, min(k1, k2)], ascending.
at::Tensor angles_float64(const at::Tensor& U1, const at::Tensor& U2) {
  auto A = U1.to(at::kDouble), B = U2.to(at::kDouble);
  if (B.size(-1) > A.size(-1)) std::swap(A, B);
  const auto M = at::matmul(A.mT(), B);
  const auto cosines = at::linalg_svdvals(M).clamp_max(1.0);                      // descending
  const auto sines = at::linalg_svdvals(B - at::matmul(A, M)).flip(-1).clamp_max(1.0);  // ascending
  // Index i of both holds the i-th smallest angle.
  return at::where(sines < cosines, at::asin(sines), at::acos(cosines));
}

std::string_view distance_metrics() { return "'projection', 'geodesic' or 'max'"; }

}  // namespace

at::Tensor principal_angles_impl(const at::Tensor& U1, const at::Tensor& U2, bool check_basis) {
  const at::NoGradGuard no_grad;  // not differentiable (see checks.h)
  check_basis_pair(U1, U2, "principal_angles", check_basis);
  return angles_float64(U1, U2).to(result_dtype(U1));
}

at::Tensor subspace_distance_impl(const at::Tensor& U1, const at::Tensor& U2, std::string_view metric,
                                  bool check_basis) {
  constexpr std::string_view op = "subspace_distance";
  const at::NoGradGuard no_grad;  // not differentiable (see checks.h)
  TORCH_CHECK(metric == "projection" || metric == "geodesic" || metric == "max", "unisub.", op,
              ": metric must be ", distance_metrics(), ", got '", metric, "'");
  check_basis_pair(U1, U2, op, check_basis);
  const auto theta = angles_float64(U1, U2);
  at::Tensor d;
  if (metric == "geodesic") {
    d = theta.square().sum(-1).sqrt();
  } else if (metric == "projection") {
    d = at::sin(theta).square().sum(-1).sqrt();
  } else {
    // The largest angle is the last; with no angles (k = 0) the subspaces are trivially equal.
    d = theta.size(-1) == 0 ? at::zeros(batch_of(theta.unsqueeze(-1)), theta.options())
                            : at::sin(theta.select(-1, theta.size(-1) - 1));
  }
  return d.to(result_dtype(U1));
}

at::Tensor explained_variance_impl(const at::Tensor& X_in, const at::Tensor& U, int64_t dim, bool center,
                                   bool check_basis) {
  constexpr std::string_view op = "explained_variance";
  const at::NoGradGuard no_grad;  // not differentiable (see checks.h)
  check_float_input(X_in, op, "X");
  check_min_dim(X_in, 2, op, "X", "a model axis and at least one weight axis: [M, d1, ...]");
  TORCH_CHECK(X_in.size(0) > 0, "unisub.", op, ": X must hold at least one model (size of dim 0 > 0), got shape ",
              X_in.sizes());
  dim = wrap_dim(dim, X_in.dim(), op, "dim");
  check_float_input(U, op, "U");
  check_same_device(X_in, "X", U, "U", op);
  const int64_t d = X_in.size(dim);
  TORCH_CHECK(U.dim() == 2 && U.size(0) == d, "unisub.", op, ": U must have shape [", d, ", k] (size of X along dim ",
              dim, "), got shape ", U.sizes());
  TORCH_CHECK(U.size(1) <= d, "unisub.", op,
              ": U must not have more columns than rows (a basis of at most ", d, " columns), got shape ", U.sizes());
  if (check_basis) check_orthonormal(U, op, "U");
  // ratios of energies: the same for X·2^-e, whose squares stay within float64
  const auto X = into_square_range(X_in).first;

  const auto Ud = U.to(at::kDouble);
  const int64_t models = X.size(0), k = U.size(1);
  at::Tensor mean;
  if (center) mean = X.mean(0, /*keepdim=*/true, at::kDouble);
  // Models are processed in blocks so that the float64 copy stays bounded whatever the stack size.
  const int64_t per_model = X.numel() / models;  // 0 where another dim of X is 0
  const int64_t block = std::max<int64_t>(1, (32LL << 20) / (8 * std::max<int64_t>(1, per_model)));
  auto energy = at::zeros({k}, X.options().dtype(at::kDouble));
  auto total = at::zeros({}, X.options().dtype(at::kDouble));
  at::Tensor model_axis_coeffs;  // dim 0: Uᵀ X₍₀₎ accumulates over blocks of rows
  if (dim == 0) model_axis_coeffs = at::zeros({k, per_model}, X.options().dtype(at::kDouble));
  for (int64_t m0 = 0; m0 < models; m0 += block) {
    const int64_t count = std::min(block, models - m0);
    auto D = X.narrow(0, m0, count).to(at::kDouble);
    if (center) D = D - mean;
    total += D.square().sum();
    if (dim == 0) {
      model_axis_coeffs.addmm_(Ud.narrow(0, m0, count).t(), D.reshape({count, per_model}));
    } else {
      energy += at::tensordot(Ud, D, {0}, {dim}).flatten(1).square().sum(1);  // flatten: k may be 0
    }
  }
  if (dim == 0) energy = model_axis_coeffs.square().sum(1);
  return (energy.cumsum(0) / total).to(result_dtype(X));
}

}  // namespace unisub::detail

TORCH_LIBRARY_FRAGMENT(unisub, m) {
  m.def("principal_angles(Tensor U1, Tensor U2, bool check_basis=True) -> Tensor");
  m.def("subspace_distance(Tensor U1, Tensor U2, str metric=\"projection\", bool check_basis=True) -> Tensor");
  m.def("explained_variance(Tensor X, Tensor U, int dim, bool center=False, bool check_basis=True) -> Tensor");
}

namespace unisub {

at::Tensor principal_angles(const at::Tensor& U1, const at::Tensor& U2, bool check_basis) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("unisub::principal_angles", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, bool)>();
  return op.call(U1, U2, check_basis);
}

at::Tensor subspace_distance(const at::Tensor& U1, const at::Tensor& U2, std::string_view metric, bool check_basis) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("unisub::subspace_distance", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view, bool)>();
  return op.call(U1, U2, metric, check_basis);
}

at::Tensor explained_variance(const at::Tensor& X, const at::Tensor& U, int64_t dim, bool center, bool check_basis) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("unisub::explained_variance", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, bool, bool)>();
  return op.call(X, U, dim, center, check_basis);
}

}  // namespace unisub
