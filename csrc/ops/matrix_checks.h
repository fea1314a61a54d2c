#pragma once
// Checks shared by the decomposition ops.
#include <ATen/ATen.h>

#include "ops/checks.h"

namespace unisub::detail {

inline void check_matrix_batch(const at::Tensor& A, std::string_view op, std::string_view arg) {
  check_float_input(A, op, arg);
  check_min_dim(A, 2, op, arg, "a batch of matrices [*, m, n]");
  TORCH_CHECK(A.size(-1) > 0 && A.size(-2) > 0, "unisub.", op, ": ", arg,
              " must have at least one row and one column, got shape ", A.sizes());
  TORCH_CHECK(A.numel() > 0, "unisub.", op, ": ", arg,
              " must hold at least one matrix (a batch dimension is 0), got shape ", A.sizes());
}

// all_finite: one pass over the bits on CPU, aminmax and one host sync elsewhere.
inline void check_finite(const at::Tensor& A, std::string_view op, std::string_view arg) {
  TORCH_CHECK(all_finite(A), "unisub.", op, ": ", arg, " contains NaN or infinity; decompositions need finite input");
}

}  // namespace unisub::detail
