// The LoRA-delta null's sequential tests take the top eigenvalue of each draw by Lanczos instead of a
// full eigvalsh: it must be that eigenvalue, to its stated relative residual, for projected and
// unprojected draws, Wisharts of full and of deficient rank (dim < M), clustered and spread scales.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "unisub/analysis.h"

namespace {

using unisub::analysis::bartlett_factor;
using unisub::analysis::null_spectrum;
using unisub::analysis::null_spectrum_of_wishart;
using unisub::analysis::null_top_eigenvalue;
using unisub::analysis::null_top_eigenvalue_of_wishart;
using unisub::analysis::packed_lower;
using unisub::analysis::wishart_of_factor;
using unisub::analysis::symmetric_tridiagonal_eigenvalues;

// k orthonormal vectors orthogonal to 1 (what a sequential test projects out, besides the mean).
at::Tensor residual_basis(int64_t M, int64_t k, at::Generator& gen) {
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const auto H = at::eye(M, f64) - 1.0 / static_cast<double>(M);
  return std::get<0>(at::linalg_qr(H.mm(at::randn({M, k}, gen, f64))));
}

}  // namespace

BOOST_AUTO_TEST_SUITE(delta_null)

BOOST_AUTO_TEST_CASE(lanczos_top_eigenvalue_matches_the_full_spectrum) {
  auto gen = at::detail::createCPUGenerator(7);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  // 203: the blocked triangular product and the packed product's rows left over from its blocks of 4
  for (int64_t M : {int64_t{1}, int64_t{2}, int64_t{9}, int64_t{120}, int64_t{203}}) {
    for (int64_t dim : {M, 5 * M + 3, int64_t{4}}) {
      for (int spread = 0; spread < 2; ++spread) {
        // equal scales cluster the top of the spectrum (slow Lanczos convergence); log-normal ones spread it
        const auto t = spread ? (at::randn({M}, gen, f64) * 1.5).exp() : at::ones({M}, f64);
        for (int64_t k : {int64_t{-1}, int64_t{0}, std::min<int64_t>(3, M - 2)}) {
          if (k > 0 && M < 5) continue;
          // k < 0: no projection; else H minus k directions
          const auto V = k > 0 ? residual_basis(M, k, gen) : at::Tensor();
          at::Tensor Q;
          if (k >= 0) Q = at::eye(M, f64) - 1.0 / static_cast<double>(M) - (k > 0 ? V.mm(V.t()) : at::zeros({M, M}, f64));
          const auto L = bartlett_factor(M, dim, gen);
          const double exact = null_spectrum(L, t.sqrt(), Q, dim)[0].item<double>();
          auto start = t.clone();
          const double top = null_top_eigenvalue(L, t.sqrt(), V, k >= 0, dim, start);
          BOOST_TEST_INFO("M " << M << " dim " << dim << " spread " << spread << " k " << k);
          // Lanczos stops at a residual of 1e-9·θ, which bounds the error (Weyl); eigvalsh itself is
          // backward stable to ~M·ε
          BOOST_CHECK_SMALL(top - exact, 1e-9 * exact + 1e-300);
          // the same draw given as W = L Lᵀ / dim (what the report keeps): the same spectrum and top
          const auto W = wishart_of_factor(L, dim);
          const auto spectrum = null_spectrum_of_wishart(W, t.sqrt(), k > 0 ? Q : at::Tensor(), k == 0);
          BOOST_CHECK_SMALL(spectrum[0].item<double>() - exact, 1e-12 * exact + 1e-300);
          BOOST_CHECK_SMALL((spectrum - null_spectrum(L, t.sqrt(), Q, dim)).abs().max().item<double>(),
                            1e-12 * exact + 1e-300);
          auto start_w = t.clone();
          BOOST_CHECK_SMALL(null_top_eigenvalue_of_wishart(W, t.sqrt(), V, k >= 0, start_w) - exact,
                            1e-9 * exact + 1e-300);
          // the start vector becomes the top Ritz vector: a unit vector (zero for a zero operator)
          if (exact > 0) BOOST_CHECK_CLOSE(start.norm().item<double>(), 1.0, 1e-9);
        }
      }
    }
  }
}

