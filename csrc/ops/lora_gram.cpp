// lora_gram: Kᵢⱼ = ⟨BᵢAᵢ, BⱼAⱼ⟩_F of M LoRA deltas without forming any ΔW.
//
// With Bc = [B₁ … B_M] (m × Mr) and Ac = [A₁; …; A_M] (Mr × n), the blocks of P = BcᵀBc are
// BᵢᵀBⱼ and those of Q = AcAcᵀ are AᵢAⱼᵀ, so Kᵢⱼ = tr(BᵢᵀBⱼ AⱼAᵢᵀ) = Σ (P ∘ Q) over block (i, j).
// Two GEMMs and a block reduction: O((Mr)²(m + n)) instead of O(M·mnr + M²mn). Computed in
// float64 over tiles of models, lower triangle only, so memory stays bounded for large M.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "ops/checks.h"
#include "ops/decompositions.h"
#include "unisub/decompositions.h"

namespace unisub::detail {
namespace {
constexpr std::string_view kOp = "lora_gram";

void check_factors(const at::Tensor& B, const at::Tensor& A) {
  check_float_input(B, kOp, "B");
  check_float_input(A, kOp, "A");
  TORCH_CHECK(B.dim() == 3, "unisub.lora_gram: B must have shape [M, m, r], got ", B.sizes());
  TORCH_CHECK(A.dim() == 3, "unisub.lora_gram: A must have shape [M, r, n], got ", A.sizes());
  TORCH_CHECK(B.size(0) == A.size(0), "unisub.lora_gram: B and A must hold the same number of models, got ",
              B.size(0), " (B) and ", A.size(0), " (A)");
  TORCH_CHECK(B.size(0) > 0, "unisub.lora_gram: B and A must hold at least one model, got M = 0");
  TORCH_CHECK(B.size(2) == A.size(1), "unisub.lora_gram: the LoRA rank must agree: B is [M, m, r] with r = ",
              B.size(2), " but A is [M, r, n] with r = ", A.size(1));
  check_same_device(B, "B", A, "A", kOp);
  TORCH_CHECK(B.scalar_type() == A.scalar_type(), "unisub.lora_gram: B and A must have the same dtype, got ",
              B.scalar_type(), " (B) and ", A.scalar_type(), " (A)");
}
}  // namespace

at::Tensor lora_gram_impl(const at::Tensor& B, const at::Tensor& A, bool center) {
  check_factors(B, A);
  const int64_t M = B.size(0), m = B.size(1), r = B.size(2), n = A.size(2);
  auto K = at::zeros({M, M}, B.options().dtype(at::kDouble));
  if (r > 0 && m > 0 && n > 0) {
    const auto Bc = B.to(at::kDouble).permute({1, 0, 2}).reshape({m, M * r});  // [m, M r]
    const auto Ac = A.to(at::kDouble).reshape({M * r, n});                      // [M r, n]
    // Tiles of models whose factor blocks give GEMMs with ~1024 rows.
    const int64_t tile = std::max<int64_t>(1, 1024 / std::max<int64_t>(r, 1));
    for (int64_t i0 = 0; i0 < M; i0 += tile) {
      const int64_t ni = std::min(tile, M - i0);
      const auto Bi = Bc.narrow(1, i0 * r, ni * r), Ai = Ac.narrow(0, i0 * r, ni * r);
      const int64_t nj = i0 + ni;  // all models up to and including this tile: lower triangle
      const auto P = at::matmul(Bi.t(), Bc.narrow(1, 0, nj * r));  // [ni r, nj r]
      const auto Q = at::matmul(Ai, Ac.narrow(0, 0, nj * r).t());
      K.narrow(0, i0, ni).narrow(1, 0, nj).copy_((P * Q).reshape({ni, r, nj, r}).sum({1, 3}));
    }
    const auto lower = K.tril(-1);
    K = lower + lower.t() + K.diagonal().diag();
  }
  if (center) {
    // Double centring H K H (H = I − 11ᵀ/M): Gram of ΔWᵢ − mean ΔW, exact algebra, in float64.
    const auto row = K.mean(1, /*keepdim=*/true);
    K = K - (row + row.t()) + K.mean();  // (row + rowᵀ) first: keeps K bit-symmetric
  }
  return K.to(result_dtype(B));
}

}  // namespace unisub::detail

TORCH_LIBRARY_FRAGMENT(unisub, m) {
  m.def("lora_gram(Tensor B, Tensor A, bool center=False) -> Tensor");
}

namespace unisub {

at::Tensor lora_gram(const at::Tensor& B, const at::Tensor& A, bool center) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("unisub::lora_gram", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, bool)>();
  return op.call(B, A, center);
}

}  // namespace unisub
