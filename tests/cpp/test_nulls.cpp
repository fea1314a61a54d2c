// The LoRA-delta null's sequential tests take the top eigenvalue of each draw by Lanczos instead of a
// full eigvalsh: it must be that eigenvalue, to its stated relative residual, for projected and
// unprojected draws, Wisharts of full and of deficient rank (dim < M), clustered and spread scales.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <boost/test/unit_test.hpp>

#include <cmath>

#include "unisub/analysis.h"

namespace {

using unisub::analysis::bartlett_factor;
using unisub::analysis::null_spectrum;
using unisub::analysis::null_top_eigenvalue;

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
  for (int64_t M : {int64_t{1}, int64_t{2}, int64_t{9}, int64_t{120}}) {
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
          // the start vector becomes the top Ritz vector: a unit vector (zero for a zero operator)
          if (exact > 0) BOOST_CHECK_CLOSE(start.norm().item<double>(), 1.0, 1e-9);
        }
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(a_zero_null_has_a_zero_top_eigenvalue) {
  auto gen = at::detail::createCPUGenerator(3);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const auto L = bartlett_factor(6, 50, gen);
  auto start = at::ones({6}, f64);
  BOOST_CHECK_EQUAL(null_top_eigenvalue(L, at::zeros({6}, f64), at::Tensor(), false, 50, start), 0.0);
}

BOOST_AUTO_TEST_SUITE_END()
