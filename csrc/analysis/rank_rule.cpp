// The rank for an energy threshold τ, one rule for mode_svd, `unisub analyze` and unisub-analyze
// (see unisub/analysis.h for the slack), and the sorted eigendecomposition of a Gram.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>

#include "ops/checks.h"
#include "ops/svd.h"
#include "unisub/analysis.h"

namespace unisub::analysis {

double energy_slack(int64_t d) {
  return 8.0 * static_cast<double>(std::max<int64_t>(d, 1)) * std::numeric_limits<double>::epsilon();
}

int64_t rank_for_energy(const std::vector<double>& ev, double tau, std::optional<double> total) {
  TORCH_CHECK(tau > 0.0 && tau <= 1.0, "unisub.rank_for_energy: tau must lie in (0, 1], got ", tau);
  const int64_t d = static_cast<int64_t>(ev.size());
  double whole = 0.0;
  if (total) {
    whole = *total;
  } else {
    for (double x : ev) whole += x;
  }
  if (!(whole > 0.0) || d == 0) return 1;  // a zero stack: every basis explains nothing; keep one direction
  const double target = tau - energy_slack(d);
  double partial = 0.0;
  for (int64_t j = 0; j < d; ++j) {
    partial += ev[j];
    if (partial / whole >= target) return j + 1;
  }
  return d;
}

int64_t rank_for_energy(const at::Tensor& eigenvalues, double tau, std::optional<double> total) {
  TORCH_CHECK(eigenvalues.dim() == 1, "unisub.rank_for_energy: eigenvalues must be 1-D, got shape ",
              eigenvalues.sizes());
  const auto c = eigenvalues.detach().to(at::kCPU, at::kDouble).contiguous();
  // a NaN spectrum (or total) would keep one direction as if the stack were zero
  TORCH_CHECK_VALUE(detail::all_finite(c), "unisub.rank_for_energy: eigenvalues hold NaN or infinity");
  TORCH_CHECK_VALUE(!total || std::isfinite(*total), "unisub.rank_for_energy: total must be finite, got ", *total);
  const double* p = c.data_ptr<double>();
  return rank_for_energy(std::vector<double>(p, p + c.numel()), tau, total);
}

std::pair<at::Tensor, at::Tensor> sorted_eigh(const at::Tensor& G) {
  TORCH_CHECK(G.dim() == 2 && G.size(0) == G.size(1), "unisub.sorted_eigh: G must be a square matrix, got shape ",
              G.sizes());
  TORCH_CHECK(G.is_floating_point(), "unisub.sorted_eigh: G must be floating point, got ", G.scalar_type());
  // LAPACK takes NaN and infinity and returns numbers (an infinite entry gave eigenvalues [1, 1, 1])
  TORCH_CHECK_VALUE(detail::all_finite(G), "unisub.sorted_eigh: G holds NaN or infinity");
  auto [evals, evecs] = at::linalg_eigh(G);
  evals = evals.flip(0).clamp_min(0);
  evecs = evecs.flip(1);
  if (evecs.numel() == 0) return {evals, evecs};
  at::Tensor none;
  detail::apply_sign_rule(evecs, none);  // svd's sign rule, the one implementation of it
  return {evals, evecs};
}

}  // namespace unisub::analysis
