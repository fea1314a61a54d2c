// The one reader of unisub's analysis inputs, shared by `unisub analyze` (through
// torch.classes.unisub.*, see reader_bindings.cpp) and the C++ tool unisub-analyze:
//   * safetensors files: strict JSON header, every entry validated, the tensors tiling the data
//     region exactly (no gap, no overlap, ending at the end of the file);
//   * Hugging Face model folders: the shards their *.safetensors.index.json names (confined to
//     the folder), or all their *.safetensors files where there is no index;
//   * PEFT LoRA adapters: adapter_config.json strictly typed, the "base_model.model." prefix
//     dropped, lora_B scaled by lora_alpha / r (rsLoRA: / sqrt(r)) with rank_pattern /
//     alpha_pattern matched as PEFT matches them (PCRE2, optional at build time).
// Every refusal is a ReadError naming the file and, where one is involved, the tensor.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace unisub::analysis {

// Bad input: what() is "PATH: MESSAGE" or "PATH: slot 'KEY': MESSAGE".
struct ReadError : std::runtime_error {
  ReadError(std::string path, std::string message, std::string slot = "");
  std::string path, message, slot;
};

struct TensorInfo {
  std::string dtype;  // safetensors name: F32, BF16, ...
  at::ScalarType scalar_type = at::kFloat;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // absolute byte offsets in the file
};

struct SafetensorsHeader {
  std::string path;
  uint64_t file_size = 0;
  std::map<std::string, TensorInfo> tensors;
  std::map<std::string, std::string> metadata;
};

// Headers larger than this are a corrupt length field, not a model (real ones are a few MB).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

SafetensorsHeader read_safetensors_header(const std::string& path);
// Reads one tensor straight into a new CPU tensor (memory stays at one slot).
at::Tensor read_safetensors_tensor(const SafetensorsHeader& header, const std::string& key);
// The safetensors dtype names this reader knows, and their torch types.
const std::map<std::string, std::pair<at::ScalarType, int>>& safetensors_dtypes();

struct PatternSet;  // compiled rank_pattern / alpha_pattern (PCRE2)

// adapter_config.json of a PEFT LoRA folder, strictly typed: r and rank_pattern values positive
// integers, lora_alpha and alpha_pattern values finite numbers, use_rslora / use_dora booleans
// (absent or null: PEFT's defaults r = 8, lora_alpha = 8, false), peft_type a string.
struct AdapterConfig {
  std::string path;  // of adapter_config.json
  std::string text;  // the file as read (valid strict JSON)
  int64_t r = 8;
  double lora_alpha = 8;
  bool use_rslora = false, use_dora = false;
  std::string peft_type;  // "LORA", "ADALORA", ... ("" when the config does not say)
  std::shared_ptr<const PatternSet> rank_pattern, alpha_pattern;

  static AdapterConfig read(const std::string& folder);
  // For a LoRA factor (a name as analysed holding ".lora_A", ".lora_B", ".lora_embedding_A" or
  // ".lora_embedding_B"): checks its shape against the module's rank and returns, for lora_B,
  // the scaling s of ΔW = s·B·A; nullopt for lora_A and for tensors that are no factor. `file`
  // is named in errors.
  std::optional<double> check_factor(const std::string& key, const std::vector<int64_t>& shape,
                                     const std::string& file) const;
  // The module's (r, lora_alpha) after rank_pattern / alpha_pattern.
  std::pair<int64_t, double> rank_and_alpha(const std::string& module) const;
};

bool built_with_pcre2();

// PEFT names tensors "base_model.model.<module>...": the name as analysed drops that prefix.
std::string adapter_tensor_name(const std::string& name_in_file);

// One model: a safetensors file, the shards of a model folder, or a PEFT adapter.
struct Checkpoint {
  std::string name;                        // the file, the model folder or the adapter folder
  std::vector<SafetensorsHeader> shards;
  bool adapter = false;
  std::optional<AdapterConfig> config;     // adapters
  std::map<std::string, std::string> raw;  // tensor name as analysed -> name in its file
  std::map<std::string, size_t> shard_of;  // tensor name as analysed -> index in shards
  std::map<std::string, double> scalings;  // lora_B name -> s of ΔW = s·B·A (adapters)

  std::vector<std::string> keys() const;  // sorted
  const TensorInfo& info(const std::string& key) const;
  const std::string& file_of(const std::string& key) const;
  uint64_t total_bytes() const;
  bool dora() const { return config && config->use_dora; }
  std::string peft_type() const { return config ? config->peft_type : std::string(); }
  // The tensor as stored, its dtype kept.
  at::Tensor get_unscaled(const std::string& key) const;
  // A lora_B times its scaling when `scale`: the product formed in float64, returned in float32
  // (float64 for float64 factors).
  at::Tensor get(const std::string& key, bool scale) const;
  double scaling(const std::string& b_key, bool scale) const;
};

// Several safetensors files holding one model between them (each tensor in one file only).
Checkpoint open_safetensors(const std::vector<std::string>& files, const std::string& name);
// A Hugging Face model folder: the shards of its *.safetensors.index.json, or all *.safetensors.
Checkpoint open_model_folder(const std::string& folder);
// A PEFT adapter folder with adapter_model.safetensors.
Checkpoint open_adapter(const std::string& folder);

}  // namespace unisub::analysis
