// Matched null spectra. For a mode Gram: what an i.i.d. Gaussian unfolding of the same shape and
// total variance gives (a p × N unfolding, N = the other size times the models' degrees of freedom,
// entry variance s² = total / (p N): the Gram is Wishart). For the model-axis Gram of LoRA deltas:
// independent isotropic deltas with the observed per-model norms (norm_matched_null below).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "unisub/analysis.h"
#include "cpu/blas_threads.h"
#include "ops/checks.h"

namespace unisub::analysis {
namespace {

constexpr int64_t kGrid = 20000;  // intervals of the CDF's quadrature grid
// Column blocks of a triangular factor's product (wishart_of_factor): narrow enough that the
// product skips most of the zeros, wide enough for the GEMMs to run near their rate.
constexpr int64_t kTriangularBlock = 96;

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
  TORCH_CHECK(N >= 0, "unisub.marchenko_pastur_null: N (the unfolding's columns) must be >= 0, got ", N);
  TORCH_CHECK(std::isfinite(total) && total >= 0, "unisub.marchenko_pastur_null: total (the energy) must be finite and >= 0, got ",
              total);
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
  TORCH_CHECK(N >= 0, "unisub.gaussian_null: N (the unfolding's columns) must be >= 0, got ", N);
  TORCH_CHECK(std::isfinite(total) && total >= 0, "unisub.gaussian_null: total (the energy) must be finite and >= 0, got ",
              total);
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
  unisub::detail::check_has_values(diag_in, "null_model_variances", "diag");
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
  unisub::detail::check_has_values(Q_in, "projected_null_variances", "Q");
  unisub::detail::check_has_values(diag_in, "projected_null_variances", "diag");
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

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

at::Tensor centring_projector(const at::Tensor& variances, bool center) {
  if (!center) return at::Tensor();  // undefined: S W S itself
  const int64_t M = variances.dim() == 1 ? variances.numel() : 0;
  return at::eye(M, at::TensorOptions().dtype(at::kDouble)) - 1.0 / static_cast<double>(std::max<int64_t>(M, 1));
}

// The checked inputs' null spectra [draws, M], one row per draw, filled by
// `draw_spectrum(scale, Q, out)`.
template <class DrawSpectrum>
at::Tensor null_draws(const at::Tensor& variances_in, int64_t dim, const at::Tensor& Q_in, int64_t draws,
                      DrawSpectrum&& draw_spectrum) {
  constexpr const char* op = "unisub.norm_matched_null";
  unisub::detail::check_has_values(variances_in, "norm_matched_null", "variances");
  unisub::detail::check_has_values(Q_in, "norm_matched_null", "Q");
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
  draw_spectrum(t.sqrt(), Q, out);
  return out;
}

}  // namespace

at::Generator null_draw_generator(int64_t seed, int64_t draw) {
  return at::detail::createCPUGenerator(splitmix64(splitmix64(static_cast<uint64_t>(seed)) ^ static_cast<uint64_t>(draw)));
}

at::Tensor norm_matched_null(const at::Tensor& variances, int64_t dim, bool center, int64_t draws, int64_t seed) {
  return null_draws(variances, dim, centring_projector(variances, center), draws,
                    [&](const at::Tensor& scale, const at::Tensor& Q, at::Tensor& out) {
                      // one draw per thread, each with its own generator (inside the region ATen
                      // and the BLAS run single-threaded)
                      at::parallel_for(0, out.size(0), 1, [&](int64_t b, int64_t e) {
                        const unisub::detail::SequentialBlas one_thread;
                        for (int64_t d = b; d < e; ++d) {
                          auto gen = null_draw_generator(seed, d);
                          out[d].copy_(null_spectrum(bartlett_factor(out.size(1), dim, gen), scale, Q, dim));
                        }
                      });
                    });
}

at::Tensor norm_matched_null(const at::Tensor& variances, int64_t dim, bool center, int64_t draws, at::Generator& gen) {
  return projected_norm_matched_null(variances, dim, centring_projector(variances, center), draws, gen);
}

at::Tensor projected_norm_matched_null(const at::Tensor& variances, int64_t dim, const at::Tensor& Q, int64_t draws,
                                       at::Generator& gen) {
  return null_draws(variances, dim, Q, draws, [&](const at::Tensor& scale, const at::Tensor& Qc, at::Tensor& out) {
    for (int64_t d = 0; d < out.size(0); ++d)
      out[d].copy_(null_spectrum(bartlett_factor(out.size(1), dim, gen), scale, Qc, dim));
  });
}

at::Tensor bartlett_factor(int64_t M, int64_t dim, at::Generator& gen) {
  // W = L Lᵀ / D is the Gram of M i.i.d. N(0, I_D / D) vectors (unit expected norm). Bartlett:
  // L lower triangular with N(0, 1) below the diagonal and L_ii = √χ²_{D−i}: O(M³), never the
  // M × D Gaussian stack. When D < M, W has rank D and the M × D stack itself is the smaller draw.
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  if (dim < M) return at::randn({M, dim}, gen, f64);
  // only the M(M − 1)/2 normals below the diagonal are drawn (row by row), not M² of which half
  // would be thrown away
  const auto normals = at::randn({M * (M - 1) / 2}, gen, f64);
  auto L = at::zeros({M, M}, f64);
  const double* z = normals.const_data_ptr<double>();
  double* l = L.data_ptr<double>();
  for (int64_t i = 1; i < M; ++i) std::copy(z + i * (i - 1) / 2, z + i * (i + 1) / 2, l + i * M);
  const auto shapes = (static_cast<double>(dim) - at::arange(M, f64)) / 2;
  L.diagonal().copy_((2 * at::_standard_gamma(shapes, gen)).sqrt());
  return L;
}

at::Tensor null_spectrum(const at::Tensor& L, const at::Tensor& scale, const at::Tensor& Q, int64_t dim) {
  auto Y = L * scale.unsqueeze(1);  // S L: S W S = (S L)(S L)ᵀ / D
  if (Q.defined()) Y = Q.mm(Y);     // H S L (centred), or a residual's projector
  return at::linalg_eigvalsh(Y.mm(Y.t()) / static_cast<double>(dim)).flip(0).clamp_min(0);
}

at::Tensor wishart_of_factor(const at::Tensor& L, int64_t dim) {
  const int64_t M = L.size(0);
  if (L.size(1) != M || M < 2 * kTriangularBlock) return L.mm(L.t()) / static_cast<double>(dim);
  // L lower triangular (a Bartlett factor): column block [c, c + b) of L is zero above row c, so it
  // adds its product only to W[c:, c:], about M³/2 multiply-adds in all instead of M³
  auto W = at::zeros({M, M}, L.options());
  for (int64_t c = 0; c < M; c += kTriangularBlock) {
    const int64_t b = std::min(kTriangularBlock, M - c);
    const auto Lc = L.narrow(0, c, M - c).narrow(1, c, b);
    auto Wc = W.narrow(0, c, M - c).narrow(1, c, M - c);
    Wc.addmm_(Lc, Lc.t());
  }
  return W.div_(static_cast<double>(dim));
}

at::Tensor null_spectrum_of_wishart(const at::Tensor& W, const at::Tensor& scale, const at::Tensor& Q, bool center) {
  if (Q.defined()) {
    const auto A = W * scale.unsqueeze(1) * scale.unsqueeze(0);  // S W S
    return at::linalg_eigvalsh(Q.mm(A).mm(Q)).flip(0).clamp_min(0);
  }
  // S W S, and H (S W S) H in O(M²) when centred (minus the row and column means, plus the grand
  // mean; A is symmetric, so the column means are the row means), in two passes over W instead of
  // five tensor operations with their temporaries.
  const auto Wd = W.to(at::kCPU, at::kDouble).contiguous();
  const auto sd = scale.to(at::kCPU, at::kDouble).contiguous();
  const int64_t M = Wd.size(0);
  auto A = at::empty({M, M}, Wd.options());
  const double* w = Wd.const_data_ptr<double>();
  const double* sc = sd.const_data_ptr<double>();
  double* a = A.data_ptr<double>();
  std::vector<double> mean(M, 0.0);
  for (int64_t i = 0; i < M; ++i) {
    double row = 0;
    for (int64_t j = 0; j < M; ++j) {
      a[i * M + j] = sc[i] * w[i * M + j] * sc[j];
      row += a[i * M + j];
    }
    mean[i] = row / static_cast<double>(M);
  }
  if (center) {
    double grand = 0;
    for (int64_t i = 0; i < M; ++i) grand += mean[i];
    grand /= static_cast<double>(M);
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < M; ++j) a[i * M + j] += grand - mean[i] - mean[j];
  }
  return at::linalg_eigvalsh(A).flip(0).clamp_min(0);
}

