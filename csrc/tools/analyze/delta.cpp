#include "delta.h"

#include <fmt/core.h>

#include <algorithm>


namespace unisub_tool {
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

}  // namespace unisub_tool
