// Reading a model's tensors for the analysis, the rules both front ends follow: a tensor is refused
// (a ReadError naming its file and name) when it holds NaN or infinity, or entries too large or too
// small to square in float64 (weight_problem), caught where it is read rather than as an
// eigensolver failure or a report of zeros later; a delta module's two factors go into the
// accumulator as stored (no working copy, no scaling folded in), with the module's scaling beside.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "analysis/accumulators.h"
#include "analysis/reader.h"

namespace unisub::analysis {

// The analysis squares and sums weights in float64. Entries up to 2^450 (~2.9e135) keep a Gram of
// up to 2^100 products below float64's largest value (2^1024); a model whose largest entry is below
// 2^-450 would have deviations (down to 2^-53 of it) whose squares fall out of float64's normal
// range. Real weights lie far inside both.
constexpr int kWeightExponentLimit = 450;

// Why the analysis refuses a tensor as read, or "" when it takes it: NaN or infinity, or a largest
// entry beyond 2^±kWeightExponentLimit (an all-zero tensor is taken). `scaling`: the LoRA scaling
// the tensor was multiplied by, named in the reason.
std::string weight_problem(const at::Tensor& t, std::optional<double> scaling = std::nullopt);
// The same for a delta model's factors B [m, r], A [r, n] and scaling s, and for ΔW = s·B·A as a
// whole: {"lora_B" or "lora_A" (the factor the reason is about), reason}, or {"", ""}.
std::pair<std::string, std::string> delta_problem(const at::Tensor& B, const at::Tensor& A, double s);

// The tensor as analysed (a lora_B times its scaling when `scale`; Checkpoint::get).
at::Tensor read_finite(const Checkpoint& model, const std::string& key, bool scale);

// One model of a delta module: B [m, r] and A [r, n] read as stored and added to `acc` (whose shape
// is m × n) with s = model.scaling(b_key, scale), under `id` (< 0: the next one).
void add_delta_model(DeltaAccumulator& acc, const Checkpoint& model, const std::string& a_key,
                     const std::string& b_key, bool scale, int64_t id);

}  // namespace unisub::analysis