// The band's draws are formed with shortcuts: the Bartlett factor from M(M − 1)/2 normals, its
// Wishart by a blocked product that skips the zero triangle, S W S and its centring in two passes,
// and the Lanczos products from the packed lower triangle. Each must be the plain formula's value.
BOOST_AUTO_TEST_CASE(draw_shortcuts_equal_the_plain_formulas) {
  auto gen = at::detail::createCPUGenerator(11);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  for (int64_t M : {int64_t{1}, int64_t{7}, int64_t{191}, int64_t{192}, int64_t{250}}) {
    const int64_t dim = 3 * M + 5;
    const auto L = bartlett_factor(M, dim, gen);
    BOOST_TEST_INFO("M " << M);
    BOOST_CHECK(L.triu(1).abs().max().item<double>() == 0.0);  // lower triangular
    BOOST_CHECK(L.diagonal().min().item<double>() > 0.0);
    if (M >= 191) {  // the normals below the diagonal: mean 0, variance 1 (loose: ~18000 of them)
      const auto z = L.masked_select(at::ones({M, M}, at::kBool).tril(-1));
      BOOST_CHECK_SMALL(z.mean().item<double>(), 0.05);
      BOOST_CHECK_SMALL(z.var().item<double>() - 1.0, 0.05);
    }
    const auto W = wishart_of_factor(L, dim), plain = L.mm(L.t()) / static_cast<double>(dim);
    BOOST_CHECK_SMALL((W - plain).abs().max().item<double>(), 1e-14 * plain.abs().max().item<double>());
    const auto t = (at::randn({M}, gen, f64) * 1.5).exp(), s = t.sqrt();
    for (bool center : {false, true}) {
      auto A = plain * s.unsqueeze(1) * s.unsqueeze(0);
      if (center) {
        const auto H = at::eye(M, f64) - 1.0 / static_cast<double>(M);
        A = H.mm(A).mm(H);
      }
      const auto ref = at::linalg_eigvalsh(A).flip(0).clamp_min(0);
      const auto got = null_spectrum_of_wishart(W, s, at::Tensor(), center);
      BOOST_CHECK_SMALL((got - ref).abs().max().item<double>(), 1e-12 * ref[0].item<double>() + 1e-300);
      // the packed triangle is the same operator: the same top eigenvalue as the full W
      auto a = t.clone(), b = t.clone();
      const double full = null_top_eigenvalue_of_wishart(W, s, at::Tensor(), center, a);
      const double packed = null_top_eigenvalue_of_wishart(packed_lower(W), s, at::Tensor(), center, b);
      BOOST_CHECK_SMALL(packed - ref[0].item<double>(), 1e-9 * ref[0].item<double>() + 1e-300);
      BOOST_CHECK_SMALL(packed - full, 1e-12 * full + 1e-300);
    }
    const auto P = packed_lower(W);
    BOOST_CHECK_EQUAL(P.numel(), M * (M + 1) / 2);
    BOOST_CHECK(P.narrow(0, P.numel() - 1, 1).item<double>() == W[M - 1][M - 1].item<double>());
  }
  BOOST_CHECK_THROW(packed_lower(at::zeros({3, 4}, f64)), c10::Error);
  auto start = at::ones({3}, f64);
  BOOST_CHECK_THROW(null_top_eigenvalue_of_wishart(at::zeros({5}, f64), at::ones({3}, f64), at::Tensor(), false, start),
                    c10::Error);
}

BOOST_AUTO_TEST_CASE(a_zero_null_has_a_zero_top_eigenvalue) {
  auto gen = at::detail::createCPUGenerator(3);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const auto L = bartlett_factor(6, 50, gen);
  auto start = at::ones({6}, f64);
  BOOST_CHECK_EQUAL(null_top_eigenvalue(L, at::zeros({6}, f64), at::Tensor(), false, 50, start), 0.0);
}

BOOST_AUTO_TEST_SUITE_END()

// The Gaussian null's sample is the eigenvalues of a tridiagonal B Bᵀ, found by implicit QR steps:
// they must be a dense eigvalsh's of the same matrix, for spread, graded, clustered (Wilkinson's
// W21+, pairs agreeing to ~1e-14) and split (zero off-diagonal) spectra, and sizes 1 to 400.
BOOST_AUTO_TEST_SUITE(tridiagonal_eigenvalues)

