#pragma once
// C++ API of the analysis job's numeric finalisation: the one implementation behind `unisub analyze`
// (Python) and `unisub-analyze` (C++). Report entries come back as strict JSON text (RFC 8259:
// an undefined number is `null`; numbers are printed so that they parse back to the same double).
// The same functions are ops for Python: torch.ops.unisub.{rank_for_energy, sorted_eigh,
// marchenko_pastur_null, gaussian_null, mp_upper_edge, spectrum_report, slot_report, delta_report}.
#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace unisub::analysis {

// ---- the rank for an energy threshold τ (mode_svd, analyze and the C++ tool all use this) ----
//
// The smallest r whose cumulative explained variance Σ_{j<r} λ_j / total reaches τ "within rounding":
//   Σ_{j<r} λ_j / total  ≥  τ − energy_slack(d),   energy_slack(d) = 8·d·ε (ε of float64, d = λ's length).
// Why 8·d·ε: in float64 the partial sums and the total each carry at most (d − 1)·ε/2 relative
// summation error; and a backward-stable symmetric eigensolver with backward error ‖E‖ ≤ c·ε·‖G‖
// moves a sum of k ≤ d eigenvalues by at most k·‖E‖ ≤ d·c·ε·total. 8·d·ε covers both for c up to ~7,
// while staying far below any τ a user can mean (d = 10⁴: 1.8e-11).
// `total` is the whole energy of the stack (‖X_c‖_F²); nullopt means Σ λ. Eigenvalues are summed
// left to right in float64. total ≤ 0 (a zero stack) gives 1; a τ never reached gives d.
double energy_slack(int64_t d);
int64_t rank_for_energy(const at::Tensor& eigenvalues, double tau, std::optional<double> total = std::nullopt);
int64_t rank_for_energy(const std::vector<double>& eigenvalues, double tau, std::optional<double> total = std::nullopt);

// Eigenvalues of a symmetric Gram, descending and clamped at 0 (negatives are rounding), and its
// eigenvectors with each column's largest-magnitude entry positive (svd's sign rule).
std::pair<at::Tensor, at::Tensor> sorted_eigh(const at::Tensor& G);

// ---- matched nulls: an i.i.d. Gaussian p × N unfolding with entry variance total / (p·N) ----
// Expected descending eigenvalues (length p, float64) in the large-size limit: quantiles (j − ½)/a of
// the Marchenko–Pastur law, a = min(p, N), zeros past a.
at::Tensor marchenko_pastur_null(int64_t p, int64_t N, double total);
// Upper edge s²(√p + √N)² of that law (0 when N ≤ 0 or total ≤ 0).
double mp_upper_edge(int64_t p, int64_t N, double total);
// One exact sample of the descending eigenvalues (length p, float64) of Z Zᵀ, drawn through the
// Bartlett decomposition with torch's CPU generator seeded with `seed`: first randn(a, a), then
// _standard_gamma of the a shapes (b − i)/2 (χ²_{b−i} = 2·Gamma((b − i)/2)); b = max(p, N).
at::Tensor gaussian_null(int64_t p, int64_t N, double total, int64_t seed);

// ---- report entries ----
struct ReportOptions {
  std::vector<double> taus{0.5, 0.8, 0.9, 0.95, 0.99};
  std::vector<int64_t> error_ranks{1, 2, 4, 8, 16, 32, 64};
};

// The spectrum fields of one mode (no "split_half"): ev the whole descending spectrum, r the kept
// rank, (p, N) the matched null's shape (padded with null_pad zero eigenvalues), uncentred the whole
// stack's energy (errors of mean + rank-k reconstructions).
std::string spectrum_report(const at::Tensor& ev, int64_t r, int64_t p, int64_t N, double uncentred,
                            int64_t null_seed, int64_t null_pad = 0, const ReportOptions& options = {});

// The report entry of one slot analysed along the modes "out" / "in": mean [m, n], `models` counted,
// per mode its whole spectrum and kept rank; half_grams: empty, or per mode the two halves' Grams
// (a then b: 2·modes.size() tensors) for the split-half principal angles, with half_counts [2].
std::string slot_report(const std::string& slot, const at::Tensor& mean, int64_t models, bool center,
                        const std::vector<std::string>& modes, const std::vector<at::Tensor>& eigenvalues,
                        const std::vector<int64_t>& ranks, const std::vector<at::Tensor>& half_grams,
                        const std::vector<int64_t>& half_counts, int64_t null_seed, const ReportOptions& options = {});

// The report entry of a LoRA-delta slot (model axis): K [M, M] the uncentred Gram ⟨ΔW_i, ΔW_j⟩, ev [M]
// the (centred when `center`) spectrum, V [M, r] the kept eigenvectors, ids the models' indices (the
// split halves are the even and the odd ids), (m, n) ΔW's shape.
std::string delta_report(const std::string& slot, const at::Tensor& K, const at::Tensor& ev, const at::Tensor& V,
                         const std::vector<int64_t>& ids, int64_t m, int64_t n, bool center,
                         const std::vector<int64_t>& lora_ranks, const at::Tensor& scalings,
                         const std::optional<std::vector<std::string>>& factors, int64_t null_seed,
                         const ReportOptions& options = {});

}  // namespace unisub::analysis
