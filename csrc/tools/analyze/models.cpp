#include "models.h"

#include <fmt/core.h>

#include <filesystem>
#include <set>

#include "analysis/discover.h"
#include "safetensors.h"

namespace fs = std::filesystem;

namespace unisub_tool {

Model open_model(const std::string& path) {
  const fs::path p(path);
  std::error_code ec;  // a path that cannot be looked at (a symlink loop) is the reader's to refuse, by name
  if (!fs::is_directory(p, ec)) {
    const auto ext = p.extension().string();
    if (ext == ".pt" || ext == ".pth" || ext == ".bin")
      throw CheckpointError(fmt::format("{}: a PyTorch pickle; unisub-analyze reads safetensors only (use `unisub "
                                        "analyze`, which reads it with torch.load, or save it as safetensors)", path));
    return unisub::analysis::open_safetensors({path}, path);
  }
  if (fs::exists(p / "adapter_config.json", ec)) return unisub::analysis::open_adapter(path);
  return unisub::analysis::open_model_folder(path);
}

std::vector<Model> discover_models(const std::vector<std::string>& paths) {
  std::vector<Model> models;
  for (const auto& source : unisub::analysis::discover_sources(paths)) models.push_back(open_model(source.path));
  return models;
}

}  // namespace unisub_tool