at::Tensor packed_lower(const at::Tensor& W_in) {
  TORCH_CHECK(W_in.dim() == 2 && W_in.size(0) == W_in.size(1), "packed_lower: W must be square, got shape ",
              W_in.sizes());
  const auto W = W_in.to(at::kCPU, at::kDouble).contiguous();
  const int64_t M = W.size(0);
  auto P = at::empty({M * (M + 1) / 2}, W.options());
  const double* w = W.const_data_ptr<double>();
  double* p = P.data_ptr<double>();
  for (int64_t i = 0; i < M; ++i) std::copy(w + i * M, w + i * M + i + 1, p + i * (i + 1) / 2);
  return P;
}

namespace {

// The largest eigenvalue of a symmetric positive semidefinite operator on R^M, by Lanczos with full
// reorthogonalisation (a second pass where the first cancels) from `start`: stops when the top Ritz pair's residual
// β_j·|s_j| is at most kLanczosTolerance·θ (then an eigenvalue lies within that of θ, and Ritz values
// never exceed the largest one), or at M steps, where the tridiagonal's spectrum is the operator's.
// 1e-9: the null's edges are Monte Carlo statistics of 20 draws; 1e-12 cost 8 % more of the report
// and changed no edge beyond its 14th digit.
constexpr double kLanczosTolerance = 1e-9;

// Four partial sums: a single running sum is one dependent add chain (the compiler may not reorder
// it), which left the products below at a quarter of their speed.
double dot(const double* x, const double* y, int64_t n) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += x[i] * y[i];
    s1 += x[i + 1] * y[i + 1];
    s2 += x[i + 2] * y[i + 2];
    s3 += x[i + 3] * y[i + 3];
  }
  for (; i < n; ++i) s0 += x[i] * y[i];
  return (s0 + s1) + (s2 + s3);
}

