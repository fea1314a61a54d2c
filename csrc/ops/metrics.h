#pragma once
// Device-independent drivers of the subspace metrics (principal_angles, subspace_distance,
// explained_variance). They are small dense problems (Gram, k × k SVDs) run through ATen, whose
// CPU (LAPACK) and CUDA (cuSOLVER) backends both serve them; the kernels files only register.
#include <ATen/core/Tensor.h>

#include <string_view>

namespace unisub::detail {

at::Tensor principal_angles_impl(const at::Tensor& U1, const at::Tensor& U2, bool check_basis);
at::Tensor subspace_distance_impl(const at::Tensor& U1, const at::Tensor& U2, std::string_view metric,
                                  bool check_basis);
at::Tensor explained_variance_impl(const at::Tensor& X, const at::Tensor& U, int64_t dim, bool center,
                                   bool check_basis);

}  // namespace unisub::detail
