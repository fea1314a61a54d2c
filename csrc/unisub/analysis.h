#pragma once
// C++ API of the analysis job's numeric finalisation: the one implementation behind `unisub analyze`
// (Python) and `unisub-analyze` (C++). Report entries come back as strict JSON text (RFC 8259:
// an undefined number is `null`; numbers are printed so that they parse back to the same double).
// The same functions are ops for Python: torch.ops.unisub.{rank_for_energy, sorted_eigh,
// marchenko_pastur_null, gaussian_null, mp_upper_edge, null_model_variances, norm_matched_null,
// spectrum_report, slot_report, delta_report}.
#include <ATen/core/Generator.h>
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
// One exact sample of the descending eigenvalues (length p, float64) of Z Zᵀ, drawn in O(a²) as
// those of B Bᵀ, B the lower bidiagonal a × a with B_ii = χ_{b−i}, B_{i+1,i} = χ_{a−1−i} (the law of
// Z's bidiagonal form; a = min(p, N), b = max(p, N)), from torch's CPU generator seeded with `seed`:
// _standard_gamma of the shapes (b − i)/2, then of (a − 1 − i)/2 (χ²_k = 2·Gamma(k/2)).
at::Tensor gaussian_null(int64_t p, int64_t N, double total, int64_t seed);
// The eigenvalues, descending, of the symmetric tridiagonal matrix with diagonal `diag` (n) and
// off-diagonal `off` (n − 1), by implicit QR steps with Wilkinson's shift: O(n²), each eigenvalue
// within a few ε·‖T‖ of the exact one (what a dense eigvalsh of the same matrix gives).
std::vector<double> symmetric_tridiagonal_eigenvalues(std::vector<double> diag, std::vector<double> off);

// ---- the LoRA-delta null: independent isotropic deltas with the observed per-model norms ----
// Models x_i = μ + √t_i·z_i with z_i i.i.d. isotropic in R^D (E‖z_i‖² = 1) and any μ: the model-axis
// Gram is S W S (centred: H S W S H), S = diag(√t), W = Z Zᵀ the Gram of M i.i.d. N(0, I_D / D) vectors.
// An equal-norm null (Marchenko–Pastur) counts one adapter of 5× the others' scale as structure; this
// one does not, because t follows the norms actually observed.
//
// null_model_variances: the t whose null has the expected diagonal `diag` (the observed Gram's:
// diag(H K H) = ‖ΔW_i − mean‖² when centred, diag K otherwise). Centred:
// E[(H S W S H)_ii] = (1 − 2/M)·t_i + Σt/M², so Σt = Σdiag·M/(M − 1) and t_i = (diag_i − Σt/M²)/(1 − 2/M),
// negative values (a model lying at the others' mean) clamped to 0 and the rest rescaled to keep Σt;
// M = 2: equal t (the diagonal does not identify t); uncentred: t = diag. float64, length M.
at::Tensor null_model_variances(const at::Tensor& diag, bool center);
// `draws` exact samples [draws, M] (float64, each row descending) of the spectrum of H S W S H (S W S
// when not centred) with D = dim; W drawn by the Bartlett decomposition (L lower triangular M × M:
// N(0, 1) below the diagonal, L_ii = √χ²_{D−i}; W = L Lᵀ / D), O(M³) per draw, draw d from its own
// torch CPU generator, null_draw_generator(seed, d) (randn(M, M), then _standard_gamma of the M
// shapes (D − i)/2); when D < M, W = Z Zᵀ / D from randn(M, D). The draws run on all threads and do
// not depend on which thread makes which.
at::Tensor norm_matched_null(const at::Tensor& variances, int64_t dim, bool center, int64_t draws, int64_t seed);
// The generator of draw `draw` of a null seeded with `seed` (a splitmix64 mix of both).
at::Generator null_draw_generator(int64_t seed, int64_t draw);
// The same null, all draws in turn from an existing CPU generator.
at::Tensor norm_matched_null(const at::Tensor& variances, int64_t dim, bool center, int64_t draws, at::Generator& gen);
// Generalised to Q S W S Q for an M × M orthogonal projector Q (H when centred; H minus the span of
// components already found, for a residual); Q undefined: S W S.
at::Tensor projected_norm_matched_null(const at::Tensor& variances, int64_t dim, const at::Tensor& Q, int64_t draws,
                                       at::Generator& gen);
// One draw's Bartlett factor from `gen` (the M(M − 1)/2 normals below the diagonal by rows, then
// _standard_gamma, as above): L with
// W = L Lᵀ / dim, lower triangular M × M (M × dim when dim < M).
at::Tensor bartlett_factor(int64_t M, int64_t dim, at::Generator& gen);
// The descending spectrum of Q S W S Q (Q undefined: S W S), S = diag(scale), W = L Lᵀ / dim.
at::Tensor null_spectrum(const at::Tensor& L, const at::Tensor& scale, const at::Tensor& Q, int64_t dim);
// The same draw as W = L Lᵀ / dim (M × M), formed once: then every spectrum or Lanczos step below
// multiplies by W (one product) instead of by L twice.
at::Tensor wishart_of_factor(const at::Tensor& L, int64_t dim);
// The lower triangle of a symmetric M × M matrix packed by rows (W_00, W_10, W_11, W_20, …), float64.
at::Tensor packed_lower(const at::Tensor& W);
// The descending spectrum of P S W S P, P = Q when defined, else H when `center`, else I.
at::Tensor null_spectrum_of_wishart(const at::Tensor& W, const at::Tensor& scale, const at::Tensor& Q, bool center);
// Its largest eigenvalue alone, by Lanczos (O(M²) a step instead of O(M³)) to a relative residual of
// 1e-9 (an eigenvalue within 1e-9 of the value; in practice the square of that over the gap), for Q = (H if center, else I) − V Vᵀ, V = `basis` (M × k orthonormal, orthogonal to 1 when
// centred; undefined or k = 0: none); `start` (length M) is the start vector and becomes the top
// Ritz vector.
double null_top_eigenvalue(const at::Tensor& L, const at::Tensor& scale, const at::Tensor& basis, bool center,
                           int64_t dim, at::Tensor& start);
// The same for the draw given as W = L Lᵀ / dim: M × M, or its lower triangle packed by rows
// (packed_lower; what a caller keeping many draws should keep: half the memory, and the form the
// Lanczos products read).
double null_top_eigenvalue_of_wishart(const at::Tensor& W, const at::Tensor& scale, const at::Tensor& basis,
                                      bool center, at::Tensor& start);
// The t ≥ 0 whose Q S W S Q has the expected diagonal `diag`: Σ_j Q_ij² t_j = diag_i in least squares,
// negatives clamped and the expected trace kept equal to Σ diag.
at::Tensor projected_null_variances(const at::Tensor& Q, const at::Tensor& diag);
// Draws per test of a LoRA-delta report's null. The band's upper end is their maximum at each rank;
// component k counts as above the null when its eigenvalue exceeds the largest top eigenvalue of
// kDeltaNullDraws draws of the null matched to the norms left after the k components above it are
// removed (so a null spectrum's top eigenvalue exceeds that edge with probability 1/(draws + 1) ≈ 4.8%).
constexpr int64_t kDeltaNullDraws = 20;
// The delta null keeps its draws W_d (lower triangles packed, M(M + 1)/2 float64 each) while they
// take at most this much; beyond, each test draws them again from their generators.
constexpr int64_t kDeltaNullKeepBytes = int64_t{256} << 20;

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
