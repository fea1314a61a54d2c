// The projection and metric ops through the C++ API, against float64 references from plain ATen;
// also the grouped list scheduler (the CUDA path) run on CPU tensors.
#include <boost/test/unit_test.hpp>
#include <torch/torch.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "ops/projection.h"
#include "test_helpers.h"
#include "unisub/unisub.h"

namespace {

using unisub::test::error_of;

torch::Tensor orthonormal(int64_t rows, int64_t cols) {
  return std::get<0>(torch::linalg_qr(torch::randn({rows, cols}, torch::kDouble)));
}

torch::Tensor reference(const torch::Tensor& G, const std::optional<torch::Tensor>& U,
                        const std::optional<torch::Tensor>& V, bool complement) {
  auto P = G.to(torch::kDouble);
  if (U) {
    const auto u = U->to(torch::kDouble);
    P = u.matmul(u.mT().matmul(P));
  }
  if (V) {
    const auto v = V->to(torch::kDouble);
    P = P.matmul(v).matmul(v.mT());
  }
  return complement ? G.to(torch::kDouble) - P : P;
}

double relative_error(const torch::Tensor& got, const torch::Tensor& want, const torch::Tensor& scale) {
  return (got.to(torch::kDouble) - want).norm().item<double>() / scale.to(torch::kDouble).norm().item<double>();
}

}  // namespace

BOOST_AUTO_TEST_SUITE(projection)

BOOST_AUTO_TEST_CASE(project_and_project_inplace_match_reference) {
  torch::manual_seed(4);
  const auto G = torch::randn({2, 30, 20}, torch::kDouble);
  const auto U = orthonormal(30, 4), V = orthonormal(20, 3);
  for (bool complement : {false, true}) {
    const auto want = reference(G, U, V, complement);
    BOOST_TEST(relative_error(unisub::project(G, U, V, complement), want, G) < 1e-13);
    auto H = G.clone();
    BOOST_TEST(unisub::project_(H, U, V, complement).is_same(H));
    BOOST_TEST(relative_error(H, want, G) < 1e-13);
  }
}

BOOST_AUTO_TEST_CASE(coefficients_reconstruct_and_energy) {
  torch::manual_seed(5);
  const auto G = torch::randn({25, 18}, torch::kDouble);
  const auto U = orthonormal(25, 5), V = orthonormal(18, 2);
  const auto C = unisub::coefficients(G, U, V);
  BOOST_TEST(C.sizes() == torch::IntArrayRef({5, 2}));
  BOOST_TEST(relative_error(unisub::reconstruct(C, U, V), reference(G, U, V, false), G) < 1e-13);
  const double energy = unisub::subspace_energy(G, U, V).item<double>();
  BOOST_TEST(std::abs(energy - C.square().sum().item<double>() / G.square().sum().item<double>()) < 1e-14);
}

BOOST_AUTO_TEST_CASE(project_list_matches_per_tensor_reference) {
  torch::manual_seed(6);
  const auto shared = orthonormal(16, 3);
  std::vector<torch::Tensor> Gs, originals;
  std::vector<std::optional<torch::Tensor>> Us, Vs;
  for (int i = 0; i < 6; ++i) {
    Gs.push_back(torch::randn({16, i % 2 ? 16 : 40}, torch::kDouble));
    originals.push_back(Gs.back().clone());
    Us.push_back(i == 5 ? std::nullopt : std::optional<torch::Tensor>(shared));
    Vs.push_back(i % 3 == 0 ? std::optional<torch::Tensor>(orthonormal(Gs.back().size(1), 2)) : std::nullopt);
  }
  unisub::project_list_(Gs, Us, Vs, /*complement=*/true);
  for (size_t i = 0; i < Gs.size(); ++i)
    BOOST_TEST(relative_error(Gs[i], reference(originals[i], Us[i], Vs[i], true), originals[i]) < 1e-13);
}

