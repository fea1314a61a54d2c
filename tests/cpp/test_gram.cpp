// The Gram ops through the C++ API, against float64 references built from plain ATen.
#include <boost/test/unit_test.hpp>
#include <torch/torch.h>

#include <string>

#include "test_helpers.h"
#include "unisub/unisub.h"

namespace {

using unisub::test::error_of;

// Reference Gram of the mode-`dim` unfolding, formed explicitly in float64.
torch::Tensor reference_gram(torch::Tensor X, int64_t dim, bool center) {
  X = X.to(torch::kDouble);
  if (center) X = X - X.mean(0, true);
  auto unfolded = X.movedim(dim, 0).reshape({X.size(dim), -1});
  return unfolded.mm(unfolded.t());
}

double relative_error(const torch::Tensor& got, const torch::Tensor& want) {
  return (got.to(torch::kDouble) - want).norm().item<double>() / want.norm().item<double>();
}

}  // namespace

BOOST_AUTO_TEST_SUITE(gram)

BOOST_AUTO_TEST_CASE(mode_gram_matches_reference_for_every_mode) {
  torch::manual_seed(1);
  const auto X = torch::randn({5, 7, 3, 4}, torch::kDouble);
  for (int64_t dim = 0; dim < X.dim(); ++dim) {
    for (bool center : {false, true}) {
      const auto G = unisub::mode_gram(X, dim, center);
      BOOST_TEST_CONTEXT("dim " << dim << " center " << center) {
        BOOST_TEST(G.scalar_type() == torch::kDouble);
        BOOST_TEST(relative_error(G, reference_gram(X, dim, center)) < 1e-13);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(float32_input_is_accumulated_in_float64) {
  torch::manual_seed(2);
  const auto X = torch::randn({40, 64, 48}) + 1e3;  // large common offset
  const auto G = unisub::mode_gram(X, 1, /*center=*/true);
  BOOST_TEST(G.scalar_type() == torch::kFloat);
  // Only the final rounding to float32 remains.
  BOOST_TEST(relative_error(G, reference_gram(X, 1, true)) < 1e-6);
}

BOOST_AUTO_TEST_CASE(gram_update_streams_to_the_full_gram) {
  torch::manual_seed(3);
  const auto X = torch::randn({9, 6, 5}, torch::kDouble);
  auto G = torch::zeros({5, 5}, torch::kDouble);
  for (int64_t start = 0; start < 9; start += 4) {
    const auto& same = unisub::gram_update_(G, X.narrow(0, start, std::min<int64_t>(4, 9 - start)), 2);
    BOOST_TEST(same.is_same(G));
  }
  BOOST_TEST(relative_error(G, reference_gram(X, 2, false)) < 1e-13);
}

BOOST_AUTO_TEST_CASE(bad_input_names_the_argument) {
  const auto X = torch::randn({3, 4, 5});
  BOOST_TEST(error_of([&] { unisub::mode_gram(X, 3); }).find("dim must be in [-3, 2]") != std::string::npos);
  BOOST_TEST(error_of([&] { unisub::mode_gram(torch::randn({4}), 0); }).find("X must have at least 2") != std::string::npos);
  BOOST_TEST(error_of([&] { unisub::mode_gram(torch::ones({2, 3}, torch::kLong), 0); }).find("X must be float16") != std::string::npos);
  auto wrong = torch::zeros({4, 4});
  BOOST_TEST(error_of([&] { unisub::gram_update_(wrong, X, 2); }).find("G must have shape [5, 5]") != std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()