// y = W x for a symmetric W given by its lower triangle packed by rows (packed_lower): each stored
// W_ij (j < i) is read once, for both y_i += W_ij x_j and y_j += W_ij x_i, so the product reads half
// the bytes of a gemv with the full W (1 MiB instead of 2 MiB at M = 500, which then stays in a
// core's L2 between steps). Four rows at a time, in four-wide vectors (GCC's vector extension: one
// AVX2 register or two SSE2 ones): x_j and y_j are loaded once for four rows' entries, and the four
// row sums are independent chains. Measured at M = 500: 21 µs, against 31 µs one row at a time
// and 45 µs for MKL's gemv with the full W. Compiled for x86-64-v3 (AVX2, FMA) as well as the
// baseline, the right one chosen when the library loads.
using Double4 = double __attribute__((vector_size(32)));

inline Double4 load4(const double* p) {
  Double4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void store4(double* p, Double4 v) { std::memcpy(p, &v, sizeof v); }

inline double lanes_sum(Double4 v) { return (v[0] + v[1]) + (v[2] + v[3]); }

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__)
__attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
void packed_symmetric_product(const double* __restrict P, const double* __restrict x, double* __restrict y,
                              int64_t M) {
  std::fill(y, y + M, 0.0);
  auto row = [&](int64_t i) { return P + i * (i + 1) / 2; };
  int64_t i0 = 0;
  for (; i0 + 4 <= M; i0 += 4) {
    const double* __restrict w0 = row(i0);
    const double* __restrict w1 = row(i0 + 1);
    const double* __restrict w2 = row(i0 + 2);
    const double* __restrict w3 = row(i0 + 3);
    const Double4 x0 = {x[i0], x[i0], x[i0], x[i0]}, x1 = {x[i0 + 1], x[i0 + 1], x[i0 + 1], x[i0 + 1]},
                  x2 = {x[i0 + 2], x[i0 + 2], x[i0 + 2], x[i0 + 2]}, x3 = {x[i0 + 3], x[i0 + 3], x[i0 + 3], x[i0 + 3]};
    Double4 s0 = {0, 0, 0, 0}, s1 = s0, s2 = s0, s3 = s0;
    for (int64_t j = 0; j < i0; j += 4) {  // i0 is a multiple of 4
      const Double4 xv = load4(x + j), a = load4(w0 + j), b = load4(w1 + j), c = load4(w2 + j), d = load4(w3 + j);
      s0 += a * xv;
      s1 += b * xv;
      s2 += c * xv;
      s3 += d * xv;
      store4(y + j, load4(y + j) + ((a * x0 + b * x1) + (c * x2 + d * x3)));
    }
    double s[4] = {lanes_sum(s0), lanes_sum(s1), lanes_sum(s2), lanes_sum(s3)};
    // the 4 × 4 diagonal block's lower triangle
    for (int64_t r = 0; r < 4; ++r) {
      const int64_t i = i0 + r;
      const double* w = row(i);
      for (int64_t j = i0; j < i; ++j) {
        s[r] += w[j] * x[j];
        y[j] += w[j] * x[i];
      }
      y[i] += s[r] + w[i] * x[i];
    }
  }
  for (int64_t i = i0; i < M; ++i) {  // the last M mod 4 rows, one at a time
    const double* w = row(i);
    double sum = 0;
    for (int64_t j = 0; j < i; ++j) {
      sum += w[j] * x[j];
      y[j] += w[j] * x[i];
    }
    y[i] += sum + w[i] * x[i];
  }
}

