#pragma once
// Drivers of the decomposition family besides svd (see svd.h): device-independent, given the
// device's Gram kernels where they need a Gram.
#include <ATen/core/Tensor.h>

#include <string_view>
#include <tuple>
#include <vector>

#include "ops/gram.h"

#include <optional>

namespace unisub::detail {

at::Tensor lora_gram_impl(const at::Tensor& B, const at::Tensor& A, bool center);
// lora_gram's K before the cast to the factors' dtype: float64 whatever the GEMMs ran in (float32
// factors, uncentred: float32 GEMMs with a float64 reduction), for callers that keep every digit.
// `compute` overrides the GEMMs' dtype (float32 or float64); on CPU the factors are converted to it
// a panel at a time, so 16-bit factors need no whole copy. `amx`, when given, is set to whether the
// CPU tiles ran on AMX (exact split products of 16-bit factors; cpu/amx_split_gemm.h).
at::Tensor lora_gram_f64(const at::Tensor& B, const at::Tensor& A, bool center,
                         std::optional<at::ScalarType> compute = std::nullopt, bool* amx = nullptr);
at::Tensor orthonormalize_impl(const at::Tensor& A);
std::tuple<at::Tensor, at::Tensor> mode_svd_impl(const at::Tensor& X, int64_t dim, int64_t rank,
                                                 double energy, bool center, std::string_view method,
                                                 const GramKernels& kernels);
std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor> hosvd_impl(const at::Tensor& X,
                                                                       at::IntArrayRef ranks, bool center,
                                                                       const GramKernels& kernels);

}  // namespace unisub::detail
