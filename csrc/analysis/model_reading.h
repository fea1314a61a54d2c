// Reading a model's tensors for the analysis, the rules both front ends follow: a tensor is refused
// (a ReadError naming its file and name) when it holds NaN or infinity, caught where it is read
// rather than as an eigensolver failure later; a delta module's two factors go into the
// accumulator as stored (no working copy, no scaling folded in), with the module's scaling beside.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

#include "analysis/accumulators.h"
#include "analysis/reader.h"

namespace unisub::analysis {

// The tensor as analysed (a lora_B times its scaling when `scale`; Checkpoint::get).
at::Tensor read_finite(const Checkpoint& model, const std::string& key, bool scale);
// The tensor as stored, its dtype kept (Checkpoint::get_unscaled).
at::Tensor read_finite_unscaled(const Checkpoint& model, const std::string& key);

// One model of a delta module: B [m, r] and A [r, n] read as stored and added to `acc` (whose shape
// is m × n) with s = model.scaling(b_key, scale), under `id` (< 0: the next one).
void add_delta_model(DeltaAccumulator& acc, const Checkpoint& model, const std::string& a_key,
                     const std::string& b_key, bool scale, int64_t id);

}  // namespace unisub::analysis