// x −= V (Vᵀ x) for V's k orthonormal columns stored one after another (Vt, k × M): Vᵀx as four
// columns' dot products at a time, then x less their combination, four columns a pass. One row of V
// (k numbers) at a time, as the columns were stored before, read x once per row but ran at a few
// numbers a cycle: 2·k·M multiply-adds took 8–10 µs a projection at k = 16, M = 500, most of an
// operator application beside its 21 µs symmetric product.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__)
__attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
void remove_components(const double* __restrict Vt, int64_t k, double* __restrict x, int64_t M, double* __restrict c) {
  const int64_t M4 = M - M % 4;
  int64_t j = 0;
  for (; j + 4 <= k; j += 4) {
    const double *v0 = Vt + j * M, *v1 = v0 + M, *v2 = v1 + M, *v3 = v2 + M;
    Double4 s0 = {0, 0, 0, 0}, s1 = s0, s2 = s0, s3 = s0;
    for (int64_t i = 0; i < M4; i += 4) {
      const Double4 xv = load4(x + i);
      s0 += load4(v0 + i) * xv;
      s1 += load4(v1 + i) * xv;
      s2 += load4(v2 + i) * xv;
      s3 += load4(v3 + i) * xv;
    }
    c[j] = lanes_sum(s0), c[j + 1] = lanes_sum(s1), c[j + 2] = lanes_sum(s2), c[j + 3] = lanes_sum(s3);
    for (int64_t i = M4; i < M; ++i) {
      c[j] += v0[i] * x[i], c[j + 1] += v1[i] * x[i], c[j + 2] += v2[i] * x[i], c[j + 3] += v3[i] * x[i];
    }
  }
  for (; j < k; ++j) c[j] = dot(Vt + j * M, x, M);
  j = 0;
  for (; j + 4 <= k; j += 4) {
    const double *v0 = Vt + j * M, *v1 = v0 + M, *v2 = v1 + M, *v3 = v2 + M;
    const Double4 c0 = {c[j], c[j], c[j], c[j]}, c1 = {c[j + 1], c[j + 1], c[j + 1], c[j + 1]},
                  c2 = {c[j + 2], c[j + 2], c[j + 2], c[j + 2]}, c3 = {c[j + 3], c[j + 3], c[j + 3], c[j + 3]};
    for (int64_t i = 0; i < M4; i += 4)
      store4(x + i, load4(x + i) - ((c0 * load4(v0 + i) + c1 * load4(v1 + i)) + (c2 * load4(v2 + i) + c3 * load4(v3 + i))));
    for (int64_t i = M4; i < M; ++i) x[i] -= (c[j] * v0[i] + c[j + 1] * v1[i]) + (c[j + 2] * v2[i] + c[j + 3] * v3[i]);
  }
  for (; j < k; ++j)
    for (int64_t i = 0; i < M; ++i) x[i] -= c[j] * Vt[j * M + i];
}

