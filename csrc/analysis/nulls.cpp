// Matched null spectra. For a mode Gram: what an i.i.d. Gaussian unfolding of the same shape and
// total variance gives (a p × N unfolding, N = the other size times the models' degrees of freedom,
// entry variance s² = total / (p N): the Gram is Wishart). For the model-axis Gram of LoRA deltas:
// independent isotropic deltas with the observed per-model norms (norm_matched_null below).
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
  // Z Zᵀ's nonzero eigenvalues are those of B Bᵀ, B lower bidiagonal a × a with B_ii = χ_{b−i} and
  // B_{i+1,i} = χ_{a−1−i}: Householder reflections from the right and the left, taken in turn,
  // bidiagonalise Z and leave the block still to be reduced i.i.d. Gaussian (Dumitriu & Edelman,
  // "Matrix models for beta ensembles", 2002). B Bᵀ is tridiagonal, so the draw costs O(a²), not
  // the O(a³) of a dense Bartlett factor's eigvalsh (1.9 s at a = 4096 on two cores).
  auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(seed));
  const auto chi = [&](const at::Tensor& dof) {
    const auto g = (2 * at::_standard_gamma(dof / 2, gen)).sqrt();
    const double* v = g.data_ptr<double>();
    return std::vector<double>(v, v + g.numel());
  };
  const auto d = chi(static_cast<double>(b) - at::arange(a, f64));
  const auto e = a > 1 ? chi(static_cast<double>(a - 1) - at::arange(a - 1, f64)) : std::vector<double>{};
  std::vector<double> diag(a), off(a > 0 ? a - 1 : 0);
  for (int64_t i = 0; i < a; ++i) diag[i] = d[i] * d[i] + (i > 0 ? e[i - 1] * e[i - 1] : 0.0);
  for (int64_t i = 0; i + 1 < a; ++i) off[i] = d[i] * e[i];
  const auto evals = symmetric_tridiagonal_eigenvalues(std::move(diag), std::move(off));
  const double s2 = total / (static_cast<double>(p) * static_cast<double>(N));
  double* o = out.data_ptr<double>();
  for (int64_t i = 0; i < a; ++i) o[i] = std::max(evals[i], 0.0) * s2;
  return out;
}

at::Tensor null_model_variances(const at::Tensor& diag_in, bool center) {
  TORCH_CHECK(diag_in.dim() == 1, "unisub.null_model_variances: diag must be 1-D (one entry per model), got shape ",
              diag_in.sizes());
  TORCH_CHECK(diag_in.is_floating_point(), "unisub.null_model_variances: diag must be floating point, got ",
              diag_in.scalar_type());
  const auto c = diag_in.detach().to(at::kCPU, at::kDouble).clamp_min(0).contiguous();
  TORCH_CHECK(at::isfinite(c).all().item<bool>(), "unisub.null_model_variances: diag must be finite");
  const int64_t M = c.numel();
  if (!center || M == 0) return c.clone();
  const double Md = static_cast<double>(M), sum_c = c.sum().item<double>();
  if (M == 1 || !(sum_c > 0)) return at::zeros_like(c);
  // E[(H T H)_ii] = (1 − 2/M)·t_i + Σt/M² and its trace (1 − 1/M)·Σt: solve for t. With M = 2 both
  // diagonal entries are (t_1 + t_2)/4 whatever t is, so t is not identifiable: equal variances.
  const double sum_t = sum_c * Md / (Md - 1);
  if (M == 2) return at::full_like(c, sum_t / Md);
  auto t = ((c - sum_t / (Md * Md)) / (1 - 2 / Md)).clamp_min(0);
  // a model lying (almost) at the others' mean has c_i below Σt/M²: its variance is clamped at 0,
  // and the rest rescaled so that the null keeps the observed total
  const double kept = t.sum().item<double>();
  return kept > 0 ? t * (sum_t / kept) : at::full_like(c, sum_t / Md);
}

