// lora_gram: Kᵢⱼ = ⟨BᵢAᵢ, BⱼAⱼ⟩_F of M LoRA deltas without forming any ΔW.
//
// With Bc = [B₁ … B_M] (m × Mr) and Ac = [A₁; …; A_M] (Mr × n), the blocks of P = BcᵀBc are
// BᵢᵀBⱼ and those of Q = AcAcᵀ are AᵢAⱼᵀ, so Kᵢⱼ = tr(BᵢᵀBⱼ AⱼAᵢᵀ) = Σ (P ∘ Q) over block (i, j).
// Two GEMMs and a block reduction: O((Mr)²(m + n)) instead of O(M·mnr + M²mn), over tiles (CPU,
// csrc/cpu/lora_gram_cpu.cpp) or row panels (elsewhere) of models, lower triangle only, so memory
// stays bounded for large M.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "cpu/lora_gram_cpu.h"
#include "ops/checks.h"
#include "ops/decompositions.h"
#include "unisub/decompositions.h"

namespace unisub::detail {
namespace {
constexpr std::string_view kOp = "lora_gram";

void check_factors(const at::Tensor& B, const at::Tensor& A) {
  check_float_input(B, kOp, "B");
  check_float_input(A, kOp, "A");
  TORCH_CHECK(B.dim() == 3, "unisub.lora_gram: B must have shape [M, m, r], got ", B.sizes());
  TORCH_CHECK(A.dim() == 3, "unisub.lora_gram: A must have shape [M, r, n], got ", A.sizes());
  TORCH_CHECK(B.size(0) == A.size(0), "unisub.lora_gram: B and A must hold the same number of models, got ",
              B.size(0), " (B) and ", A.size(0), " (A)");
  TORCH_CHECK(B.size(0) > 0, "unisub.lora_gram: B and A must hold at least one model, got M = 0");
  TORCH_CHECK(B.size(2) == A.size(1), "unisub.lora_gram: the LoRA rank must agree: B is [M, m, r] with r = ",
              B.size(2), " but A is [M, r, n] with r = ", A.size(1));
  check_same_device(B, "B", A, "A", kOp);
  TORCH_CHECK(B.scalar_type() == A.scalar_type(), "unisub.lora_gram: B and A must have the same dtype, got ",
              B.scalar_type(), " (B) and ", A.scalar_type(), " (A)");
}
}  // namespace

// Rows of P and Q per GEMM panel on the device-independent route (CUDA). Chosen on CPU when that
// was the CPU route too (2 cores, M = 200, r = 16, m = n = 1024: 256-row panels were fastest; 128:
// more GEMM calls; 512 and up: more of the upper triangle computed and thrown away); not measured
// on a GPU.
constexpr int64_t kPanelRows = 256;
// Tile of the CPU route (csrc/cpu/lora_gram_cpu.cpp): 512 rows × 1024 columns of P and Q (32 × 64
// models at r = 16). On 2 cores at M = 200, r = 16, m = n = 1024 (sixth session) tiles from 128 × 512
// to 512 × 1024 were within the noise of each other. With factors converted a panel at a time
// (16-bit adapters), the taller tile halves the conversions per multiply-add; measured at M = 500,
// r = 16, m = n = 4096 (ninth session, Xeon with AVX-512): float16 factors 2.01 → 1.87 s against
// 256 rows, float32 ones 1.81 → 1.79 s; 512 × 2048 and 1024 × 1024 were no faster for float16 and
// take more buffer per thread (converted panels: (512 + 1024)·(m + n) floats).
constexpr int64_t kCpuTileRows = 512, kCpuTileCols = 1024;
// The diagonal blocks in strips of 64 rows (4 models at r = 16): the work computed above the
// diagonal and thrown away falls from 512/(Mr) to 64/(Mr) of the whole. Measured as above: 5 % faster
// at M = 200 (float32 0.121 → 0.115 s, float64 0.214 → 0.205 s), about 20 % at M = 50, m = n = 512;
// 32- and 128-row strips were within noise of 64.
constexpr int64_t kCpuDiagonalRows = 64;

int64_t lora_gram_cpu_workspace_bytes(int64_t m, int64_t n, at::ScalarType compute, bool convert) {
  const int64_t item = c10::elementSize(compute), workers = std::max(1, at::get_num_threads());
  const int64_t tiles = 2 * kCpuTileRows * kCpuTileCols, panels = convert ? (kCpuTileRows + kCpuTileCols) * (m + n) : 0;
  // the AMX route's split panels: its column stripe as many bytes as a float32 one (inner dimension
  // padded to a multiple of 32: at most 31 more a row), its rows a block of 96 at a time instead of
  // a whole row panel, plus a scratch block of 16 columns (hi and lo, 16 bits each: 64·(m + n) bytes)
  const int64_t amx_block = convert && compute == at::kFloat ? 64 * (m + n) / item : 0;
  return workers * (tiles + panels + amx_block) * item;
}

namespace {

// Checks that a factor is finite and returns the exponent e for which 2^e·max|x| lies in
// [0.5, 1), kept within what the compute dtype can scale by; 0 for a zero factor and for one
// whose largest magnitude is far enough from the dtype's limits that BᵀB and AAᵀ cannot overflow
// (2^±30 in float32, 2^±250 in float64): typical factors then cost no extra pass over them.
int factor_exponent(const at::Tensor& F, std::string_view arg, at::ScalarType compute) {
  // min and max do not depend on the order: a transposed view (the analysis engine's B is one) is
  // reduced in its memory order, since aminmax over it would first make a contiguous copy (131 MB
  // for 500 float32 factors of 4096 × 16, the largest allocation of a delta slot's Gram)
  const auto& in_memory_order = F.dim() >= 2 && !F.is_contiguous() && F.mT().is_contiguous() ? F.mT() : F;
  const auto [lo, hi] = at::aminmax(in_memory_order);
  const double l = lo.item<double>(), h = hi.item<double>();
  TORCH_CHECK(std::isfinite(l) && std::isfinite(h), "unisub.lora_gram: ", arg,
              " contains NaN or infinity; decompositions need finite input");
  const double peak = std::max(-l, h);
  if (!(peak > 0)) return 0;
  const int e = -std::ilogb(peak) - 1;
  if (std::abs(e) <= (compute == at::kDouble ? 250 : 30)) return 0;
  const int limit = compute == at::kDouble ? 1000 : 120;
  return std::clamp(e, -limit, limit);
}

at::Tensor scaled(const at::Tensor& F, at::ScalarType compute, int exponent) {
  const auto C = F.to(compute);
  return exponent == 0 ? C : C * std::ldexp(1.0, exponent);  // a power of two: exact
}

}  // namespace

// float64 GEMMs for float64 factors, and whenever the result is centred: double centring subtracts
// row and column means of K, which cancels when the deltas share a large common part, so K must be
// exact far below its own magnitude. Uncentred float16/bfloat16/float32 factors take float32 GEMMs:
// the precision class of forming every ΔW in float32 and its Gram, with the error bound stated in
// docs/decompositions.md; the block reduction is float64 either way.
at::ScalarType compute_dtype(const at::Tensor& B, bool center) {
  return (B.scalar_type() == at::kDouble || center) ? at::kDouble : at::kFloat;
}

at::Tensor lora_gram_impl(const at::Tensor& B, const at::Tensor& A, bool center) {
  return lora_gram_f64(B, A, center).to(result_dtype(B));
}

at::Tensor lora_gram_f64(const at::Tensor& B, const at::Tensor& A, bool center,
                         std::optional<at::ScalarType> compute_override, bool* amx) {
  if (amx) *amx = false;
  const at::NoGradGuard no_grad;  // not differentiable (see checks.h)
  check_factors(B, A);
  const int64_t M = B.size(0), m = B.size(1), r = B.size(2), n = A.size(2);
  auto K = at::zeros({M, M}, B.options().dtype(at::kDouble));
  if (r > 0 && m > 0 && n > 0) {
    // One pass per factor finds non-finite entries and the largest magnitude. A factor near the
    // dtype's limits is scaled by a power of two to max|x| ≈ 1 (exact), so BᵀB and AAᵀ cannot
    // overflow where K itself does not: unbalanced factors (B ~ 1e18, A ~ 1e-18 in float32) are
    // legitimate.
    TORCH_CHECK(!compute_override || *compute_override == at::kFloat || *compute_override == at::kDouble,
                "unisub.lora_gram: internal error: GEMMs run in float32 or float64, not ", *compute_override);
    const auto compute = compute_override.value_or(compute_dtype(B, center));
    const int eb = factor_exponent(B, "B", compute), ea = factor_exponent(A, "A", compute);
    // Bt = [B₁ᵀ; …; B_Mᵀ] (one copy, none when B is such a transposed view; P = Bt Btᵀ), Ac = [A₁;
    // …; A_M] (a view). The CPU route converts unscaled factors to the compute dtype a panel at a
    // time, so they are passed as stored.
    const bool cpu = B.device().is_cpu();
    auto prepared = [&](const at::Tensor& F, int e) { return cpu && e == 0 ? F : scaled(F, compute, e); };
    const auto Bt = prepared(B, eb).transpose(1, 2).reshape({M * r, m});  // [M r, m]
    const auto Ac = prepared(A, ea).reshape({M * r, n});                   // [M r, n]
    if (cpu) {
      const bool ran_amx = lora_gram_lower_cpu(Bt, Ac, r, K, compute, kCpuTileRows, kCpuTileCols, kCpuDiagonalRows);
      if (amx) *amx = ran_amx;
    } else {
      // Row panels of whole models; each panel's GEMMs stop at the diagonal (lower triangle only).
      const int64_t tile = std::max<int64_t>(1, kPanelRows / r);
      for (int64_t i0 = 0; i0 < M; i0 += tile) {
        const int64_t ni = std::min(tile, M - i0);
        const int64_t nj = i0 + ni;  // all models up to and including this panel
        const auto Bi = Bt.narrow(0, i0 * r, ni * r), Ai = Ac.narrow(0, i0 * r, ni * r);
        const auto P = at::matmul(Bi, Bt.narrow(0, 0, nj * r).t());  // [ni r, nj r]
        const auto Q = at::matmul(Ai, Ac.narrow(0, 0, nj * r).t());
        K.narrow(0, i0, ni).narrow(1, 0, nj).copy_(
            P.mul_(Q).reshape({ni, r, nj, r}).sum({1, 3}, /*keepdim=*/false, at::kDouble));
      }
    }
    const auto lower = K.tril(-1);
    K = lower + lower.t() + K.diagonal().diag();
    // Undo the scaling (K is quadratic in each factor) in steps that stay representable; every
    // step moves towards the final magnitude, so none overflows where K does not.
    for (int e = -2 * (eb + ea); e != 0;) {
      const int step = std::clamp(e, -1000, 1000);
      K.mul_(std::ldexp(1.0, step));
      e -= step;
    }
  }
  if (center) {
    // Double centring H K H (H = I − 11ᵀ/M): Gram of ΔWᵢ − mean ΔW, exact algebra, in float64.
    const auto row = K.mean(1, /*keepdim=*/true);
    K = K - (row + row.t()) + K.mean();  // (row + rowᵀ) first: keeps K bit-symmetric
  }
  return K;
}

}  // namespace unisub::detail

TORCH_LIBRARY_FRAGMENT(unisub, m) {
  m.def("lora_gram(Tensor B, Tensor A, bool center=False) -> Tensor");
}

namespace unisub {

at::Tensor lora_gram(const at::Tensor& B, const at::Tensor& A, bool center) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("unisub::lora_gram", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, bool)>();
  return op.call(B, A, center);
}

}  // namespace unisub
