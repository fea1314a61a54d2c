// Which modules --modes delta analyses (the LoRA deltas ΔW_i = s_i·B_i·A_i of one module along the
// model axis); the accumulation and the slot's result are libunisub's (DeltaAccumulator,
// finalize_delta_slot).
#pragma once
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

}  // namespace unisub_tool
