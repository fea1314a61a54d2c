// The models unisub-analyze reads: which PATHs are models (discovery), opened with libunisub's
// reader (csrc/analysis/reader.h), the one reader `unisub analyze` uses too.
#pragma once
#include <torch/torch.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "analysis/model_reading.h"
#include "analysis/reader.h"
#include "safetensors.h"

namespace unisub_tool {

using Model = unisub::analysis::Checkpoint;
// A tensor as analysed, refused when it holds NaN or infinity: libunisub's rule (model_reading.h).
using unisub::analysis::read_finite;

// PATHs -> models, by libunisub's discovery rule and order (csrc/analysis/discover.h), the one
// `unisub analyze` follows; a PyTorch pickle (.pt, .pth, .bin) is refused with a pointer to it.
std::vector<Model> discover_models(const std::vector<std::string>& paths);

// One PATH as one model (a .safetensors file, an adapter folder or a model folder).
Model open_model(const std::string& path);

}  // namespace unisub_tool
