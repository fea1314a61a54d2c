#pragma once
// The CPU fast path of svd's Gram route for float32 (and narrower) input: one fused pass per
// matrix over cache-resident data instead of a chain of batched ATen calls.
//
// Per matrix (in its tall orientation T = A, or Aᵀ for a wide A): G = TᵀT in float64 (float32
// products are exact there), Householder tridiagonalisation + implicit QL of G (our own
// eigensolver, gram_svd_kernel.h), U = T V / σ, re-orthonormalisation of U where σ_min/σ_max
// makes it necessary, the sign rule and the cast to float32 — the same rules as the batched
// route in ops/svd.cpp, only without the per-call overhead. Matrices are independent tasks of one
// at::parallel_for, so results do not depend on the number of threads.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace unisub::detail {

struct GramSvdCpuResult {
  at::Tensor U, S, Vh;        // float32 [B, m, k], [B, k], [B, k, n]; signed, descending
  std::vector<int64_t> redo;  // matrices left for another route (their slices are unset)
};

// A3: CPU [B, m, n], float32, float16 or bfloat16. min_ratio > 0: a matrix whose σ_k/σ_1 is
// below it goes to `redo` (the Gram route is not accurate enough there); so does one where the
// eigensolver did not converge. Non-finite input is an error.
GramSvdCpuResult gram_svd_cpu(const at::Tensor& A3, int64_t k, double min_ratio);

}  // namespace unisub::detail
