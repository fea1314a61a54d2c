#include "models.h"

#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

namespace fs = std::filesystem;

namespace unisub_tool {
namespace {

constexpr std::string_view kPeftPrefix = "base_model.model.";

std::string strip_prefix(const std::string& key) {
  return key.rfind(kPeftPrefix, 0) == 0 ? key.substr(kPeftPrefix.size()) : key;
}

// The module a lora_B (or lora_embedding_B) key belongs to; empty for any other key.
std::string b_module(const std::string& key) {
  for (const char* tag : {".lora_B", ".lora_embedding_B"}) {
    const auto at = key.find(tag);
    if (at != std::string::npos) return key.substr(0, at);
  }
  return {};
}

// PEFT's rule: the first pattern (in the config's own order, hence ordered_json) that matches the
// module name on a dot boundary.
const nlohmann::ordered_json* pattern_value(const nlohmann::ordered_json& cfg, const char* field,
                                            const std::string& module) {
  if (!cfg.contains(field) || !cfg[field].is_object()) return nullptr;
  for (const auto& [pattern, value] : cfg[field].items())
    if (std::regex_match(module, std::regex("(.*\\.)?(" + pattern + ")"))) return &value;
  return nullptr;
}

// One model of one or more safetensors files; a tensor may live in one of them only. `rename`
// maps a name in the file to the name it is analysed under.
Model open_shards(const std::string& name, const std::vector<fs::path>& files,
                  std::string (*rename)(const std::string&) = nullptr) {
  Model model;
  model.name = name;
  for (const auto& f : files) {
    model.shards.push_back(read_header(f.string()));
    for (const auto& [key, info] : model.shards.back().tensors) {
      const auto as = rename ? rename(key) : key;
      if (model.raw.count(as))
        throw CheckpointError(fmt::format("{}: slot '{}': also in '{}' (a tensor must be in one shard only)", f.string(),
                                          as, model.file_of(as)));
      model.raw[as] = key;
      model.shard_of[as] = model.shards.size() - 1;
    }
  }
  return model;
}

Model open_adapter(const fs::path& folder) {
  const auto cfg_path = folder / "adapter_config.json";
  nlohmann::ordered_json cfg;
  try {
    std::ifstream in(cfg_path);
    if (!in) throw std::runtime_error("cannot open it");
    cfg = nlohmann::ordered_json::parse(in);
  } catch (const std::exception& e) {
    throw CheckpointError(fmt::format("{}: cannot read adapter config: {}", cfg_path.string(), e.what()));
  }
  if (!cfg.is_object()) throw CheckpointError(fmt::format("{}: adapter config is not a JSON object", cfg_path.string()));
  const auto st = folder / "adapter_model.safetensors";
  if (!fs::exists(st))
    throw CheckpointError(fmt::format("{}: PEFT folder without adapter_model.safetensors (unisub-analyze reads "
                                      "safetensors only; the Python tool also reads adapter_model.bin)", folder.string()));
  Model model = open_shards(folder.string(), {st}, strip_prefix);
  model.adapter = true;
  model.dora = cfg.value("use_dora", false);
  for (const auto& [name, key] : model.raw) {
    const auto& info = model.info(name);
    const auto module = b_module(name);
    if (module.empty()) continue;
    const auto* r_over = pattern_value(cfg, "rank_pattern", module);
    const auto* a_over = pattern_value(cfg, "alpha_pattern", module);
    const double r = r_over ? r_over->get<double>() : cfg.value("r", 8.0);
    const double alpha = a_over ? a_over->get<double>() : cfg.value("lora_alpha", 8.0);
    // the rank is the second dimension of lora_B [out, r] and of lora_embedding_B [embedding_dim, r]
    if (info.shape.size() >= 2 && static_cast<double>(info.shape[1]) != r) {
      std::ostringstream shape;
      for (size_t i = 0; i < info.shape.size(); ++i) shape << (i ? ", " : "[") << info.shape[i];
      throw CheckpointError(fmt::format("{}: slot '{}': adapter_config.json gives rank {} for module '{}' but lora_B "
                                        "has shape {}]", folder.string(), name, r, module, shape.str()));
    }
    model.scalings[name] = cfg.value("use_rslora", false) ? alpha / std::sqrt(r) : alpha / r;
  }
  return model;
}

bool is_shard_index(const fs::path& p) {
  return p.filename().string().find(".safetensors.index.json") != std::string::npos;
}

bool is_model_folder(const fs::path& p) {
  if (fs::exists(p / "config.json") || fs::exists(p / "model.safetensors")) return true;
  for (const auto& e : fs::directory_iterator(p))
    if (is_shard_index(e.path())) return true;
  return false;
}

// A Hugging Face model folder: one model, in the shards its *.safetensors.index.json names (other
// .safetensors files there, such as a consolidated copy, are not part of it), or in all its
// *.safetensors files where there is no index. Every shard the index names must exist and hold
// the tensors it lists.
Model open_model_folder(const fs::path& folder) {
  std::vector<fs::path> files;
  fs::path index;
  for (const auto& e : fs::directory_iterator(folder)) {
    if (e.path().extension() == ".safetensors") files.push_back(e.path());
    if (is_shard_index(e.path())) index = e.path();
  }
  nlohmann::json weight_map;
  if (!index.empty()) {
    try {
      std::ifstream in(index);
      weight_map = nlohmann::json::parse(in).value("weight_map", nlohmann::json());
    } catch (const std::exception& e) {
      throw CheckpointError(fmt::format("{}: cannot read the shard index: {}", index.string(), e.what()));
    }
    if (!weight_map.is_object() || weight_map.empty())
      throw CheckpointError(fmt::format("{}: the shard index has no weight_map", index.string()));
    std::set<fs::path> named;
    for (const auto& [key, shard] : weight_map.items()) {
      if (!shard.is_string()) throw CheckpointError(fmt::format("{}: weight_map['{}'] is not a file name", index.string(), key));
      if (!fs::exists(folder / shard.get<std::string>()))
        throw CheckpointError(fmt::format("{}: shard '{}' named by the index is missing", index.string(), shard.get<std::string>()));
      named.insert(folder / shard.get<std::string>());
    }
    files.assign(named.begin(), named.end());
  }
  std::sort(files.begin(), files.end());
  if (files.empty())
    throw CheckpointError(fmt::format("{}: model folder without *.safetensors files (unisub-analyze reads "
                                      "safetensors only)", folder.string()));
  Model model = open_shards(folder.string(), files);
  for (const auto& [key, shard] : weight_map.items())
    if (!model.raw.count(key) || model.file_of(key) != (folder / shard.get<std::string>()).string())
      throw CheckpointError(fmt::format("{}: slot '{}': the index puts it in '{}', which does not hold it", index.string(),
                                        key, shard.get<std::string>()));
  return model;
}

}  // namespace

std::vector<std::string> Model::keys() const {
  std::vector<std::string> out;
  for (const auto& [name, key] : raw) out.push_back(name);
  return out;
}

const TensorInfo& Model::info(const std::string& key) const { return shards.at(shard_of.at(key)).tensors.at(raw.at(key)); }

const std::string& Model::file_of(const std::string& key) const { return shards.at(shard_of.at(key)).path; }

uint64_t Model::total_bytes() const {
  uint64_t total = 0;
  for (const auto& h : shards) total += h.file_size;
  return total;
}

torch::Tensor Model::get_unscaled(const std::string& key) const {
  auto it = raw.find(key);
  if (it == raw.end()) throw CheckpointError(fmt::format("{}: slot '{}': missing", name, key));
  auto t = read_tensor(shards.at(shard_of.at(key)), it->second);
  // caught here, naming the file, rather than as an eigensolver failure after the whole slot
  if (t.is_floating_point() && !t.isfinite().all().item<bool>())
    throw CheckpointError(fmt::format("{}: slot '{}': holds NaN or infinity; the analysis needs finite weights",
                                      file_of(key), key));
  return t;
}

torch::Tensor Model::get(const std::string& key, bool scale) const {
  auto t = get_unscaled(key);
  auto s = scalings.find(key);
  if (!scale || s == scalings.end()) return t;
  return t.to(t.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat) * s->second;
}

double Model::scaling(const std::string& b_key, bool scale) const {
  if (!scale) return 1.0;
  auto s = scalings.find(b_key);
  if (s == scalings.end()) throw CheckpointError(fmt::format("{}: slot '{}': no LoRA scaling (not a lora_B of a PEFT adapter)", name, b_key));
  return s->second;
}

std::vector<Model> discover_models(const std::vector<std::string>& paths) {
  std::vector<fs::path> files, adapters, folders;
  auto classify_folder = [&](const fs::path& p) {
    if (fs::exists(p / "adapter_config.json")) adapters.push_back(p);
    else if (is_model_folder(p)) folders.push_back(p);
    else return false;
    return true;
  };
  for (const auto& p : paths) {
    const fs::path path(p);
    if (!fs::exists(path)) throw CheckpointError(fmt::format("{}: no such file or folder", p));
    if (!fs::is_directory(path)) {
      files.push_back(path);
    } else if (!classify_folder(path)) {
      const auto before = files.size() + adapters.size() + folders.size();
      for (const auto& e : fs::directory_iterator(path)) {
        if (e.is_regular_file() && e.path().extension() == ".safetensors") files.push_back(e.path());
        else if (e.is_directory()) classify_folder(e.path());
      }
      if (files.size() + adapters.size() + folders.size() == before)
        throw CheckpointError(fmt::format("{}: no checkpoints found in this folder (looked for *.safetensors, "
                                          "PEFT adapter folders and model folders)", p));
    }
  }
  std::vector<Model> models;
  for (const auto& f : files) models.push_back(open_shards(f.string(), {f}));
  for (const auto& a : adapters) models.push_back(open_adapter(a));
  for (const auto& f : folders) models.push_back(open_model_folder(f));
  std::sort(models.begin(), models.end(), [](const Model& a, const Model& b) { return a.name < b.name; });
  return models;
}

std::map<std::string, std::pair<std::string, std::string>> lora_pairs(const std::vector<std::string>& keys) {
  static const std::regex lora_a(R"(^(.+)\.lora_(embedding_)?A(\.weight)?$)");
  std::map<std::string, std::pair<std::string, std::string>> pairs;
  for (const auto& key : keys) {
    std::smatch m;
    if (!std::regex_match(key, m, lora_a)) continue;
    const auto b_key = m[1].str() + ".lora_" + m[2].str() + "B" + m[3].str();
    if (std::find(keys.begin(), keys.end(), b_key) != keys.end()) pairs[m[1].str()] = {key, b_key};
  }
  return pairs;
}

std::pair<int64_t, int64_t> matrix_shape(const std::vector<int64_t>& s) {
  if (s.size() == 1) return {1, s[0]};
  int64_t rest = 1;
  for (size_t i = 1; i < s.size(); ++i) rest *= s[i];
  return {s[0], rest};
}

}  // namespace unisub_tool
