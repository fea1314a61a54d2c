// The decomposition ops through the C++ API, against ATen's float64 LAPACK results.
#include <boost/test/unit_test.hpp>
#include <torch/torch.h>

#include "test_helpers.h"
#include "unisub/unisub.h"

namespace {

double max_abs(const torch::Tensor& t) { return t.abs().max().item().toDouble(); }

}  // namespace

BOOST_AUTO_TEST_SUITE(decompositions)

BOOST_AUTO_TEST_CASE(svd_methods_reconstruct_and_agree_with_lapack) {
  torch::manual_seed(11);
  const auto A = torch::randn({4, 9, 6}, torch::kDouble);
  const auto ref = torch::linalg_svdvals(A);
  for (const char* method : {"auto", "gram", "jacobi", "lapack"}) {
    BOOST_TEST_CONTEXT("method " << method) {
      auto [U, S, Vh] = unisub::svd(A, -1, method);
      BOOST_TEST(max_abs(S - ref) < 1e-12 * max_abs(ref));
      BOOST_TEST(max_abs(torch::matmul(U * S.unsqueeze(-2), Vh) - A) < 1e-12 * max_abs(A));
      BOOST_TEST(max_abs(torch::matmul(U.mT(), U) - torch::eye(6, torch::kDouble)) < 1e-12);
    }
  }
}

BOOST_AUTO_TEST_CASE(mode_svd_energy_and_hosvd_shapes) {
  torch::manual_seed(12);
  const auto X = torch::randn({8, 7, 5}, torch::kDouble);
  auto [U, S] = unisub::mode_svd(X, 1, /*rank=*/3, /*energy=*/0.0, /*center=*/true);
  BOOST_TEST(U.size(0) == 7);
  BOOST_TEST(U.size(1) == 3);
  auto [core, factors, mean] = unisub::hosvd(X, {-1, 3, 2}, true);
  BOOST_TEST(core.size(1) == 3);
  BOOST_TEST(factors.size() == 3u);
  BOOST_TEST(mean.size(0) == 7);
}

BOOST_AUTO_TEST_CASE(lora_gram_equals_the_gram_of_formed_deltas) {
  torch::manual_seed(13);
  const auto B = torch::randn({6, 10, 2}, torch::kDouble), A = torch::randn({6, 2, 8}, torch::kDouble);
  const auto D = torch::matmul(B, A).reshape({6, -1});
  BOOST_TEST(max_abs(unisub::lora_gram(B, A) - torch::matmul(D, D.t())) < 1e-11);
}

BOOST_AUTO_TEST_CASE(bad_rank_is_a_clear_error) {
  const auto message = unisub::test::error_of([] { unisub::svd(torch::randn({4, 3}), 7); });
  BOOST_TEST(message.find("rank must be -1") != std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()
