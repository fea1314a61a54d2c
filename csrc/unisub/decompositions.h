#pragma once
// C++ API of the decomposition ops (dispatcher calls, like torch.ops.unisub.* from Python).
#include <ATen/core/Tensor.h>

#include <string_view>
#include <tuple>
#include <vector>

namespace unisub {

// Batched SVD A[*, m, n] = U diag(S) Vh, truncated to `rank` (-1: min(m, n)). method: "auto",
// "gram", "jacobi", "randomized" or "lapack". Largest entry of each U column is positive.
std::tuple<at::Tensor, at::Tensor, at::Tensor> svd(const at::Tensor& A, int64_t rank = -1,
                                                   std::string_view method = "auto");

// Orthonormal columns Q[*, m, k] whose span contains A's (completed where A is rank-deficient),
// with the sign rule of svd.
at::Tensor orthonormalize(const at::Tensor& A);

// Leading left singular vectors U[d_dim, r] and singular values S[r] of the mode-`dim` unfolding of
// X[M, d1, ...]; `energy` τ in (0, 1] picks the smallest r reaching τ of the (centred) energy.
std::tuple<at::Tensor, at::Tensor> mode_svd(const at::Tensor& X, int64_t dim, int64_t rank = -1,
                                            double energy = 0.0, bool center = false,
                                            std::string_view method = "auto");

// Truncated (sequentially truncated) HOSVD: X ≈ mean + core ×₀ U₀ ×₁ U₁ …; ranks[j] = -1 keeps mode j.
std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor> hosvd(const at::Tensor& X, at::IntArrayRef ranks,
                                                                  bool center = false);

// Kᵢⱼ = ⟨BᵢAᵢ, BⱼAⱼ⟩_F for LoRA factors B[M, m, r], A[M, r, n], without forming BᵢAᵢ;
// `center` gives the Gram of ΔWᵢ − mean ΔW.
at::Tensor lora_gram(const at::Tensor& B, const at::Tensor& A, bool center = false);

}  // namespace unisub