at::Tensor projected_null_variances(const at::Tensor& Q_in, const at::Tensor& diag_in) {
  constexpr const char* op = "unisub.projected_null_variances";
  const auto Q = Q_in.detach().to(at::kCPU, at::kDouble).contiguous();
  const auto c = diag_in.detach().to(at::kCPU, at::kDouble).clamp_min(0).contiguous();
  TORCH_CHECK(Q.dim() == 2 && Q.size(0) == Q.size(1) && Q.size(0) == c.numel(), op,
              ": Q must be M x M for a diag of M entries, got Q ", Q.sizes(), " and diag ", c.sizes());
  const double sum_c = c.sum().item<double>();
  if (c.numel() == 0 || !(sum_c > 0)) return at::zeros_like(c);
  // E[(Q S W S Q)_ii] = Σ_j Q_ij² t_j: least squares. Q∘Q is positive semidefinite, and definite
  // for the residual projectors of a sequential test (I − 2·diag(P) + P∘P for Q = I − P with P's
  // diagonal small): then a Cholesky solve, the same solution as the pseudo-inverse at 1/50 of its
  // time (M = 500: 11 ms against 0.66 s); the pseudo-inverse where Q∘Q is singular.
  const auto QQ = Q * Q;
  const auto [chol, info] = at::linalg_cholesky_ex(QQ);
  auto t = (info.item<int64_t>() == 0 ? at::cholesky_solve(c.unsqueeze(1), chol).squeeze(1)
                                      : at::linalg_pinv(QQ, /*rcond=*/1e-12, /*hermitian=*/true).mv(c))
               .clamp_min(0);
  // keep the expected trace Σ_j t_j Q_jj (Q a projector) equal to the observed one
  const double kept = (t * Q.diagonal()).sum().item<double>();
  return kept > 0 ? t * (sum_c / kept) : at::full_like(c, sum_c / Q.diagonal().sum().item<double>());
}

at::Tensor norm_matched_null(const at::Tensor& variances, int64_t dim, bool center, int64_t draws, int64_t seed) {
  auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(seed));
  return norm_matched_null(variances, dim, center, draws, gen);
}

at::Tensor norm_matched_null(const at::Tensor& variances, int64_t dim, bool center, int64_t draws, at::Generator& gen) {
  at::Tensor Q;  // undefined: S W S itself
  if (center) {
    const int64_t M = variances.dim() == 1 ? variances.numel() : 0;
    const auto f64 = at::TensorOptions().dtype(at::kDouble);
    Q = at::eye(M, f64) - 1.0 / static_cast<double>(std::max<int64_t>(M, 1));
  }
  return projected_norm_matched_null(variances, dim, Q, draws, gen);
}

at::Tensor projected_norm_matched_null(const at::Tensor& variances_in, int64_t dim, const at::Tensor& Q_in,
                                       int64_t draws, at::Generator& gen) {
  constexpr const char* op = "unisub.norm_matched_null";
  TORCH_CHECK(variances_in.dim() == 1, op, ": variances must be 1-D (one per model), got shape ", variances_in.sizes());
  TORCH_CHECK(variances_in.is_floating_point(), op, ": variances must be floating point, got ",
              variances_in.scalar_type());
  TORCH_CHECK(dim >= 1, op, ": dim (the number of entries of one model's ΔW, m·n) must be >= 1, got ", dim);
  TORCH_CHECK(draws >= 1, op, ": draws must be >= 1, got ", draws);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const auto t = variances_in.detach().to(at::kCPU, at::kDouble).contiguous();
  TORCH_CHECK(at::isfinite(t).all().item<bool>() && (t >= 0).all().item<bool>(), op,
              ": variances must be finite and >= 0");
  const int64_t M = t.numel();
  const auto Q = Q_in.defined() ? Q_in.detach().to(at::kCPU, at::kDouble) : Q_in;
  TORCH_CHECK(!Q.defined() || (Q.dim() == 2 && Q.size(0) == M && Q.size(1) == M), op, ": Q must be ", M, " x ", M,
              ", got ", Q.sizes());
  auto out = at::zeros({draws, M}, f64);
  if (M == 0) return out;
  const auto scale = t.sqrt();
  for (int64_t k = 0; k < draws; ++k) out[k].copy_(null_spectrum(bartlett_factor(M, dim, gen), scale, Q, dim));
  return out;
}

at::Tensor bartlett_factor(int64_t M, int64_t dim, at::Generator& gen) {
  // W = L Lᵀ / D is the Gram of M i.i.d. N(0, I_D / D) vectors (unit expected norm). Bartlett:
  // L lower triangular with N(0, 1) below the diagonal and L_ii = √χ²_{D−i}: O(M³), never the
  // M × D Gaussian stack. When D < M, W has rank D and the M × D stack itself is the smaller draw.
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  if (dim < M) return at::randn({M, dim}, gen, f64);
  auto L = at::randn({M, M}, gen, f64).tril(-1);
  const auto shapes = (static_cast<double>(dim) - at::arange(M, f64)) / 2;
  L.diagonal().copy_((2 * at::_standard_gamma(shapes, gen)).sqrt());
  return L;
}

at::Tensor null_spectrum(const at::Tensor& L, const at::Tensor& scale, const at::Tensor& Q, int64_t dim) {
  auto Y = L * scale.unsqueeze(1);  // S L: S W S = (S L)(S L)ᵀ / D
  if (Q.defined()) Y = Q.mm(Y);     // H S L (centred), or a residual's projector
  return at::linalg_eigvalsh(Y.mm(Y.t()) / static_cast<double>(dim)).flip(0).clamp_min(0);
}

