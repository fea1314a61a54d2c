#pragma once
// lora_gram on CPU: the lower block triangle of K from the concatenated factors, as independent
// tiles (two GEMMs and a fused float64 block reduction each) shared out among the threads.
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>

namespace unisub::detail {

// Bt = [B₁ᵀ; …; B_Mᵀ] (M·r × m) and Ac = [A₁; …; A_M] (M·r × n): CPU tensors of any floating
// dtype (converted to `compute` a panel at a time where they differ from it; a 16-bit factor's
// float32 value is exact). compute: float32 or float64. K: contiguous float64 [M, M]. For every
// j ≤ i, writes
//   K[i, j] = Σ_{k, l < r} (BᵢᵀBⱼ)[k, l] · (AᵢAⱼᵀ)[k, l]
// with the GEMMs in `compute` and the sum in float64 (float32 products are exact there);
// entries above the diagonal are left as they are. Each entry is computed by one tile, whose
// reduction runs in an order fixed by the shape, so which thread takes which tile does not matter;
// the GEMMs are the BLAS's (single-threaded inside the workers, with its own threading when one
// worker runs alone).
// panel_rows × panel_cols: tile size below the diagonal, diagonal_rows: height of the strips that
// cover the diagonal blocks, all in rows of Bt (rounded down to whole models, at least one).
// allow_amx: 16-bit factors with float32 GEMMs take AMX bfloat16 tiles where the CPU has them
// (amx_split_gemm.h: exact products, float32 accumulation, ~1.2× faster); false: MKL's float32
// GEMMs on converted panels (the tests compare the two). Returns whether the AMX tiles ran.
bool lora_gram_lower_cpu(const at::Tensor& Bt, const at::Tensor& Ac, int64_t r, const at::Tensor& K,
                         at::ScalarType compute, int64_t panel_rows, int64_t panel_cols, int64_t diagonal_rows,
                         bool allow_amx = true);

// The CPU route's buffers at most, in bytes, for factors of m and n columns: each worker's two
// tiles of BᵢᵀBⱼ and AᵢAⱼᵀ and, for factors stored in another dtype than the GEMMs', its converted
// row and column panels (what the analysis plan adds to a delta slot's peak).
int64_t lora_gram_cpu_workspace_bytes(int64_t m, int64_t n, at::ScalarType compute, bool convert);

}  // namespace unisub::detail