namespace {

std::vector<double> dense_eigenvalues(const std::vector<double>& a, const std::vector<double>& b) {
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const int64_t n = static_cast<int64_t>(a.size());
  auto T = at::diag(at::tensor(a, f64));
  if (n > 1) {
    const auto off = at::tensor(b, f64);
    T = T + at::diag(off, 1) + at::diag(off, -1);
  }
  const auto ev = at::linalg_eigvalsh(T).flip(0).contiguous();
  return {ev.data_ptr<double>(), ev.data_ptr<double>() + n};
}

void check_against_dense(const std::vector<double>& a, const std::vector<double>& b, const std::string& what) {
  const auto got = symmetric_tridiagonal_eigenvalues(a, b), want = dense_eigenvalues(a, b);
  BOOST_REQUIRE_EQUAL(got.size(), want.size());
  double norm = 0;
  for (double v : want) norm = std::max(norm, std::abs(v));
  // both are backward stable: each eigenvalue within c·ε·‖T‖₂; c = 64 covers both solvers' constants
  const double tol = 64 * std::numeric_limits<double>::epsilon() * norm + 1e-300;
  for (size_t i = 0; i < got.size(); ++i) {
    BOOST_TEST_INFO(what << " n " << a.size() << " eigenvalue " << i);
    BOOST_CHECK_SMALL(got[i] - want[i], tol);
    if (i > 0) BOOST_CHECK(got[i] <= got[i - 1]);
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(matches_a_dense_eigvalsh) {
  auto gen = at::detail::createCPUGenerator(11);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  auto draw = [&](int64_t n) {
    const auto t = at::randn({n}, gen, f64).contiguous();
    return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + n);
  };
  for (int64_t n : {int64_t{1}, int64_t{2}, int64_t{3}, int64_t{17}, int64_t{400}}) {
    check_against_dense(draw(n), draw(n - 1), "gaussian");
    // graded: entries spanning 12 decades
    auto a = draw(n), b = draw(n - 1);
    for (int64_t i = 0; i < n; ++i) a[i] *= std::pow(10.0, -12.0 * static_cast<double>(i) / n);
    for (int64_t i = 0; i + 1 < n; ++i) b[i] *= std::pow(10.0, -12.0 * static_cast<double>(i) / n);
    check_against_dense(a, b, "graded");
    // split: every third off-diagonal entry zero
    b = draw(n - 1);
    for (int64_t i = 0; i + 1 < n; i += 3) b[i] = 0;
    check_against_dense(draw(n), b, "split");
    // a Wishart sample's own form, the way gaussian_null builds it (χ entries ~ √dof)
    a = draw(n);
    b = draw(n - 1);
    std::vector<double> d(n), e(n > 1 ? n - 1 : 0);
    for (int64_t i = 0; i < n; ++i) d[i] = std::sqrt(3.0 * n - i) + a[i];
    for (int64_t i = 0; i + 1 < n; ++i) e[i] = std::sqrt(static_cast<double>(n - 1 - i)) + b[i];
    std::vector<double> diag(n), off(n > 1 ? n - 1 : 0);
    for (int64_t i = 0; i < n; ++i) diag[i] = d[i] * d[i] + (i > 0 ? e[i - 1] * e[i - 1] : 0.0);
    for (int64_t i = 0; i + 1 < n; ++i) off[i] = d[i] * e[i];
    check_against_dense(diag, off, "wishart");
  }
  // Wilkinson's W21+: pairs of eigenvalues closer than 1e-13
  std::vector<double> a(21), b(20, 1.0);
  for (int64_t i = 0; i < 21; ++i) a[i] = std::abs(10.0 - static_cast<double>(i));
  check_against_dense(a, b, "W21+");
  // constant diagonal, zero matrix
  check_against_dense(std::vector<double>(50, 2.0), std::vector<double>(49, 1.0), "toeplitz");
  check_against_dense(std::vector<double>(5, 0.0), std::vector<double>(4, 0.0), "zero");
  BOOST_CHECK(symmetric_tridiagonal_eigenvalues({}, {}).empty());
}

BOOST_AUTO_TEST_CASE(bad_input_is_refused) {
  BOOST_CHECK_THROW(symmetric_tridiagonal_eigenvalues({1.0, 2.0}, {}), c10::Error);
  BOOST_CHECK_THROW(symmetric_tridiagonal_eigenvalues({1.0, NAN}, {0.5}), c10::Error);
  BOOST_CHECK_THROW(symmetric_tridiagonal_eigenvalues({1.0, 2.0}, {INFINITY}), c10::Error);
}

BOOST_AUTO_TEST_SUITE_END()
