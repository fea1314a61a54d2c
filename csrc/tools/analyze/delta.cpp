#include "delta.h"

#include <fmt/core.h>

#include <algorithm>

#include "report.h"
#include "unisub/analysis.h"
#include "unisub/decompositions.h"

namespace unisub_tool {
namespace {

torch::Tensor double_center(const torch::Tensor& K) {
  auto row = K.mean(1, /*keepdim=*/true);
  return K - (row + row.t()) + K.mean();
}

// The mean ΔW and the top k unit-norm eigen-weights E_k = Σ_i v_ik (ΔW_i − mean) / σ_k as dense
// m × n matrices, each formed as one low-rank product [w_1 B_1 … w_M B_M] · [A_1; …; A_M]
// (B with the scaling folded in): LoraDeltaAccumulator.finalize(eigen_weights=k).
std::pair<torch::Tensor, torch::Tensor> mean_and_eigen_weights(const torch::Tensor& B, const torch::Tensor& A,
                                                               const torch::Tensor& ev, const torch::Tensor& V,
                                                               int64_t k) {
  const int64_t M = B.size(0), m = B.size(1), r = B.size(2);
  auto sigma = ev.slice(0, 0, k).sqrt();
  auto Vk = V.slice(1, 0, k);
  Vk = Vk - Vk.mean(0, /*keepdim=*/true);  // exactly H v: the weights of ΔW_i − mean
  auto W = torch::cat({torch::full({M, 1}, 1.0 / static_cast<double>(M), V.options()),
                       Vk / torch::where(sigma > 0, sigma, torch::ones_like(sigma))}, 1);
  auto Bw = torch::einsum("imr,ik->kmir", {B, W}).reshape({k + 1, m, M * r});
  auto both = Bw.matmul(A.reshape({M * r, -1}));
  return {both[0], both.slice(0, 1).contiguous()};
}

}  // namespace

void require_adapters(const std::vector<Model>& models) {
  for (const auto& model : models) {
    if (!model.adapter)
      throw CheckpointError(fmt::format("{}: --modes delta analyses LoRA deltas ΔW = s·B·A and needs PEFT adapter "
                                        "folders (adapter_config.json gives s); this is not one", model.name));
    if (model.dora())
      throw CheckpointError(fmt::format("{}: a DoRA adapter (use_dora): its weight change is a rescaled direction, "
                                        "not s·B·A, so --modes delta would misreport it; analyse its factors with "
                                        "--modes out in", model.name));
  }
}

DeltaModule plan_delta(const std::string& module, const std::string& a_key, const std::string& b_key,
                       const std::vector<Model>& models) {
  DeltaModule plan{module, a_key, b_key};
  for (const auto& model : models) {
    for (const auto& key : {a_key, b_key}) {
      if (!model.raw.count(key))
        throw CheckpointError(fmt::format("{}: slot '{}': missing (present in '{}')", model.name, key, models[0].name));
      if (!analysable(model.info(key).dtype))
        throw CheckpointError(fmt::format("{}: slot '{}': dtype {} cannot be analysed (need one of F64, F32, F16, BF16)",
                                          model.name, key, model.info(key).dtype));
    }
    const auto [r_a, n] = matrix_shape(model.info(a_key).shape);
    const auto [m, r_b] = matrix_shape(model.info(b_key).shape);
    if (r_a != r_b)
      throw CheckpointError(fmt::format("{}: slot '{}': lora_B ({} x {}) and lora_A ({} x {}) have different ranks",
                                        model.name, b_key, m, r_b, r_a, n));
    if (&model == &models[0]) {
      plan.m = m, plan.n = n;
    } else if (m != plan.m || n != plan.n) {
      throw CheckpointError(fmt::format("{}: slot '{}': ΔW = B·A of shape [{}, {}] differs from [{}, {}] in '{}'",
                                        model.name, b_key, m, n, plan.m, plan.n, models[0].name));
    }
  }
  return plan;
}

nlohmann::json analyze_delta(const DeltaModule& plan, const std::vector<Model>& models, int64_t rank, double energy,
                             bool scale, int64_t eigen_weights, int64_t null_seed,
                             const std::string& subspace_path) {
  const int64_t M = static_cast<int64_t>(models.size()), m = plan.m, n = plan.n;
  std::vector<torch::Tensor> Bs, As;
  std::vector<double> scalings;
  std::vector<int64_t> ranks;
  for (const auto& model : models) {
    As.push_back(read_finite_unscaled(model, plan.a_key).reshape({-1, n}));
    Bs.push_back(read_finite_unscaled(model, plan.b_key).reshape({m, -1}));
    scalings.push_back(model.scaling(plan.b_key, scale));
    ranks.push_back(As.back().size(0));
  }
  // zero-padded to the largest rank (no B·A changes), the scaling folded into B in float64
  const int64_t r_max = *std::max_element(ranks.begin(), ranks.end());
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  auto B = torch::zeros({M, m, r_max}, opts), A = torch::zeros({M, r_max, n}, opts);
  for (int64_t i = 0; i < M; ++i) {
    B[i].slice(1, 0, ranks[i]).copy_(Bs[i].to(torch::kDouble) * scalings[i]);
    A[i].slice(0, 0, ranks[i]).copy_(As[i]);
  }
  Bs.clear(), As.clear();
  const auto K = unisub::lora_gram(B, A, /*center=*/false);
  auto [ev, V] = unisub::analysis::sorted_eigh(double_center(K));
  int64_t r = rank > 0 ? std::min(rank, M) : M;
  r = std::min(r, unisub::analysis::rank_for_energy(ev, energy));
  std::vector<std::pair<std::string, torch::Tensor>> tensors{
      {"eigenvalues", ev}, {"eigenvectors", V.slice(1, 0, r).contiguous()}, {"gram", K},
      {"scalings", torch::tensor(scalings, opts)}};
  if (eigen_weights > 0) {
    auto [mean, E] = mean_and_eigen_weights(B, A, ev, V, std::min(eigen_weights, r));
    tensors.emplace_back("eigen_weights", E);
    tensors.emplace_back("mean", mean);
  }
  B = torch::Tensor(), A = torch::Tensor();

  const auto slot = plan.module + ".delta";
  std::vector<std::string> names;
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < M; ++i) names.push_back(models[i].name), ids.push_back(i);
  auto entry = parse_entry(unisub::analysis::delta_report(
      slot, K, ev, V.slice(1, 0, r), ids, m, n, /*center=*/true, ranks, torch::tensor(scalings, opts),
      std::vector<std::string>{plan.a_key, plan.b_key}, null_seed));
  nlohmann::json meta = {
      {"slot", slot}, {"shape", {m, n}}, {"count", M}, {"center", true}, {"modes", {"delta"}}, {"ranks", ranks},
      {"ids", ids},
      {"metadata", {{"factors", {plan.a_key, plan.b_key}}, {"source_files", {models[0].file_of(plan.b_key)}}, {"models", names}}},
      {"format", "unisub.lora_delta/1"}};
  save_safetensors(subspace_path, tensors, meta.dump());
  return entry;
}

}  // namespace unisub_tool
