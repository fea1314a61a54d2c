#pragma once
// Device-independent core of the Gram ops (mode_gram, gram_update_). The only device-specific
// piece is `pack`: it copies a block of columns of the (optionally centred) mode unfolding into a
// float64 buffer, fusing the permutation, the mean subtraction and the cast into one pass. The
// GEMMs that follow run through ATen (MKL/OpenBLAS on CPU, cuBLAS on CUDA).
#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>

namespace unisub::detail {

// The mode-`dim` unfolding of X[M, d1..dp] seen as X3[outer, d, inner]: rows are index `d`,
// columns the pairs (outer, inner). Centring subtracts mean3[o % period, r or 0, i].
struct Unfolding {
  int64_t outer = 1;   // product of the dims before `dim`
  int64_t rows = 1;    // d_dim
  int64_t inner = 1;   // product of the dims after `dim`
  int64_t period = 1;  // outer indices per model (the mean repeats with this period)
  bool mean_per_row = true;  // false for mode 0: each row is a model, the mean is over rows
  int64_t columns() const { return outer * inner; }
};

Unfolding describe_unfolding(const at::Tensor& X, int64_t dim);

// The two memory-bound passes each device implements.
struct GramKernels {
  // buf: float64 [rows, cols] with unit stride on one side; writes columns [c0, c0 + cols) of the
  // unfolding of X3, minus mean3 when given.
  void (*pack)(const at::Tensor& X3, const std::optional<at::Tensor>& mean3, const Unfolding& u,
               int64_t c0, at::Tensor& buf);
  // out[j] = Σₘ (flat[m, j] − flat[0, j]) in float64, for flat [M, N] of any float dtype/strides.
  // Summing deviations from the first model keeps a common offset out of the sum (shifted-data
  // algorithm) and centres a stack of identical models to exact zeros.
  void (*spread_sum)(const at::Tensor& flat, at::Tensor& out);
};

// Mean over the model axis in float64, shaped for `pack` ([period, rows or 1, inner]).
at::Tensor model_mean_for_pack(const at::Tensor& X, const Unfolding& u, const GramKernels& k);

// acc [d, d] = beta·acc + alpha·A Aᵀ for A [d, k] (any strides), lower triangle only: one GEMM per
// block row of 256 rows (1024 on CUDA) covering the tiles left of and on the diagonal, about half
// the work of the full product. What lies above the diagonal is unspecified (beta = 0 need not
// clear it); callers mirror the lower triangle.
void syrk_lower(const at::Tensor& acc, const at::Tensor& A, double beta = 1.0, double alpha = 1.0);
// acc (float64 [d, d]) += A Aᵀ for a float32 A [d, k], lower block triangle, by float32 GEMMs of at
// most `columns` inner length whose results are summed into acc in float64 one block row at a time
// (while they are in cache), the block rows shared out among the threads on the CPU. scratch: from
// syrk_lower_float32_scratch (one block row per thread), reusable.
void syrk_lower_float32(const at::Tensor& acc, const at::Tensor& A, int64_t columns, const at::Tensor& scratch);
at::Tensor syrk_lower_float32_scratch(int64_t d, const at::Device& device);
// An uninitialised tensor whose data starts on a 4096-byte boundary (CPU; elsewhere at::empty):
// for operands of single-threaded BLAS calls whose bits must not depend on where they lie.
at::Tensor page_aligned_empty(at::IntArrayRef sizes, at::ScalarType dtype, const at::Device& device);
// G's strict upper triangle := its lower one's transpose (float64, contiguous; in place on CPU).
void mirror_lower_(const at::Tensor& G);

// acc (float64 [rows, rows]) += unfolding · unfoldingᵀ, in column blocks of bounded memory.
// Only the lower triangle of acc is guaranteed; mode_gram/gram_update_ mirror it.
void accumulate_gram(at::Tensor& acc, const at::Tensor& X, int64_t dim, bool center, const GramKernels& k);

// The kernels of each device (defined in cpu/gram_cpu.cpp and cuda/gram_cuda.cu).
const GramKernels& cpu_gram_kernels();
const GramKernels& cuda_gram_kernels();

// X must be a non-empty stack [M, d1, ...] of a supported float dtype (error names `op`).
void check_stack(const at::Tensor& X, std::string_view op);

// The exactly symmetric float64 Gram of the mode-`dim` unfolding (dim already wrapped).
at::Tensor gram_f64(const at::Tensor& X, int64_t dim, bool center, const GramKernels& k);

at::Tensor mode_gram_impl(const at::Tensor& X, int64_t dim, bool center, const GramKernels& k);
void gram_update_impl(const at::Tensor& G, const at::Tensor& X, int64_t dim, const GramKernels& k);

}  // namespace unisub::detail
