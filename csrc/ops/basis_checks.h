#pragma once
// Checks of the bases that projection and metric ops take. Projection formulas such as U Uᵀ G are
// only projections when U has orthonormal columns; a slightly wrong basis gives silently wrong
// gradients, so every op verifies it unless the caller opts out with check_basis=False.
//
// Tolerance: max|UᵀU − I| ≤ 10·√ε of the basis's dtype (3.5e-3 float32, 1.5e-7 float64,
// 0.31 float16, 0.88 bfloat16). √ε is what a basis computed through a Gram matrix attains, so
// bases from any of our decompositions pass; the factor 10 leaves room for accumulated rounding.
// The check costs one k × k Gram (2·m·k² flops, a small fraction of the op's 4·m·n·k) and, on
// CUDA, one host synchronisation per call (list ops synchronise once for all their bases).
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

namespace unisub::detail {

inline double dtype_epsilon(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return std::numeric_limits<double>::epsilon();
    case at::kHalf: return 0x1p-10;
    case at::kBFloat16: return 0x1p-7;
    default: return std::numeric_limits<float>::epsilon();
  }
}

inline double basis_tolerance(at::ScalarType t) { return 10.0 * std::sqrt(dtype_epsilon(t)); }

// max|UᵀU − I| over every batch entry, as a 0-d float64 tensor on U's device (no synchronisation).
// A non-finite entry of U makes it NaN, which the comparison below rejects too.
inline at::Tensor orthonormality_defect(const at::Tensor& U) {
  if (U.numel() == 0) return at::zeros({}, U.options().dtype(at::kDouble));
  const auto Uc = U.scalar_type() == at::kDouble ? U : U.to(at::kFloat);
  auto gram = at::matmul(Uc.mT(), Uc);
  gram.diagonal(0, -2, -1).sub_(1.0);
  // amax would drop NaN on some backends' reductions; max keeps it.
  return gram.abs().max().to(at::kDouble);
}

[[noreturn]] inline void fail_not_orthonormal(std::string_view op, std::string_view arg,
                                              double defect, at::ScalarType t) {
  TORCH_CHECK(false, "unisub.", op, ": ", arg, " must have orthonormal columns (max|", arg, "ᵀ", arg,
              " − I| must be ≤ ", basis_tolerance(t), " for ", t, "), got ", defect,
              ". Orthonormalize it first (e.g. torch.linalg.qr), or pass check_basis=False if you "
              "know it is orthonormal to your own tolerance");
}

// One basis. Synchronises once on CUDA.
inline void check_orthonormal(const at::Tensor& U, std::string_view op, std::string_view arg) {
  const double defect = orthonormality_defect(U).item<double>();
  if (!(defect <= basis_tolerance(U.scalar_type()))) fail_not_orthonormal(op, arg, defect, U.scalar_type());
}

// Many bases (already validated for shape), with one host synchronisation for all of them.
inline void check_orthonormal_all(const std::vector<at::Tensor>& bases,
                                  const std::vector<std::string>& names, std::string_view op) {
  if (bases.empty()) return;
  std::vector<at::Tensor> on_device;
  on_device.reserve(bases.size());
  for (const auto& U : bases) on_device.push_back(orthonormality_defect(U));
  const auto defects = at::stack(on_device).cpu();
  const double* d = defects.const_data_ptr<double>();
  for (size_t i = 0; i < bases.size(); ++i) {
    const double defect = d[i];
    if (!(defect <= basis_tolerance(bases[i].scalar_type())))
      fail_not_orthonormal(op, names[i], defect, bases[i].scalar_type());
  }
}

}  // namespace unisub::detail
