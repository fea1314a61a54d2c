// Each slot's report entry, computed once for both front ends: the spectrum fields of a mode (EVR,
// ranks for the report's τs, reconstruction errors, eigengap, nulls), split-half stability, the
// mean's share of the energy and the compression counts. Sums run left to right in float64.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <tuple>

#include "analysis/json_writer.h"
#include "analysis/profile.h"
#include "unisub/analysis.h"
#include "unisub/metrics.h"
#include "cpu/blas_threads.h"

namespace unisub::analysis {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr const char* kEqualNormKind = "equal-norm Marchenko-Pastur";
constexpr const char* kNormMatchedKind = "per-model-norm Wishart (Bartlett)";

// The report's words for k components above the null's band.
std::string verdict(int64_t k) {
  if (k == 0) return "within the null band";
  return std::to_string(k) + (k == 1 ? " component" : " components") + " above the null band";
}

std::vector<double> doubles(const at::Tensor& t) {
  const auto c = t.detach().to(at::kCPU, at::kDouble).contiguous();
  const double* p = c.data_ptr<double>();
  return {p, p + c.numel()};
}

// v[from:to] summed left to right
double sum(const std::vector<double>& v, size_t from = 0, size_t to = SIZE_MAX) {
  const double* end = v.data() + std::min(to, v.size());
  double s = 0.0;
  for (const double* p = v.data() + std::min(from, v.size()); p < end; ++p) s += *p;
  return s;
}

at::Tensor cpu64(const at::Tensor& t) { return t.detach().to(at::kCPU, at::kDouble).contiguous(); }

Json spectrum(const std::vector<double>& ev, int64_t r, int64_t p, int64_t N, double uncentred, int64_t seed,
              int64_t pad, const ReportOptions& o) {
  const int64_t d = static_cast<int64_t>(ev.size());
  TORCH_CHECK(d > 0, "unisub.spectrum_report: empty spectrum");
  TORCH_CHECK(r >= 1 && r <= d, "unisub.spectrum_report: rank must lie in [1, ", d, "], got ", r);
  TORCH_CHECK(pad >= 0, "unisub.spectrum_report: null_pad must be >= 0, got ", pad);
  const double total = sum(ev);
  std::vector<double> sv(d), evr(d), cum(d);
  double partial = 0.0;
  for (int64_t j = 0; j < d; ++j) {
    partial += ev[j];
    sv[j] = std::sqrt(ev[j]);
    evr[j] = total > 0 ? ev[j] / total : 0.0;
    cum[j] = total > 0 ? partial / total : 0.0;
  }
  Json rep = Json::object();
  rep["dim"] = d;
  rep["rank"] = r;
  rep["singular_values"] = sv;
  rep["explained_variance_ratio"] = evr;
  rep["cumulative_explained_variance"] = cum;
  // (members are built apart and then moved in: a reference into an object dies when it grows)
  Json at_tau = Json::object();
  for (double t : o.taus) at_tau[format_double(t)] = rank_for_energy(ev, t);
  rep["rank_at_tau"] = std::move(at_tau);
  // relative Frobenius error of the centred stack kept to rank k along this mode, and of the whole
  // stack rebuilt as mean + rank-k part (what compression gives back)
  Json err = Json::object(), err_mean = Json::object();
  for (int64_t k : o.error_ranks) {
    if (k < 1 || k > d) continue;
    err[std::to_string(k)] = total > 0 ? std::sqrt(std::max(0.0, 1 - cum[k - 1])) : 0.0;
    err_mean[std::to_string(k)] = uncentred > 0 ? std::sqrt(std::max(0.0, sum(ev, k)) / uncentred) : 0.0;
  }
  rep["reconstruction_error"] = std::move(err);
  rep["reconstruction_error_with_mean"] = std::move(err_mean);
  Json gap = Json::object();
  gap["at_rank"] = r;
  gap["abs"] = r < d ? ev[r - 1] - ev[r] : ev[r - 1];
  gap["sigma_ratio"] = r < d && ev[r] > 0 ? std::sqrt(ev[r - 1]) / std::sqrt(ev[r]) : kInf;  // undefined: null
  rep["eigengap"] = std::move(gap);
  std::vector<double> mp, gauss;
  double edge;
  {
    ScopedStage stage("null");
    edge = mp_upper_edge(p, N, total);
    mp = doubles(marchenko_pastur_null(p, N, total));
    gauss = doubles(gaussian_null(p, N, total, seed));
  }
  mp.resize(mp.size() + pad, 0.0);
  gauss.resize(gauss.size() + pad, 0.0);
  int64_t above = 0;
  if (total > 0)
    for (double x : ev) above += x > edge;
  // the mode Grams' null: i.i.d. entries of one variance, so every model carries the same expected
  // norm; a delta report replaces the kind, the count and the verdict by its norm-matched null's
  Json null = Json::object();
  null["kind"] = kEqualNormKind;
  null["shape"] = std::vector<int64_t>{p, N};
  null["mp_upper_edge"] = edge;
  null["components_above_mp_edge"] = above;
  null["marchenko_pastur_eigenvalues"] = mp;
  null["gaussian_stack_eigenvalues"] = gauss;
  // the share of the null's own energy in its top r: a draw's total differs from `total` by its
  // sampling error, and dividing by `total` let the share exceed 1 (seen: 1.012 for 4 models)
  const double mp_all = sum(mp), gauss_all = sum(gauss);
  null["marchenko_pastur_cumulative_at_rank"] = mp_all > 0 ? sum(mp, 0, r) / mp_all : 0.0;
  null["gaussian_stack_cumulative_at_rank"] = gauss_all > 0 ? sum(gauss, 0, r) / gauss_all : 0.0;
  null["components_above_null"] = above;
  null["verdict"] = verdict(above);
  rep["null"] = std::move(null);
  return rep;
}

// The "split_half" entry from the principal angles θ (ascending, radians) between the halves' spans.
Json split_half_entry(const at::Tensor& theta, int64_t models_a, int64_t models_b) {
  Json rep = Json::object();
  rep["models"] = std::vector<int64_t>{models_a, models_b};
  rep["principal_angles_deg"] = doubles(at::rad2deg(theta));
  rep["max_sin"] = theta.numel() ? theta.max().sin().item<double>() : 0.0;
  rep["mean_cos2"] = theta.numel() ? theta.cos().pow(2).mean().item<double>() : 1.0;
  return rep;
}

Json energy_entry(double uncentred, double mean_energy, double centred) {
  Json e = Json::object();
  e["total"] = uncentred;
  e["mean"] = mean_energy;
  e["centred"] = centred;
  e["mean_share"] = uncentred > 0 ? mean_energy / uncentred : 0.0;
  e["centred_share"] = uncentred > 0 ? centred / uncentred : 0.0;
  return e;
}

struct HalfBasis {
  at::Tensor C, V, sigma;
};

// For the models `idx`: their centring matrix C, and the leading eigenvectors V and σ of their
// (centred) Gram, keeping at most r components with σ² > 1e-12 σ₁².
HalfBasis half_basis(const at::Tensor& K, const at::Tensor& idx, int64_t r, bool center) {
  const int64_t n = idx.numel();
  auto C = at::eye(n, K.options()) - (center ? 1.0 / static_cast<double>(n) : 0.0);
  auto [ev, V] = sorted_eigh(C.mm(K.index_select(0, idx).index_select(1, idx)).mm(C));
  const double top = ev[0].item<double>();
  const int64_t k = top > 0 ? std::min<int64_t>(r, (ev > top * 1e-12).sum().item<int64_t>()) : 0;
  return {C, V.narrow(1, 0, k), ev.narrow(0, 0, k).sqrt()};
}

// Principal angles between the rank-r eigen-weight spans (in R^{m×n}) of the models with even and
// with odd ids, from the uncentred K alone: E_h = D_hᵀ V_h Σ_h⁻¹, so
// E_aᵀ E_b = Σ_a⁻¹ V_aᵀ (C_a K_ab C_b) V_b Σ_b⁻¹, whose singular values are the cosines
// (Gram route: angles below ~1e-8 rad are not resolved).
Json delta_split_half(const at::Tensor& K, const std::vector<int64_t>& ids, int64_t r, bool center) {
  ScopedStage stage("split_half");
  std::vector<int64_t> part[2];
  for (size_t i = 0; i < ids.size(); ++i) part[((ids[i] % 2) + 2) % 2].push_back(static_cast<int64_t>(i));
  if (std::min(part[0].size(), part[1].size()) < 2) return nullptr;
  const auto opts = at::TensorOptions().dtype(at::kLong);
  const auto ia = at::tensor(part[0], opts), ib = at::tensor(part[1], opts);
  const auto a = half_basis(K, ia, r, center), b = half_basis(K, ib, r, center);
  if (a.V.size(1) == 0 || b.V.size(1) == 0) return nullptr;
  const auto cross = a.C.mm(K.index_select(0, ia).index_select(1, ib)).mm(b.C);
  const auto cos = at::linalg_svdvals((a.V / a.sigma).t().mm(cross).mm(b.V / b.sigma)).clamp(0, 1);
  const auto theta = std::get<0>(at::arccos(cos).sort());
  return split_half_entry(theta, ia.numel(), ib.numel());
}

// The LoRA-delta null with the observed per-model norms (see null_model_variances): its mean
// spectrum and the band's upper end (maximum at each rank) over kDeltaNullDraws exact draws, and how
// many leading components lie above the null, tested one after the other (a sequential parallel
// analysis): component k is above when its eigenvalue exceeds the largest top eigenvalue of
// kDeltaNullDraws draws of the null matched to the residual per-model norms, diag(Q K_c Q) with
// Q projecting out the components found so far (the null drawn in that same subspace); the test stops at the first
// component within its null (and at p, the Gram's rank). Matching the residual norms matters: one
// adapter of 5x the others' scale is one large eigenvalue in the data and in this null, not structure
// the models share, and after a real shared direction is removed it is compared with the null of
// what is left, not with the null's second eigenvalue (which the big adapter would exceed).
// `leading`: the leading eigenvectors of K_c already computed (M × r'), used for the residuals while
// the test needs no more of them than it has.
void norm_matched_entry(Json& null, const at::Tensor& K, const std::vector<double>& ev, const at::Tensor& leading,
                        int64_t r, int64_t p, int64_t dim, bool center, int64_t seed) {
  ScopedStage stage("null");
  const auto Kc = center ? K - K.mean(0, true) - K.mean(1, true) + K.mean() : K;
  const auto t = null_model_variances(Kc.diagonal(), center);
  const int64_t M = K.size(0);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  // The draws W_d = L_d L_dᵀ / D, each the null's exact sample, draw d from its own generator
  // (null_draw_generator(seed, d): the same draws as norm_matched_null with this seed, made on any
  // thread): their spectra under S = diag(√t) give the band, and every later test projects and
  // rescales the same W_d (its own null, exactly drawn). The W_d are kept while they take at most
  // kDeltaNullKeepBytes, lower triangles packed (each Lanczos step is then one symmetric product
  // reading M²/2 numbers); beyond, each test draws L_d again from its generator and multiplies by
  // it twice (O(M²) a draw, not an O(M³) W_d).
  const bool keep = static_cast<double>(kDeltaNullDraws) * static_cast<double>(M) * static_cast<double>(M + 1) * 4 <=
                    static_cast<double>(kDeltaNullKeepBytes);
  std::vector<at::Tensor> grams(kDeltaNullDraws);
  auto factor = [&](int64_t d) {
    auto g = null_draw_generator(seed, d);
    return bartlett_factor(M, dim, g);
  };
  // The draws are independent: one per thread, each running its small linear algebra alone (inside
  // a parallel region ATen and the BLAS do not split work further), instead of every small product
  // being split across the threads and waiting at each join. Each result is the same whichever
  // thread computes it.
  auto each_draw = [&](const std::function<void(int64_t)>& work) {
    at::parallel_for(0, kDeltaNullDraws, 1, [&](int64_t b, int64_t e) {
      const unisub::detail::SequentialBlas one_thread;
      for (int64_t d = b; d < e; ++d) work(d);
    });
  };
  auto samples = at::empty({kDeltaNullDraws, M}, f64);
  const auto scale0 = t.sqrt();
  each_draw([&](int64_t d) {
    const auto W = wishart_of_factor(factor(d), dim);
    samples[d].copy_(null_spectrum_of_wishart(W, scale0, at::Tensor(), center));
    if (keep) grams[d] = packed_lower(W);
  });
  const auto mean = doubles(samples.mean(0)), upper = doubles(std::get<0>(samples.max(0)));
  std::vector<double> edges;  // the edge each tested component was compared with
  int64_t above = 0;
  at::Tensor lam, V;
  std::vector<at::Tensor> starts(kDeltaNullDraws, t.clone());  // Lanczos warm starts, one per draw
  while (above < p && ev[above] > 0) {
    double edge = upper[0];
    if (above > 0) {
      // the residual Q K_c Q, Q = H − V_k V_kᵀ (the found eigenvectors are orthogonal to 1), has rank
      // p − k: its null is Q S W S Q, with t matched to the residual's diagonal, so that the energy
      // left is spread over as many dimensions in the null as in the data
      if (!V.defined() || above > V.size(1)) {  // the slot's own vectors while enough, else all
        if (above <= leading.size(1)) {
          V = leading, lam = at::tensor(ev, K.options());
        } else {
          std::tie(lam, V) = sorted_eigh(Kc);
        }
      }
      const auto top = V.narrow(1, 0, above);
      auto Q = at::eye(M, K.options()) - top.mm(top.t());
      if (center) Q = Q - 1.0 / static_cast<double>(M);
      // diag(Q K_c Q) = diag(K_c) − Σ_j<k λ_j v_j² (V_k eigenvectors of K_c, orthogonal to 1)
      const auto residual_diag = (Kc.diagonal() - (top.square() * lam.narrow(0, 0, above)).sum(1)).clamp_min(0);
      const auto scale = projected_null_variances(Q, residual_diag).sqrt();
      std::vector<double> tops(kDeltaNullDraws);
      each_draw([&](int64_t d) {
        tops[d] = keep ? null_top_eigenvalue_of_wishart(grams[d], scale, top, center, starts[d])
                       : null_top_eigenvalue(factor(d), scale, top, center, dim, starts[d]);
      });
      edge = *std::max_element(tops.begin(), tops.end());
    }
    edges.push_back(edge);
    if (!(ev[above] > edge)) break;
    ++above;
  }
  const double total = sum(ev);
  null["kind"] = kNormMatchedKind;
  null["model_variances"] = doubles(t);
  null["draws"] = kDeltaNullDraws;
  null["norm_matched_mean_eigenvalues"] = mean;
  null["norm_matched_upper_eigenvalues"] = upper;
  null["norm_matched_cumulative_at_rank"] = total > 0 ? sum(mean, 0, r) / total : 0.0;
  null["sequential_edges"] = edges;
  null["components_above_null"] = above;
  null["verdict"] = verdict(above);
}

}  // namespace