namespace {

// The largest eigenvalue of a symmetric positive semidefinite operator on R^M, by Lanczos with full
// reorthogonalisation (twice per step) from `start`: stops when the top Ritz pair's residual
// β_j·|s_j| is at most kLanczosTolerance·θ (then an eigenvalue lies within that of θ, and Ritz values
// never exceed the largest one), or at M steps, where the tridiagonal's spectrum is the operator's.
// `start` becomes the top Ritz vector (a warm start for a nearby operator). 1e-9: the null's edges
// are Monte Carlo statistics of 20 draws; 1e-12 cost 8 % more of the report and changed no edge
// beyond its 14th digit.
constexpr double kLanczosTolerance = 1e-9;

template <typename Apply>
double lanczos_top(const Apply& apply, at::Tensor& start) {
  const int64_t M = start.numel();
  const double norm0 = start.norm().item<double>();
  if (!(norm0 > 0)) return 0.0;
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  auto V = at::empty({M, std::min<int64_t>(M, 64)}, f64);  // the Lanczos basis, grown when full
  std::vector<double> alpha, beta;
  at::Tensor q = start / norm0;
  for (int64_t j = 0; j < M; ++j) {
    if (j == V.size(1)) V = at::cat({V, at::empty({M, std::min(M - j, j)}, f64)}, 1);
    V.select(1, j).copy_(q);
    at::Tensor w = apply(q);
    alpha.push_back(at::dot(q, w).item<double>());
    const auto basis = V.narrow(1, 0, j + 1);
    for (int pass = 0; pass < 2; ++pass) w -= basis.mv(basis.t().mv(w));
    const double b = w.norm().item<double>();
    auto T = at::zeros({j + 1, j + 1}, f64);
    T.diagonal().copy_(at::tensor(alpha, f64));
    if (j > 0) {
      T.diagonal(1).copy_(at::tensor(beta, f64));
      T.diagonal(-1).copy_(at::tensor(beta, f64));
    }
    const auto [evals, evecs] = at::linalg_eigh(T);
    const double theta = evals[j].item<double>();
    const double residual = b * std::abs(evecs[j][j].item<double>());
    if (residual <= kLanczosTolerance * std::max(theta, 0.0) || !(b > 0) || j + 1 == M) {
      start = basis.mv(evecs.select(1, j));
      return std::max(theta, 0.0);
    }
    beta.push_back(b);
    q = w / b;
  }
  return 0.0;  // not reached
}

}  // namespace

double null_top_eigenvalue(const at::Tensor& L, const at::Tensor& scale, const at::Tensor& basis, bool center,
                           int64_t dim, at::Tensor& start) {
  // v ↦ Q S L Lᵀ S Q v / D with Q = (H or I) − V Vᵀ applied as such (O(M·k), not an M × M product),
  // never forming the M × M matrix: two matrix-vector products with L a step
  const double D = static_cast<double>(dim);
  const bool project = center || (basis.defined() && basis.size(1) > 0);
  auto Q = [&](at::Tensor x) {
    if (center) x = x - x.mean();
    if (basis.defined() && basis.size(1) > 0) x = x - basis.mv(basis.t().mv(x));
    return x;
  };
  auto apply = [&](const at::Tensor& v) {
    const auto x = scale * L.mv(L.t().mv(scale * (project ? Q(v) : v))) / D;
    return project ? Q(x) : x;
  };
  // The start (a warm one: the previous operator's top Ritz vector) plus a hundredth of a fixed
  // generic vector, so that no eigenvector is missing from it (a start orthogonal to the top
  // eigenvector would converge to a lower eigenvalue; equal scales give t ∝ 1, which H annihilates).
  const int64_t M = L.size(0);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const auto generic = at::cos(at::arange(M, f64) * 1.7 + 0.3);
  const double sn = start.norm().item<double>();
  start = start / (sn > 0 ? sn : 1.0) + 0.01 * generic / generic.norm();
  if (project) start = Q(start);
  if (!(start.norm().item<double>() > 1e-8)) {
    // nothing of it on Q's range: the exact spectrum instead (a tiny or degenerate operator)
    start = at::zeros({M}, f64);
    at::Tensor dense;
    if (project) {
      dense = center ? at::eye(M, f64) - 1.0 / static_cast<double>(M) : at::eye(M, f64);
      if (basis.defined() && basis.size(1) > 0) dense = dense - basis.mm(basis.t());
    }
    return null_spectrum(L, scale, dense, dim)[0].item<double>();
  }
  return lanczos_top(apply, start);
}

}  // namespace unisub::analysis