// x ↦ Q S W S Q x on plain arrays, Q = (H if center, else I) − V Vᵀ. Lanczos runs on one draw per
// thread, some 20 steps a draw and 20 draws a test: ATen's per-call cost on vectors of ~500 was most
// of the time, so the products are loops of our own. The draw is W's packed lower triangle (one
// symmetric product) or its factor L with W = L Lᵀ / D (two gemv).
struct NullOperator {
  at::Tensor W, L;      // one of them: W packed (packed_lower), or L [M, cols]
  double D = 1;
  const double* scale;  // M
  const double* V;      // M × k, row-major (orthonormal columns), k = 0: none
  int64_t M, k;
  bool center;
  std::vector<double> u, c, Vt;  // scratch: S x (M), Vᵀ x (k); V's columns one after another (k × M)

  bool projects() const { return center || k > 0; }

  void project(double* x) {
    if (center) {
      double mean = 0;
      for (int64_t i = 0; i < M; ++i) mean += x[i];
      mean /= static_cast<double>(M);
      for (int64_t i = 0; i < M; ++i) x[i] -= mean;
    }
    if (k > 0) {
      if (Vt.empty()) {
        Vt.resize(static_cast<size_t>(k * M));
        for (int64_t i = 0; i < M; ++i)
          for (int64_t j = 0; j < k; ++j) Vt[j * M + i] = V[i * k + j];
      }
      c.resize(k);
      remove_components(Vt.data(), k, x, M, c.data());
    }
  }

  // out = op(x); x is left projected
  void apply(double* x, double* out) {
    if (projects()) project(x);
    u.resize(M);
    for (int64_t i = 0; i < M; ++i) u[i] = scale[i] * x[i];
    if (W.defined()) {
      packed_symmetric_product(W.const_data_ptr<double>(), u.data(), out, M);
    } else {
      const auto f64 = at::TensorOptions().dtype(at::kDouble);
      auto ot = at::from_blob(out, {M}, f64);
      at::mv_out(ot, L, L.t().mv(at::from_blob(u.data(), {M}, f64)));
      ot.div_(D);
    }
    for (int64_t i = 0; i < M; ++i) out[i] *= scale[i];
    if (projects()) project(out);
  }
};

// The top eigenvector s of the symmetric tridiagonal T (alpha, beta) whose top eigenvalue is θ: two
// steps of inverse iteration with σ just above θ, where σI − T is positive definite and its LDLᵀ
// needs no pivoting.
std::vector<double> top_tridiagonal_vector(const std::vector<double>& alpha, const std::vector<double>& beta,
                                           double theta) {
  const int64_t n = static_cast<int64_t>(alpha.size());
  double norm = 0;
  for (int64_t i = 0; i < n; ++i)
    norm = std::max(norm, std::abs(alpha[i]) + (i > 0 ? std::abs(beta[i - 1]) : 0) + (i + 1 < n ? std::abs(beta[i]) : 0));
  const double sigma = theta + 1e-10 * std::max(norm, 1e-300);
  std::vector<double> x(n, 1.0), d(n), l(n);
  // σI − T = L D Lᵀ with unit lower bidiagonal L
  d[0] = sigma - alpha[0];
  for (int64_t i = 1; i < n; ++i) {
    l[i] = -beta[i - 1] / d[i - 1];
    d[i] = sigma - alpha[i] + l[i] * beta[i - 1];
  }
  for (int pass = 0; pass < 2; ++pass) {
    for (int64_t i = 1; i < n; ++i) x[i] -= l[i] * x[i - 1];
    for (int64_t i = 0; i < n; ++i) x[i] /= d[i];
    for (int64_t i = n - 2; i >= 0; --i) x[i] -= l[i + 1] * x[i + 1];
    const double nx = std::sqrt(dot(x.data(), x.data(), n));
    for (auto& v : x) v /= nx;
  }
  return x;
}