std::string spectrum_report(const at::Tensor& ev, int64_t r, int64_t p, int64_t N, double uncentred,
                            int64_t null_seed, int64_t null_pad, const ReportOptions& options) {
  TORCH_CHECK(ev.dim() == 1, "unisub.spectrum_report: ev must be 1-D, got shape ", ev.sizes());
  return spectrum(doubles(ev), r, p, N, uncentred, null_seed, null_pad, options).dump();
}

std::string slot_report(const std::string& slot, const at::Tensor& mean_in, int64_t models, bool center,
                        const std::vector<std::string>& modes, const std::vector<at::Tensor>& eigenvalues,
                        const std::vector<int64_t>& ranks, const std::vector<at::Tensor>& half_grams,
                        const std::vector<int64_t>& half_counts, int64_t null_seed, const ReportOptions& options) {
  constexpr const char* op = "unisub.slot_report";
  TORCH_CHECK(mean_in.dim() == 2, op, ": mean must be an m x n matrix, got shape ", mean_in.sizes());
  TORCH_CHECK(!modes.empty() && eigenvalues.size() == modes.size() && ranks.size() == modes.size(), op,
              ": need one spectrum and one rank per mode, got ", modes.size(), " modes, ", eigenvalues.size(),
              " spectra, ", ranks.size(), " ranks");
  TORCH_CHECK(half_grams.empty() || (half_grams.size() == 2 * modes.size() && half_counts.size() == 2), op,
              ": half_grams must be empty or two Grams per mode (with two half_counts)");
  TORCH_CHECK(models >= 1, op, ": models must be >= 1, got ", models);
  const auto mean = cpu64(mean_in);
  const int64_t m = mean.size(0), n = mean.size(1), M = models;
  std::vector<std::vector<double>> evs;
  for (size_t i = 0; i < modes.size(); ++i) {
    TORCH_CHECK(modes[i] == "out" || modes[i] == "in", op, ": modes are 'out' or 'in', got '", modes[i], "'");
    evs.push_back(doubles(eigenvalues[i]));
    TORCH_CHECK(static_cast<int64_t>(evs.back().size()) == (modes[i] == "out" ? m : n), op, ": the '", modes[i],
                "' spectrum has ", evs.back().size(), " eigenvalues for a ", m, " x ", n, " slot");
  }
  const double centred = sum(evs[0]);
  const double mean_energy = center ? static_cast<double>(M) * mean.square().sum().item<double>() : 0.0;
  const double uncentred = centred + mean_energy;

  Json mode_reps = Json::object();
  int64_t r_out = m, r_in = n, basis_numbers = 0;
  for (size_t i = 0; i < modes.size(); ++i) {
    const bool out = modes[i] == "out";
    const int64_t d = out ? m : n, other = out ? n : m, r = ranks[i];
    const int64_t N = other * (center ? M - 1 : M);
    Json rep = spectrum(evs[i], r, d, N, uncentred, null_seed, 0, options);
    if (!half_grams.empty()) {
      ScopedStage stage("split_half");
      const auto Ua = sorted_eigh(cpu64(half_grams[2 * i])).second.narrow(1, 0, r);
      const auto Ub = sorted_eigh(cpu64(half_grams[2 * i + 1])).second.narrow(1, 0, r);
      rep["split_half"] = split_half_entry(unisub::principal_angles(Ua, Ub, /*check_basis=*/false), half_counts[0],
                                           half_counts[1]);
    } else {
      rep["split_half"] = nullptr;
    }
    mode_reps[modes[i]] = std::move(rep);
    (out ? r_out : r_in) = r;
    basis_numbers += d * r;
  }
  const int64_t original = M * m * n, stored = m * n + basis_numbers + M * r_out * r_in;
  Json entry = Json::object();
  entry["slot"] = slot;
  entry["shape"] = std::vector<int64_t>{m, n};
  entry["models"] = M;
  entry["energy"] = energy_entry(uncentred, mean_energy, centred);
  Json comp = Json::object();
  comp["original_numbers"] = original;
  comp["stored_numbers"] = stored;
  comp["ratio"] = static_cast<double>(original) / static_cast<double>(stored);
  entry["compression"] = std::move(comp);
  entry["modes"] = std::move(mode_reps);
  return entry.dump();
}

