// CUDA registrations of the projection ops. Single tensors are cuBLAS GEMM chains (see
// ops/projection.cpp: the last GEMM is fused with the update of G, so an in-place projection
// reads G twice and writes it once). A list is scheduled by shape group: each group is one
// stack, a few batched GEMMs and one multi-tensor copy back, so a whole model's gradients cost
// O(distinct shapes) launches instead of O(tensors); a gradient hook pays no per-tensor
// launch latency.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ops/projection.h"

namespace unisub::detail {
namespace {

void project_list_cuda(const std::vector<ListEntry>& entries, bool complement) {
  const c10::cuda::CUDAGuard guard(entries.front().G.device());
  project_list_grouped(entries, complement);
}

constexpr ProjectionKernels kCudaKernels{project_list_cuda};

template <typename F>
auto on_device_of(const at::Tensor& t, F&& f) {
  const c10::cuda::CUDAGuard guard(t.device());
  return f();
}

}  // namespace
}  // namespace unisub::detail

TORCH_LIBRARY_IMPL(unisub, CUDA, m) {
  using namespace unisub::detail;
  m.impl("project", [](const at::Tensor& G, const OptTensor& U, const OptTensor& V, bool complement, bool check) {
    return on_device_of(G, [&] { return project_impl(G, U, V, complement, check); });
  });
  m.impl("project_", [](const at::Tensor& G, const OptTensor& U, const OptTensor& V, bool complement, bool check) {
    on_device_of(G, [&] { project_inplace_impl(G, U, V, complement, check); });
  });
  m.impl("project_list_", [](at::TensorList Gs, const c10::List<OptTensor>& Us, const c10::List<OptTensor>& Vs,
                             bool complement, bool check) {
    project_list_impl(Gs, Us, Vs, complement, check, kCudaKernels);
  });
  m.impl("coefficients", [](const at::Tensor& G, const OptTensor& U, const OptTensor& V, bool check) {
    return on_device_of(G, [&] { return coefficients_impl(G, U, V, check); });
  });
  m.impl("reconstruct", [](const at::Tensor& C, const OptTensor& U, const OptTensor& V, bool check) {
    return on_device_of(C, [&] { return reconstruct_impl(C, U, V, check); });
  });
  m.impl("subspace_energy", [](const at::Tensor& G, const OptTensor& U, const OptTensor& V, bool check) {
    return on_device_of(G, [&] { return subspace_energy_impl(G, U, V, check); });
  });
}
