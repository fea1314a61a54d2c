#pragma once
// C++ API of the subspace metrics (dispatcher calls, like torch.ops.unisub.* from Python).
// Bases must have orthonormal columns; check_basis = false skips the check (see projection.h).
#include <ATen/core/Tensor.h>

#include <string_view>

namespace unisub {

// Principal angles between span(U1[*, m, k1]) and span(U2[*, m, k2]): [*, min(k1, k2)],
// ascending, radians; accurate to a few ε absolute over [0, π/2]. Batch dims broadcast.
at::Tensor principal_angles(const at::Tensor& U1, const at::Tensor& U2, bool check_basis = true);

// "projection": √Σ sin²θ, "geodesic": √Σ θ², "max": max sin θ. Shape [*].
at::Tensor subspace_distance(const at::Tensor& U1, const at::Tensor& U2, std::string_view metric = "projection",
                             bool check_basis = true);

// Cumulative fraction of the (centred when `center`) stack X[M, d1, ...] explained by the
// leading j columns of U[d_dim, k] along `dim`: cum[j−1] = ‖U[:, :j]ᵀ X₍dim₎‖² / ‖X₍dim₎‖².
at::Tensor explained_variance(const at::Tensor& X, const at::Tensor& U, int64_t dim, bool center = false,
                              bool check_basis = true);

}  // namespace unisub