std::string delta_report(const std::string& slot, const at::Tensor& K_in, const at::Tensor& ev_in,
                         const at::Tensor& V_in, const std::vector<int64_t>& ids, int64_t m, int64_t n, bool center,
                         const std::vector<int64_t>& lora_ranks, const at::Tensor& scalings,
                         const std::optional<std::vector<std::string>>& factors, int64_t null_seed,
                         const ReportOptions& options) {
  constexpr const char* op = "unisub.delta_report";
  const auto K = cpu64(K_in), V = cpu64(V_in);
  TORCH_CHECK(K.dim() == 2 && K.size(0) == K.size(1) && K.size(0) >= 1, op, ": gram must be M x M, got shape ",
              K.sizes());
  const int64_t M = K.size(0);
  const auto ev = doubles(ev_in);
  TORCH_CHECK(static_cast<int64_t>(ev.size()) == M, op, ": eigenvalues must have M = ", M, " entries, got ",
              ev.size());
  TORCH_CHECK(V.dim() == 2 && V.size(0) == M && V.size(1) >= 1, op, ": eigenvectors must be M x r, got shape ",
              V.sizes());
  TORCH_CHECK(static_cast<int64_t>(ids.size()) == M, op, ": ids must have M = ", M, " entries, got ", ids.size());
  const int64_t r = V.size(1);
  const double uncentred = K.trace().item<double>();
  const double mean_energy = center ? K.sum().item<double>() / static_cast<double>(M) : 0.0;  // M·‖mean ΔW‖²
  const double centred = sum(ev);
  // The null: i.i.d. Gaussian m × n deltas of the same total variance, whose centred M × M Gram is
  // Wishart with M − 1 degrees of freedom (plus the zero eigenvalue centring leaves).
  const int64_t p = center ? M - 1 : M;
  Json rep = spectrum(ev, r, p, m * n, uncentred, null_seed, M - p, options);
  norm_matched_entry(rep["null"], K, ev, V, r, p, m * n, center, null_seed);
  rep["split_half"] = delta_split_half(K, ids, r, center);
  std::vector<double> sigma(ev.begin(), ev.begin() + r);
  for (auto& s : sigma) s = std::sqrt(s);
  Json scores = Json::array();
  const auto Va = V.accessor<double, 2>();
  for (int64_t i = 0; i < M; ++i) {
    std::vector<double> row(r);
    for (int64_t k = 0; k < r; ++k) row[k] = Va[i][k] * sigma[k];
    scores.push_back(row);
  }
  rep["scores"] = std::move(scores);
  int64_t factor_numbers = 0;
  for (auto k : lora_ranks) factor_numbers += k * (m + n);
  const int64_t original = M * m * n, stored = (1 + r) * m * n + M * r;
  Json entry = Json::object();
  entry["slot"] = slot;
  entry["kind"] = "lora_delta";
  entry["shape"] = std::vector<int64_t>{m, n};
  entry["models"] = M;
  entry["factors"] = factors ? Json(*factors) : Json();
  entry["lora_ranks"] = lora_ranks;
  entry["scalings"] = doubles(scalings);
  entry["energy"] = energy_entry(uncentred, mean_energy, centred);
  // dense ΔW stack against mean + r eigen-weights + M·r scores; the LoRA factors for scale
  Json comp = Json::object();
  comp["original_numbers"] = original;
  comp["stored_numbers"] = stored;
  comp["ratio"] = static_cast<double>(original) / static_cast<double>(stored);
  comp["lora_factor_numbers"] = factor_numbers;
  entry["compression"] = std::move(comp);
  Json mode_reps = Json::object();
  mode_reps["delta"] = std::move(rep);
  entry["modes"] = std::move(mode_reps);
  return entry.dump();
}

}  // namespace unisub::analysis
