#include "analysis/slot_result.h"

#include <c10/core/GradMode.h>

#include <algorithm>
#include <tuple>

#include "analysis/json.h"
#include "analysis/json_writer.h"
#include "analysis/model_reading.h"
#include "analysis/profile.h"
#include "ops/checks.h"

namespace unisub::analysis {
namespace {

// The metadata a front end passes must be a JSON object: it is embedded in the file as it is.
json::Value parse_metadata(const std::string& text, const char* op) {
  try {
    auto v = json::parse(text);
    TORCH_CHECK_VALUE(v.is_object(), op, ": metadata must be a JSON object, got a ", v.type_name());
    return v;
  } catch (const json::ParseError& e) {
    TORCH_CHECK_VALUE(false, op, ": metadata is not valid JSON: ", e.what());
  }
}

}  // namespace

int64_t choose_rank(const at::Tensor& eigenvalues, std::optional<int64_t> rank, std::optional<double> energy) {
  TORCH_CHECK_VALUE(!rank || *rank > 0, "rank must be a positive integer, got ", rank.value_or(0));
  TORCH_CHECK_VALUE(!energy || (*energy > 0 && *energy <= 1), "energy must lie in (0, 1], got ", energy.value_or(0));
  const int64_t d = eigenvalues.numel();
  int64_t r = rank ? std::min(*rank, d) : d;
  if (energy) r = std::min(r, rank_for_energy(eigenvalues, *energy));
  return r;
}

ModeSpectra mode_spectra(const ModeAccumulator& acc, std::optional<int64_t> rank, std::optional<double> energy) {
  TORCH_CHECK_VALUE(acc.count() > 0, "ModeAccumulator: no models were accumulated");
  at::NoGradGuard no_grad;
  ModeSpectra out;
  for (size_t k = 0; k < acc.grams().size(); ++k) {
    const auto& G = acc.grams()[k];
    // models given to the accumulator directly skip the reading rule (model_reading.h): a Gram that
    // overflowed would otherwise reach eigh as "failed to converge"
    TORCH_CHECK_VALUE(unisub::detail::all_finite(G), "ModeAccumulator: the Gram of mode '", acc.modes()[k],
                      "' overflows float64: the models' entries are too large to square (keep them within 2^",
                      kWeightExponentLimit, ")");
    ScopedStage stage("eigh");
    auto [ev, U] = sorted_eigh(G);
    const int64_t r = choose_rank(ev, rank, energy);
    out.eigenvalues.push_back(ev);
    out.bases.push_back(U.narrow(1, 0, r).contiguous());
  }
  return out;
}

SlotResult finalize_mode_slot(const std::string& slot, const ModeAccumulator& even, const ModeAccumulator& odd,
                              std::optional<int64_t> rank, std::optional<double> energy, int64_t null_seed,
                              const std::string& metadata_json, const ReportOptions& options) {
  parse_metadata(metadata_json, "finalize_mode_slot");
  // the halves are merged into one total: the same accumulator twice would count its models twice
  TORCH_CHECK_VALUE(&even != &odd, "finalize_mode_slot: the even and odd halves are the same accumulator; give the "
                                   "two halves (an empty one where a run has a single half)");
  at::NoGradGuard no_grad;
  ModeAccumulator total(even.rows(), even.cols(), even.modes(), even.center(), even.device());
  total.set_gram_precision(even.gram_precision());
  total.merge(even);
  total.merge(odd);
  const auto spectra = mode_spectra(total, rank, energy);
  const auto& modes = total.modes();
  const bool split = std::min(even.count(), odd.count()) >= 2;
  std::vector<at::Tensor> half_grams;
  std::vector<int64_t> ranks;
  for (size_t k = 0; k < modes.size(); ++k) {
    ranks.push_back(spectra.bases[k].size(1));
    if (split) half_grams.push_back(even.grams()[k]), half_grams.push_back(odd.grams()[k]);
  }
  SlotResult out;
  ScopedStage stage("report");  // the nulls, the split-half angles and every number of the entry
  out.entry = slot_report(slot, total.mean(), total.count(), total.center(), modes, spectra.eigenvalues, ranks,
                          half_grams, split ? std::vector<int64_t>{even.count(), odd.count()} : std::vector<int64_t>{},
                          null_seed, options);
  out.entry = with_member(out.entry, "gram", total.precision_json());
  out.tensors.emplace_back("mean", total.mean());
  for (size_t k = 0; k < modes.size(); ++k) {
    out.tensors.emplace_back("basis." + modes[k], spectra.bases[k]);
    out.tensors.emplace_back("eigenvalues." + modes[k], spectra.eigenvalues[k]);
  }
  Json meta = Json::object();
  meta["slot"] = slot;
  meta["count"] = total.count();
  meta["center"] = total.center();
  meta["modes"] = Json(modes);
  meta["metadata"] = Json::raw(metadata_json);
  meta["format"] = "unisub.subspace/1";
  out.meta = meta.dump();
  return out;
}

SlotResult finalize_delta_slot(const std::string& slot, DeltaAccumulator& acc, std::optional<int64_t> rank,
                               std::optional<double> energy, int64_t eigen_weights, int64_t null_seed,
                               const std::string& metadata_json, const ReportOptions& options,
                               bool release_factors) {
  const auto metadata = parse_metadata(metadata_json, "finalize_delta_slot");
  TORCH_CHECK_VALUE(eigen_weights >= 0, "finalize_delta_slot: eigen_weights must be >= 0, got ", eigen_weights);
  TORCH_CHECK_VALUE(acc.count() > 0, "DeltaAccumulator: no models were accumulated");
  at::NoGradGuard no_grad;
  acc.sort_by_id();
  const int64_t M = acc.count();
  const auto Kc = acc.gram(acc.center());
  TORCH_CHECK_VALUE(unisub::detail::all_finite(Kc), "DeltaAccumulator: the Gram of slot '", slot,
                    "' overflows float64: the weight changes s·B·A are too large to square (keep them within 2^",
                    kWeightExponentLimit, ")");
  at::Tensor ev, V;
  {
    ScopedStage stage("eigh");
    std::tie(ev, V) = sorted_eigh(Kc);
  }
  const int64_t r = choose_rank(ev, rank, energy);
  const auto K = acc.gram(/*center=*/false);
  const auto scalings = at::tensor(acc.scalings(), at::TensorOptions().dtype(at::kDouble)).to(K.device());
  SlotResult out;
  out.tensors = {{"eigenvalues", ev}, {"eigenvectors", V.narrow(1, 0, r).contiguous()}, {"gram", K},
                 {"scalings", scalings}};
  if (eigen_weights > 0) {
    // E_k = Σ_i v_ik (ΔW_i − mean) / σ_k and the mean ΔW, each one low-rank product
    const int64_t k = std::min(eigen_weights, r);
    const auto sigma = ev.narrow(0, 0, k).sqrt();
    auto Vk = V.narrow(1, 0, k);
    if (acc.center()) Vk = Vk - Vk.mean(0, /*keepdim=*/true);  // exactly H v: the weights of ΔW_i − mean
    const auto W = at::cat({at::full({M, 1}, 1.0 / static_cast<double>(M), V.options()),
                            Vk / at::where(sigma > 0, sigma, at::ones_like(sigma))}, 1);
    ScopedStage stage("eigen_weights");
    const auto both = acc.combine(W);
    out.tensors.emplace_back("eigen_weights", both.narrow(0, 1, k).contiguous());
    out.tensors.emplace_back("mean", both[0].contiguous());
  }
  if (release_factors) acc.release_factors();
  std::optional<std::vector<std::string>> factors;
  if (const auto* f = metadata.find("factors"); f && f->is_array()) {
    factors.emplace();
    for (const auto& x : f->items) {
      TORCH_CHECK_VALUE(x.is_string(), "finalize_delta_slot: metadata \"factors\" must be a list of tensor names");
      factors->push_back(x.text);
    }
  }
  ScopedStage stage("report");
  out.entry = delta_report(slot, K, ev, V.narrow(1, 0, r), acc.ids(), acc.rows(), acc.cols(), acc.center(), acc.ranks(),
                           scalings, factors, null_seed, options);
  out.entry = with_member(out.entry, "gram", acc.precision_json());
  Json meta = Json::object();
  meta["slot"] = slot;
  meta["shape"] = Json(std::vector<int64_t>{acc.rows(), acc.cols()});
  meta["count"] = M;
  meta["center"] = acc.center();
  meta["modes"] = Json(std::vector<std::string>{"delta"});
  meta["ranks"] = Json(acc.ranks());
  meta["ids"] = Json(acc.ids());
  meta["metadata"] = Json::raw(metadata_json);
  meta["format"] = "unisub.lora_delta/1";
  out.meta = meta.dump();
  return out;
}

}  // namespace unisub::analysis
