// The models unisub-analyze reads: plain safetensors files, and PEFT LoRA adapter folders
// (adapter_config.json + adapter_model.safetensors), with the naming and scaling rules of
// unisub/io/checkpoints.py so both tools analyse the same tensors.
#pragma once
#include <torch/torch.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "safetensors.h"

namespace unisub_tool {

struct Model {
  std::string name;                           // the file, the model folder, or the adapter folder
  std::vector<Header> shards;                 // one file, or the shards of a model folder
  bool adapter = false;
  bool dora = false;                          // adapter_config.json has use_dora: ΔW is not s·B·A
  std::map<std::string, std::string> raw;     // tensor name as analysed -> name in the file
  std::map<std::string, size_t> shard_of;     // tensor name as analysed -> index in shards
  std::map<std::string, double> scalings;     // lora_B key -> s of ΔW = s·B·A (adapters only)

  // Tensor names as analysed: PEFT's "base_model.model." prefix dropped.
  std::vector<std::string> keys() const;
  const TensorInfo& info(const std::string& key) const;
  const std::string& file_of(const std::string& key) const;
  uint64_t total_bytes() const;  // of all its files (the run's fingerprint)
  // The tensor as stored, its dtype kept.
  torch::Tensor get_unscaled(const std::string& key) const;
  // As analysed by the out / in modes: a lora_B times its scaling (in float32, or float64 for
  // float64 factors) unless scaling is off, exactly as the Python reader does.
  torch::Tensor get(const std::string& key, bool scale) const;
  double scaling(const std::string& b_key, bool scale) const;
};

// PATHs -> models, sorted by name. A folder holding adapter_config.json is one adapter; a model
// folder (config.json, model.safetensors or a *.safetensors.index.json) is one model, its
// *.safetensors files the shards (checked against the index where there is one); any other
// folder contributes its *.safetensors files, adapter subfolders and model subfolders.
std::vector<Model> discover_models(const std::vector<std::string>& paths);

// module -> (lora_A key, lora_B key) for every module with both factors, sorted by module name.
std::map<std::string, std::pair<std::string, std::string>> lora_pairs(const std::vector<std::string>& keys);

// (rows, columns) of a tensor analysed as a matrix: the first dimension against the rest.
std::pair<int64_t, int64_t> matrix_shape(const std::vector<int64_t>& shape);

}  // namespace unisub_tool
