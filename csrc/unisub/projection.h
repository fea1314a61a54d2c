#pragma once
// C++ API of the projection ops. Each call goes through the dispatcher, exactly like
// torch.ops.unisub.* from Python, so device, autograd and tracing behave the same.
//
// Shapes: G[*, m, n], U[*, m, k], V[*, n, l], k ≤ m, l ≤ n; std::nullopt for U or V means no
// projection on that side. Bases must have orthonormal columns: each op checks
// max|UᵀU − I| ≤ 10·√ε of the basis's dtype unless check_basis is false (one k × k Gram per
// basis and, on CUDA, one host synchronisation; skip it when the bases come from our own
// decompositions or were checked once before a training loop).
#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace unisub {

// U Uᵀ G V Vᵀ, or G minus it when `complement`. Batch dims broadcast. Differentiable in G, U, V.
at::Tensor project(const at::Tensor& G, const std::optional<at::Tensor>& U, const std::optional<at::Tensor>& V,
                   bool complement = false, bool check_basis = true);

// The same, written into G (float16/bfloat16 G computed in float32, rounded once). Returns G.
const at::Tensor& project_(const at::Tensor& G, const std::optional<at::Tensor>& U,
                           const std::optional<at::Tensor>& V, bool complement = false, bool check_basis = true);

// project_ for every Gs[i] with Us[i], Vs[i] (one entry, possibly nullopt, per tensor), in few
// kernel launches. All inputs are validated before any tensor is written.
void project_list_(at::TensorList Gs, const std::vector<std::optional<at::Tensor>>& Us,
                   const std::vector<std::optional<at::Tensor>>& Vs, bool complement = false,
                   bool check_basis = true);

// Uᵀ G V  [*, k, l]. Differentiable.
at::Tensor coefficients(const at::Tensor& G, const std::optional<at::Tensor>& U, const std::optional<at::Tensor>& V,
                        bool check_basis = true);

// U C Vᵀ  [*, m, n]; reconstruct(coefficients(G, U, V), U, V) == project(G, U, V). Differentiable.
at::Tensor reconstruct(const at::Tensor& C, const std::optional<at::Tensor>& U, const std::optional<at::Tensor>& V,
                       bool check_basis = true);

// ‖Uᵀ G V‖_F² / ‖G‖_F² per batch entry (NaN where G = 0), without forming the projection.
at::Tensor subspace_energy(const at::Tensor& G, const std::optional<at::Tensor>& U,
                           const std::optional<at::Tensor>& V, bool check_basis = true);

}  // namespace unisub
