// CUDA registrations of the subspace metrics: the drivers in ops/metrics.cpp run on cuBLAS and
// cuSOLVER (batched SVDs of the small k × p matrices), under a guard for the inputs' device.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ops/metrics.h"

TORCH_LIBRARY_IMPL(unisub, CUDA, m) {
  using namespace unisub::detail;
  m.impl("principal_angles", [](const at::Tensor& U1, const at::Tensor& U2, bool check) {
    const c10::cuda::CUDAGuard guard(U1.device());
    return principal_angles_impl(U1, U2, check);
  });
  m.impl("subspace_distance", [](const at::Tensor& U1, const at::Tensor& U2, c10::string_view metric, bool check) {
    const c10::cuda::CUDAGuard guard(U1.device());
    return subspace_distance_impl(U1, U2, metric, check);
  });
  m.impl("explained_variance", [](const at::Tensor& X, const at::Tensor& U, int64_t dim, bool center, bool check) {
    const c10::cuda::CUDAGuard guard(X.device());
    return explained_variance_impl(X, U, dim, center, check);
  });
}
