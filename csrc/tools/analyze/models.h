// The models unisub-analyze reads: which PATHs are models (discovery), opened with libunisub's
// reader (csrc/analysis/reader.h), the one reader `unisub analyze` uses too.
#pragma once
#include <torch/torch.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "analysis/reader.h"
#include "safetensors.h"

namespace unisub_tool {

using Model = unisub::analysis::Checkpoint;

// PATHs -> models, by libunisub's discovery rule and order (csrc/analysis/discover.h), the one
// `unisub analyze` follows; a PyTorch pickle (.pt, .pth, .bin) is refused with a pointer to it.
std::vector<Model> discover_models(const std::vector<std::string>& paths);

// One PATH as one model (a .safetensors file, an adapter folder or a model folder).
Model open_model(const std::string& path);

// A tensor as analysed (lora_B scaled unless `scale` is off), refused when it holds NaN or
// infinity: caught here, naming the file, rather than as an eigensolver failure later.
torch::Tensor read_finite(const Model& model, const std::string& key, bool scale);
torch::Tensor read_finite_unscaled(const Model& model, const std::string& key);

}  // namespace unisub_tool
