// Float64 stacks whose Grams (sums of squares and products) would leave float64's range: entries
// beyond 2^±400 square past 2^±800, where a Gram of many columns overflows (an eigensolver failure)
// or its squares underflow (singular values of 0, NaN energy ratios). Multiplied by the power of two
// 2^-e that brings the largest entry near 1 (exact), the Gram's eigenvectors and every ratio of
// energies stay the same and the singular values scale by 2^e. float16/bfloat16/float32 inputs
// square within float64's range as they are.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <utility>

#include "ops/checks.h"

namespace unisub::detail {

// {X or X·2^-e, e}: e = 0 where X is not float64, is zero, or lies within 2^±400.
inline std::pair<at::Tensor, int> into_square_range(const at::Tensor& X) {
  if (X.scalar_type() != at::kDouble || X.numel() == 0) return {X, 0};
  const double largest = largest_magnitude(X);
  if (!(largest > 0) || !std::isfinite(largest) || (largest < std::ldexp(1.0, 400) && largest > std::ldexp(1.0, -400)))
    return {X, 0};
  const int e = std::ilogb(largest);
  return {X * std::ldexp(1.0, -e), e};
}

}  // namespace unisub::detail