// The largest eigenvalue of the symmetric tridiagonal T (alpha, beta), at least `floor` (the
// previous step's: T's leading block has it, and eigenvalues interlace): bisection on the Sturm
// count (the negative pivots of T − xI), O(n) a halving. All eigenvalues by QR steps, each step,
// took a fifth of a Lanczos step (hypot in every rotation).
double largest_tridiagonal_eigenvalue(const std::vector<double>& alpha, const std::vector<double>& beta, double floor) {
  const int64_t n = static_cast<int64_t>(alpha.size());
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (int64_t i = 0; i < n; ++i) {  // Gershgorin
    const double radius = (i > 0 ? std::abs(beta[i - 1]) : 0.0) + (i + 1 < n ? std::abs(beta[i]) : 0.0);
    lo = std::min(lo, alpha[i] - radius), hi = std::max(hi, alpha[i] + radius);
  }
  const double scale = std::max(std::abs(lo), std::abs(hi));
  if (!(scale > 0)) return 0.0;
  // eigenvalues of T below x, the pivots of (T − xI)/scale: of order one whatever T's size, so
  // neither β² overflows nor the smallest pivot sinks below the guard
  const double tiny = std::numeric_limits<double>::min() / std::numeric_limits<double>::epsilon();
  auto below = [&](double x) {
    int64_t count = 0;
    double d = 1;
    for (int64_t i = 0; i < n; ++i) {
      const double b = i > 0 ? beta[i - 1] / scale : 0.0;
      d = (alpha[i] - x) / scale - (i > 0 ? b * b / d : 0.0);
      if (std::abs(d) < tiny) d = -tiny;
      count += d < 0;
    }
    return count;
  };
  hi += 2 * std::numeric_limits<double>::epsilon() * scale;
  if (floor > lo && below(floor) < n) lo = floor;
  while (hi - lo > 2 * std::numeric_limits<double>::epsilon() * std::max(std::abs(lo), std::abs(hi))) {
    const double mid = lo + (hi - lo) / 2;
    if (mid <= lo || mid >= hi) break;
    (below(mid) < n ? lo : hi) = mid;
  }
  return lo + (hi - lo) / 2;
}

double lanczos_top(NullOperator& op, std::vector<double>& start) {
  const int64_t M = op.M;
  const double norm0 = std::sqrt(dot(start.data(), start.data(), M));
  if (!(norm0 > 0)) return 0.0;
  std::vector<double> basis;  // the Lanczos vectors, row j at j·M
  basis.reserve(static_cast<size_t>(M) * 32);
  std::vector<double> alpha, beta, w(M), coef;
  std::vector<double> q(start);
  for (auto& v : q) v /= norm0;
  double theta = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < M; ++j) {
    basis.insert(basis.end(), q.begin(), q.end());
    op.apply(q.data(), w.data());
    alpha.push_back(dot(q.data(), w.data(), M));
    // the three-term recurrence, then Gram–Schmidt against every Lanczos vector (full
    // reorthogonalisation), a second time only where the first cancelled most of w (Daniel, Gragg,
    // Kaufman & Stewart's criterion): one pass over the basis a step instead of two
    const double* qj = basis.data() + j * M;
    const double* qp = j > 0 ? basis.data() + (j - 1) * M : nullptr;
    for (int64_t t = 0; t < M; ++t) w[t] -= alpha[j] * qj[t] + (qp ? beta[j - 1] * qp[t] : 0.0);
    double norm = std::sqrt(dot(w.data(), w.data(), M));
    for (int pass = 0; pass < 2; ++pass) {
      coef.assign(j + 1, 0.0);
      for (int64_t i = 0; i <= j; ++i) coef[i] = dot(basis.data() + i * M, w.data(), M);
      for (int64_t i = 0; i <= j; ++i) {
        const double* v = basis.data() + i * M;
        for (int64_t t = 0; t < M; ++t) w[t] -= coef[i] * v[t];
      }
      const double after = std::sqrt(dot(w.data(), w.data(), M));
      const bool cancelled = after < 0.7071 * norm;
      norm = after;
      if (!cancelled) break;
    }
    const double b = norm;
    theta = largest_tridiagonal_eigenvalue(alpha, beta, theta);
    const auto s = top_tridiagonal_vector(alpha, beta, theta);
    const double residual = b * std::abs(s[j]);
    if (residual <= kLanczosTolerance * std::max(theta, 0.0) || !(b > 0) || j + 1 == M) {
      start.assign(M, 0.0);  // the top Ritz vector
      for (int64_t i = 0; i <= j; ++i) {
        const double* v = basis.data() + i * M;
        for (int64_t t = 0; t < M; ++t) start[t] += s[i] * v[t];
      }
      return std::max(theta, 0.0);
    }
    beta.push_back(b);
    for (int64_t t = 0; t < M; ++t) q[t] = w[t] / b;
  }
  return 0.0;  // not reached
}

}  // namespace

namespace {

// The full symmetric M × M matrix of a packed lower triangle.
at::Tensor unpacked(const at::Tensor& P, int64_t M) {
  auto W = at::empty({M, M}, P.options());
  const double* p = P.const_data_ptr<double>();
  double* w = W.data_ptr<double>();
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j <= i; ++j) w[i * M + j] = w[j * M + i] = p[i * (i + 1) / 2 + j];
  return W;
}

