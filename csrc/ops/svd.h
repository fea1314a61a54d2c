#pragma once
// Device-independent SVD driver. Each method is mostly ATen calls (GEMM, eigh, QR, LAPACK /
// cuSOLVER); the one device-specific kernel is the batched one-sided Jacobi.
#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>
#include <tuple>

namespace unisub::detail {

// A: float64 [batch, m, n], contiguous, m ≥ n, entries scaled to |a| ≤ 1. Writes U [batch, m, n],
// S [batch, n], V [batch, n, n] (not Vᵀ), singular values descending; columns of U for σ = 0 may be
// zero (the driver completes them). Returns false when some matrix did not converge.
using JacobiFn = bool (*)(const at::Tensor& A, at::Tensor& U, at::Tensor& S, at::Tensor& V);

bool jacobi_svd_cpu(const at::Tensor& A, at::Tensor& U, at::Tensor& S, at::Tensor& V);
bool jacobi_svd_cuda(const at::Tensor& A, at::Tensor& U, at::Tensor& S, at::Tensor& V);
// Whether the CUDA kernel sweeps an m × n (m ≥ n) matrix in shared memory, its fast path, on the
// current device (64 × 64 needs 64 KiB; up to 120 × 120, or 200 × 90, fit an H100/H200's 227 KiB).
bool jacobi_cuda_fits_shared(int64_t m, int64_t n);

// Randomized range finder shared by svd and mode_svd: extra columns and power iterations
// (Halko, Martinsson & Tropp 2011, §4.3-4.5); docs/decompositions.md states these values.
constexpr int64_t kSketchOversample = 10;
constexpr int kSketchPowerIterations = 4;

// The Gram route for float32-or-narrower input forms AᵀA in float64. Its error on σᵢ is about
// ε₆₄‖A‖²/σᵢ, within float32 LAPACK's ε₃₂‖A‖ while σᵢ ≥ (ε₆₄/ε₃₂)‖A‖ ≈ 2e-9‖A‖; `auto` keeps a
// margin of 50 and falls back to LAPACK below it.
constexpr double kAutoGramMinRatio = 1e-7;
// σ_min/σ_max ≥ 1e-4 (λ ratio 1e-8): the Gram route's U is orthonormal to ε₆₄/1e-8 ≈ 2e-8 < ε₃₂.
constexpr double kSkipReorthoMinLambdaRatio = 1e-8;

enum class SvdMethod { Auto, Gram, Jacobi, Randomized, Lapack };
SvdMethod parse_svd_method(std::string_view method, std::string_view op);

std::tuple<at::Tensor, at::Tensor, at::Tensor> svd_impl(const at::Tensor& A, int64_t rank,
                                                        std::string_view method, JacobiFn jacobi);

// Deterministic signs: the largest-magnitude entry of each column of U is positive (ties: the
// first); the matching rows of Vh flip with it. Vh may be undefined. The results are contiguous,
// cast to out_dtype when given.
void apply_sign_rule(at::Tensor& U, at::Tensor& Vh, std::optional<at::ScalarType> out_dtype = std::nullopt);

// Q with orthonormal columns spanning what A's do, completed where A is rank-deficient, with
// Q[:, j]·A[:, j] ≥ 0 so that already-orthonormal columns are kept as they are (float64).
at::Tensor orthonormal_completion(const at::Tensor& A);

}  // namespace unisub::detail
