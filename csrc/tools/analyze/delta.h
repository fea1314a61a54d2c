// Mode 0 (the model axis) of the LoRA deltas ΔW_i = s_i·B_i·A_i of one module, through
// unisub::lora_gram, never forming a ΔW: the arithmetic and formats of unisub.LoraDeltaAccumulator,
// DeltaSubspace (unisub.lora_delta/1); the report entry is libunisub's delta_report.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "models.h"

namespace unisub_tool {

struct DeltaModule {
  std::string module, a_key, b_key;
  int64_t m = 0, n = 0;
};

// --modes delta needs the scaling s of each adapter's config: every model must be a PEFT LoRA
// adapter, and not a DoRA one (whose ΔW is not s·B·A).
void require_adapters(const std::vector<Model>& models);

// Every model must hold both factors with analysable dtypes, equal ranks within a model, and the
// same ΔW shape (m, n) across models; the LoRA rank may differ between models. Errors name the file.
DeltaModule plan_delta(const std::string& module, const std::string& a_key, const std::string& b_key,
                       const std::vector<Model>& models);

// Reads every model's factors, computes the centred model-space PCA, saves the DeltaSubspace to
// `subspace_path` and returns the slot's report entry. rank <= 0: no cap. eigen_weights = k > 0
// also saves the top min(k, rank) eigen-weights and the mean ΔW as dense m × n matrices. null_seed
// seeds the Gaussian null (the slot's index in the report, as in `unisub analyze`).
nlohmann::json analyze_delta(const DeltaModule& plan, const std::vector<Model>& models, int64_t rank, double energy,
                             bool scale, int64_t eigen_weights, int64_t null_seed, const std::string& subspace_path);

}  // namespace unisub_tool