double top_eigenvalue(NullOperator& op, const at::Tensor& basis, at::Tensor& start) {
  const int64_t M = op.M;
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  // The start (a warm one: the previous operator's top Ritz vector) plus a hundredth of a fixed
  // generic vector, so that no eigenvector is missing from it (a start orthogonal to the top
  // eigenvector would converge to a lower eigenvalue; equal scales give t ∝ 1, which H annihilates).
  const auto s0 = start.to(at::kCPU, at::kDouble).contiguous();
  std::vector<double> x(s0.data_ptr<double>(), s0.data_ptr<double>() + M), generic(M);
  for (int64_t i = 0; i < M; ++i) generic[i] = std::cos(static_cast<double>(i) * 1.7 + 0.3);
  const double sn = std::sqrt(dot(x.data(), x.data(), M)), gn = std::sqrt(dot(generic.data(), generic.data(), M));
  for (int64_t i = 0; i < M; ++i) x[i] = x[i] / (sn > 0 ? sn : 1.0) + 0.01 * generic[i] / gn;
  if (op.projects()) op.project(x.data());
  if (!(std::sqrt(dot(x.data(), x.data(), M)) > 1e-8)) {
    // nothing of it on Q's range: the exact spectrum instead (a tiny or degenerate operator)
    start = at::zeros({M}, f64);
    at::Tensor Q;
    if (op.k > 0) Q = (op.center ? at::eye(M, f64) - 1.0 / static_cast<double>(M) : at::eye(M, f64)) - basis.mm(basis.t());
    const auto W = op.W.defined() ? unpacked(op.W, M) : op.L.mm(op.L.t()) / op.D;
    return null_spectrum_of_wishart(W, at::from_blob(const_cast<double*>(op.scale), {M}, f64), Q, op.center)[0]
        .item<double>();
  }
  const double top = lanczos_top(op, x);
  start = at::tensor(x, f64);
  return top;
}

}  // namespace

double null_top_eigenvalue(const at::Tensor& L_in, const at::Tensor& scale_in, const at::Tensor& basis_in, bool center,
                           int64_t dim, at::Tensor& start) {
  const auto L = L_in.to(at::kCPU, at::kDouble).contiguous();
  const auto scale = scale_in.to(at::kCPU, at::kDouble).contiguous();
  const bool has_basis = basis_in.defined() && basis_in.size(1) > 0;
  const auto V = has_basis ? basis_in.to(at::kCPU, at::kDouble).contiguous() : at::Tensor();
  NullOperator op{at::Tensor(), L, static_cast<double>(dim), scale.data_ptr<double>(),
                  has_basis ? V.data_ptr<double>() : nullptr, L.size(0), has_basis ? V.size(1) : 0, center, {}, {}, {}};
  return top_eigenvalue(op, V, start);
}

double null_top_eigenvalue_of_wishart(const at::Tensor& W_in, const at::Tensor& scale_in, const at::Tensor& basis_in,
                                      bool center, at::Tensor& start) {
  const int64_t M = scale_in.numel();
  TORCH_CHECK((W_in.dim() == 2 && W_in.size(0) == M && W_in.size(1) == M) ||
                  (W_in.dim() == 1 && W_in.numel() == M * (M + 1) / 2),
              "null_top_eigenvalue_of_wishart: W must be ", M, " x ", M, " or its packed lower triangle (",
              M * (M + 1) / 2, " numbers), got shape ", W_in.sizes());
  const auto W = W_in.dim() == 2 ? packed_lower(W_in) : W_in.to(at::kCPU, at::kDouble).contiguous();
  const auto scale = scale_in.to(at::kCPU, at::kDouble).contiguous();
  const bool has_basis = basis_in.defined() && basis_in.size(1) > 0;
  const auto V = has_basis ? basis_in.to(at::kCPU, at::kDouble).contiguous() : at::Tensor();
  NullOperator op{W, at::Tensor(), 1.0, scale.data_ptr<double>(), has_basis ? V.data_ptr<double>() : nullptr,
                  M, has_basis ? V.size(1) : 0, center, {}, {}, {}};
  return top_eigenvalue(op, V, start);
}

}  // namespace unisub::analysis
