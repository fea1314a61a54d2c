// CPU registrations of the subspace metrics: the drivers in ops/metrics.cpp run on LAPACK.
#include <torch/library.h>

#include "ops/metrics.h"

TORCH_LIBRARY_IMPL(unisub, CPU, m) {
  using namespace unisub::detail;
  m.impl("principal_angles", &principal_angles_impl);
  m.impl("subspace_distance", [](const at::Tensor& U1, const at::Tensor& U2, c10::string_view metric, bool check) {
    return subspace_distance_impl(U1, U2, metric, check);
  });
  m.impl("explained_variance", &explained_variance_impl);
}
