#include "models.h"

#include <fmt/core.h>

#include <filesystem>
#include <set>

#include "analysis/discover.h"
#include "safetensors.h"

namespace fs = std::filesystem;

namespace unisub_tool {
namespace {

torch::Tensor finite(const Model& model, const std::string& key, torch::Tensor t) {
  if (t.is_floating_point() && !t.isfinite().all().item<bool>())
    throw CheckpointError(fmt::format("{}: slot '{}': holds NaN or infinity; the analysis needs finite weights",
                                      model.file_of(key), key));
  return t;
}

}  // namespace

torch::Tensor read_finite(const Model& model, const std::string& key, bool scale) {
  return finite(model, key, model.get(key, scale));
}

torch::Tensor read_finite_unscaled(const Model& model, const std::string& key) {
  return finite(model, key, model.get_unscaled(key));
}

Model open_model(const std::string& path) {
  const fs::path p(path);
  if (!fs::is_directory(p)) {
    const auto ext = p.extension().string();
    if (ext == ".pt" || ext == ".pth" || ext == ".bin")
      throw CheckpointError(fmt::format("{}: a PyTorch pickle; unisub-analyze reads safetensors only (use `unisub "
                                        "analyze`, which reads it with torch.load, or save it as safetensors)", path));
    return unisub::analysis::open_safetensors({path}, path);
  }
  if (fs::exists(p / "adapter_config.json")) return unisub::analysis::open_adapter(path);
  return unisub::analysis::open_model_folder(path);
}

std::vector<Model> discover_models(const std::vector<std::string>& paths) {
  std::vector<Model> models;
  for (const auto& source : unisub::analysis::discover_sources(paths)) models.push_back(open_model(source.path));
  return models;
}

// unisub.io.lora_pairs's rule, "^(.+)\.lora_(embedding_)?A(\.weight)?$", without std::regex (which
// recurses once per character and overflows the stack on very long names).
std::map<std::string, std::pair<std::string, std::string>> lora_pairs(const std::vector<std::string>& keys) {
  std::map<std::string, std::pair<std::string, std::string>> pairs;
  const std::set<std::string> all(keys.begin(), keys.end());
  for (const auto& key : keys) {
    for (const std::string suffix : {"", ".weight"}) {
      bool done = false;
      for (const std::string tag : {".lora_A", ".lora_embedding_A"}) {
        const auto tail = tag + suffix;
        if (key.size() <= tail.size() || key.compare(key.size() - tail.size(), tail.size(), tail) != 0) continue;
        const auto module = key.substr(0, key.size() - tail.size());
        const auto b_key = module + tag.substr(0, tag.size() - 1) + "B" + suffix;
        if (all.count(b_key)) pairs[module] = {key, b_key};
        done = true;
      }
      if (done) break;
    }
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
