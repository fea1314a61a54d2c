// CUDA registrations of the decomposition family: the device-independent drivers with the CUDA
// Jacobi and Gram kernels (GEMMs, eigh and QR go to cuBLAS/cuSOLVER through ATen).
#include <torch/library.h>

#include <algorithm>

#include "ops/decompositions.h"
#include "ops/svd.h"

namespace {
std::string_view view_of(c10::string_view s) { return {s.data(), s.size()}; }
}  // namespace

TORCH_LIBRARY_IMPL(unisub, CUDA, m) {
  using namespace unisub::detail;
  m.impl("svd", [](const at::Tensor& A, int64_t rank, c10::string_view method) {
    // auto, measured on an H200 (benchmarks/RESULTS.md): where the batched Jacobi kernel holds a
    // matrix in shared memory it beats the Gram route (cuSOLVER eigh per matrix) 70-140x at
    // 32² and 64² and is the accurate method too; elsewhere (tall LoRA factors) the Gram route.
    std::string_view chosen = view_of(method);
    if (chosen == "auto" && A.dim() >= 2 &&
        jacobi_cuda_fits_shared(std::max(A.size(-2), A.size(-1)), std::min(A.size(-2), A.size(-1)))) {
      chosen = "jacobi";
    }
    return svd_impl(A, rank, chosen, jacobi_svd_cuda);
  });
  m.impl("orthonormalize", orthonormalize_impl);
  m.impl("lora_gram", lora_gram_impl);
  m.impl("mode_svd", [](const at::Tensor& X, int64_t dim, int64_t rank, double energy, bool center,
                        c10::string_view method) {
    return mode_svd_impl(X, dim, rank, energy, center, view_of(method), cuda_gram_kernels());
  });
  m.impl("hosvd", [](const at::Tensor& X, at::IntArrayRef ranks, bool center) {
    return hosvd_impl(X, ranks, center, cuda_gram_kernels());
  });
}