BOOST_AUTO_TEST_CASE(grouped_scheduler_matches_per_tensor_reference) {
  // The CUDA scheduler stacks same-shaped entries; run it on CPU with shared and per-entry bases,
  // batched entries, a singleton group and half-precision gradients.
  torch::manual_seed(7);
  using unisub::detail::ListEntry;
  const auto shared = orthonormal(12, 3);
  std::vector<ListEntry> entries;
  std::vector<torch::Tensor> originals;
  std::vector<std::optional<torch::Tensor>> Us, Vs;
  auto add = [&](torch::Tensor G, std::optional<torch::Tensor> U, std::optional<torch::Tensor> V) {
    originals.push_back(G.clone());
    Us.push_back(U);
    Vs.push_back(V);
    const auto compute = G.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
    if (U) U = U->to(compute);
    if (V) V = V->to(compute);
    entries.push_back({G, U, V, compute});
  };
  for (int i = 0; i < 4; ++i) add(torch::randn({12, 9}, torch::kDouble), shared, std::nullopt);
  for (int i = 0; i < 3; ++i) add(torch::randn({3, 12, 9}, torch::kDouble), orthonormal(12, 2), orthonormal(9, 4));
  add(torch::randn({7, 12}, torch::kDouble), std::nullopt, shared);
  for (int i = 0; i < 2; ++i) add(torch::randn({12, 9}).to(torch::kBFloat16), shared.to(torch::kFloat), std::nullopt);
  for (bool complement : {true, false}) {
    for (size_t i = 0; i < entries.size(); ++i) entries[i].G.copy_(originals[i]);
    unisub::detail::project_list_grouped(entries, complement);
    for (size_t i = 0; i < entries.size(); ++i) {
      const auto want = reference(originals[i], Us[i], Vs[i], complement);
      const double tol = entries[i].G.scalar_type() == torch::kDouble ? 1e-13 : 1e-2;  // bfloat16: one rounding
      BOOST_TEST_CONTEXT("entry " << i << " complement " << complement) {
        BOOST_TEST(relative_error(entries[i].G, want, originals[i]) < tol);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(principal_angles_recovers_tiny_angles) {
  torch::manual_seed(8);
  const auto Q = orthonormal(20, 6);
  const auto theta = torch::tensor({1e-9, 1e-4, 1.5}, torch::kDouble);
  const auto U1 = Q.narrow(1, 0, 3);
  const auto U2 = U1 * torch::cos(theta) + Q.narrow(1, 3, 3) * torch::sin(theta);
  BOOST_TEST((unisub::principal_angles(U1, U2) - theta).abs().max().item<double>() < 1e-13);
  BOOST_TEST(std::abs(unisub::subspace_distance(U1, U2, "geodesic").item<double>() - theta.norm().item<double>()) < 1e-13);
}

BOOST_AUTO_TEST_CASE(bad_input_names_the_argument) {
  const auto G = torch::randn({6, 5});
  const auto U = orthonormal(6, 2).to(torch::kFloat);
  BOOST_TEST(error_of([&] { unisub::project(G, orthonormal(7, 2).to(torch::kFloat), std::nullopt); })
                 .find("U must have 6 rows") != std::string::npos);
  BOOST_TEST(error_of([&] { unisub::project(G, U * 2, std::nullopt); }).find("U must have orthonormal columns") !=
             std::string::npos);
  BOOST_TEST(error_of([&] { unisub::project_list_({}, {}, {}); }).find("Gs must hold at least one tensor") !=
             std::string::npos);
  std::vector<torch::Tensor> Gs{G.clone()};
  BOOST_TEST(error_of([&] { unisub::project_list_(Gs, {U, U}, {std::nullopt}); }).find("Us must have one entry") !=
             std::string::npos);
  BOOST_TEST(error_of([&] { unisub::subspace_distance(U, U, "chordal"); }).find("metric must be") != std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()
