// Matched null spectra for a mode Gram: what an i.i.d. Gaussian unfolding of the same shape and
// total variance gives. For a p × N unfolding (N = the other size times the models' degrees of
// freedom) with entry variance s² = total / (p N) the Gram is Wishart.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "unisub/analysis.h"

namespace unisub::analysis {
namespace {

constexpr int64_t kGrid = 20000;  // intervals of the CDF's quadrature grid

// The k quantiles (j − ½)/k, descending, of the unit-variance MP law with ratio y ≤ 1. The grid
// x = lo + (hi − lo)(1 − cos πt)/2 clusters at the edges, where the density has square-root (for
// y = 1 at 0, inverse square-root) behaviour; f·dx/dt stays finite there. Trapezoid rule in t.
std::vector<double> mp_quantiles(double y, int64_t k) {
  const double lo = std::pow(1 - std::sqrt(y), 2), hi = std::pow(1 + std::sqrt(y), 2);
  std::vector<double> x(kGrid + 1), cdf(kGrid + 1, 0.0);
  double prev_g = 0.0;
  for (int64_t j = 0; j <= kGrid; ++j) {
    const double t = static_cast<double>(j) / kGrid;
    x[j] = lo + (hi - lo) * (1 - std::cos(M_PI * t)) / 2;
    const double dx_dt = (hi - lo) * M_PI * std::sin(M_PI * t) / 2;
    const double f = std::sqrt(std::max(0.0, (hi - x[j]) * (x[j] - lo))) / (2 * M_PI * y * x[j]);
    double g = f * dx_dt;
    if (!std::isfinite(g)) g = 0.0;  // 0/0 at x = 0 (y = 1)
    if (j > 0) cdf[j] = cdf[j - 1] + (g + prev_g) / 2 / kGrid;
    prev_g = g;
  }
  const double norm = cdf[kGrid];
  for (auto& c : cdf) c /= norm;
  std::vector<double> out(k);
  for (int64_t i = 0; i < k; ++i) {
    const double q = (static_cast<double>(k - i) - 0.5) / static_cast<double>(k);
    // linear interpolation of x over the (non-decreasing) cdf at q
    const auto it = std::upper_bound(cdf.begin(), cdf.end(), q);
    if (it == cdf.begin()) {
      out[i] = x.front();
    } else if (it == cdf.end()) {
      out[i] = x.back();
    } else {
      const int64_t j = it - cdf.begin();
      const double w = (q - cdf[j - 1]) / (cdf[j] - cdf[j - 1]);
      out[i] = x[j - 1] + w * (x[j] - x[j - 1]);
    }
  }
  return out;
}

}  // namespace

at::Tensor marchenko_pastur_null(int64_t p, int64_t N, double total) {
  TORCH_CHECK(p >= 0, "unisub.marchenko_pastur_null: p must be >= 0, got ", p);
  auto out = at::zeros({p}, at::TensorOptions().dtype(at::kDouble));
  if (N <= 0 || !(total > 0) || p == 0) return out;
  const int64_t a = std::min(p, N), b = std::max(p, N);
  const double s2 = total / (static_cast<double>(p) * static_cast<double>(N));
  const auto q = mp_quantiles(static_cast<double>(a) / static_cast<double>(b), a);
  double* o = out.data_ptr<double>();
  for (int64_t i = 0; i < a; ++i) o[i] = s2 * static_cast<double>(b) * q[i];
  return out;
}

double mp_upper_edge(int64_t p, int64_t N, double total) {
  if (N <= 0 || !(total > 0) || p <= 0) return 0.0;
  const double pd = static_cast<double>(p), Nd = static_cast<double>(N);
  return total / (pd * Nd) * std::pow(std::sqrt(pd) + std::sqrt(Nd), 2);
}

at::Tensor gaussian_null(int64_t p, int64_t N, double total, int64_t seed) {
  TORCH_CHECK(p >= 0, "unisub.gaussian_null: p must be >= 0, got ", p);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  auto out = at::zeros({p}, f64);
  if (N <= 0 || !(total > 0) || p == 0) return out;
  const int64_t a = std::min(p, N), b = std::max(p, N);
  // Bartlett: Z Zᵀ's nonzero eigenvalues are those of A Aᵀ, A lower triangular with N(0, 1) below
  // the diagonal and A_ii = √χ²_{b−i}.
  auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(seed));
  auto A = at::randn({a, a}, gen, f64).tril(-1);
  const auto shapes = (static_cast<double>(b) - at::arange(a, f64)) / 2;
  A.diagonal().copy_((2 * at::_standard_gamma(shapes, gen)).sqrt());
  const auto evals = at::linalg_eigvalsh(A.mm(A.t())).flip(0).clamp_min(0);
  out.narrow(0, 0, a).copy_(evals * (total / (static_cast<double>(p) * static_cast<double>(N))));
  return out;
}

}  // namespace unisub::analysis
