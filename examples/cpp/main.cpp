// Mode-wise spectrum of a stack of "models" in plain LibTorch + unisub, no Python.
#include <torch/torch.h>
#include <unisub/unisub.h>

#include <iostream>

int main() {
  torch::manual_seed(0);
  // 32 models whose 64 x 48 weights share a 4-dimensional column space plus small noise.
  const auto shared = std::get<0>(torch::linalg_qr(torch::randn({64, 4})));
  const auto X = torch::matmul(shared, torch::randn({32, 4, 48})) + 0.01 * torch::randn({32, 64, 48});

  const auto G = unisub::mode_gram(X, /*dim=*/1, /*center=*/true);  // 64 x 64
  const auto eigenvalues = std::get<0>(torch::linalg_eigh(G.to(torch::kDouble))).flip(0);
  const auto explained = eigenvalues.cumsum(0) / eigenvalues.sum();
  std::cout << "explained variance of the leading 1..6 row directions: "
            << explained.slice(0, 0, 6) << "\n";
  const bool ok = explained[3].item().toDouble() > 0.99 && explained[2].item().toDouble() < 0.99;
  std::cout << (ok ? "unisub example: ok" : "unisub example: unexpected spectrum") << std::endl;
  return ok ? 0 : 1;
}
