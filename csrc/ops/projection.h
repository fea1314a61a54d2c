#pragma once
// Device-independent core of the projection ops (project, project_, project_list_, coefficients,
// reconstruct, subspace_energy). Every product is a GEMM through ATen (MKL/OpenBLAS on CPU,
// cuBLAS on CUDA); what differs per device is how a list of many tensors is scheduled, which
// lives behind ProjectionKernels.
#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <vector>

namespace unisub::detail {

using OptTensor = std::optional<at::Tensor>;

// The arguments of one projection, validated: bases are cast to the compute dtype of G.
struct ProjectionArgs {
  at::Tensor G;       // as given (may be float16/bfloat16)
  OptTensor U, V;     // in the compute dtype
  at::ScalarType compute;
};

// Validates G[*, m, n], U[*, m, k], V[*, n, l] (shapes, dtypes, devices, k ≤ m, l ≤ n) and
// returns them ready for the kernels. `index` ≥ 0 names list entries ("Gs[3]"). Orthonormality is
// not checked here (see basis_checks.h) so that list ops can check all bases at once.
ProjectionArgs validate_projection(const at::Tensor& G, const OptTensor& U, const OptTensor& V,
                                   std::string_view op, int64_t index = -1,
                                   std::string_view g_name = "G", bool in_place = false);

// U Uᵀ G V Vᵀ (or G minus it) in the compute dtype, out of place, broadcasting batch dims.
at::Tensor project_compute(const at::Tensor& Gc, const OptTensor& U, const OptTensor& V, bool complement);

// The same written into G (any float dtype; half precision is computed in float32 and rounded
// once on the way back). Uses a fused GEMM update (G ← βG + α·L·R) when G's layout allows.
void project_inplace(const at::Tensor& G, const OptTensor& U, const OptTensor& V, bool complement,
                     at::ScalarType compute);

// Uᵀ G V in the compute dtype (either side may be absent), in the cheaper association order.
at::Tensor coefficients_compute(const at::Tensor& Gc, const OptTensor& U, const OptTensor& V);

// U C Vᵀ in the compute dtype.
at::Tensor reconstruct_compute(const at::Tensor& C, const OptTensor& U, const OptTensor& V);

// One entry of a list, validated.
struct ListEntry {
  at::Tensor G;
  OptTensor U, V;
  at::ScalarType compute;
};

struct ProjectionKernels {
  // Projects every entry in place. Inputs are validated (and bases checked) before this runs.
  void (*project_list)(const std::vector<ListEntry>& entries, bool complement);
};

at::Tensor project_impl(const at::Tensor& G, const OptTensor& U, const OptTensor& V, bool complement,
                        bool check_basis);
void project_inplace_impl(const at::Tensor& G, const OptTensor& U, const OptTensor& V, bool complement,
                          bool check_basis);
void project_list_impl(at::TensorList Gs, const c10::List<OptTensor>& Us, const c10::List<OptTensor>& Vs,
                       bool complement, bool check_basis, const ProjectionKernels& k);
at::Tensor coefficients_impl(const at::Tensor& G, const OptTensor& U, const OptTensor& V, bool check_basis);
at::Tensor reconstruct_impl(const at::Tensor& C, const OptTensor& U, const OptTensor& V, bool check_basis);
at::Tensor subspace_energy_impl(const at::Tensor& G, const OptTensor& U, const OptTensor& V, bool check_basis);

// Projects each entry of the list on the calling thread's devices, one after the other: the
// building block of the CPU scheduler and the fallback for entries that cannot be grouped.
void project_entry(const ListEntry& e, bool complement);

// Groups entries of equal shapes, dtypes and basis shapes and projects each group as one batch
// (stack, batched GEMMs, one multi-tensor copy back): O(groups) kernel launches rather than
// O(tensors). The CUDA scheduler; device-independent, so it is tested on CPU as well.
void project_list_grouped(const std::vector<ListEntry>& entries, bool complement);

}  // namespace unisub::detail
