#include "analysis/discover.h"

#include <algorithm>
#include <filesystem>
#include <map>

#include "analysis/reader.h"

namespace fs = std::filesystem;

namespace unisub::analysis {
namespace {

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

bool is_weight_file(const fs::path& p) {
  const auto ext = p.extension().string();
  return ext == ".safetensors" || ext == ".pt" || ext == ".pth" || ext == ".bin";
}

bool is_model_folder(const fs::path& p) {
  for (const char* marker : {"adapter_config.json", "config.json", "model.safetensors", "pytorch_model.bin"})
    if (fs::exists(p / marker)) return true;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(p, ec))
    if (ends_with(e.path().filename().string(), ".safetensors.index.json")) return true;
  return false;
}

Source file_source(const fs::path& p) {
  const auto ext = p.extension().string();
  if (ext == ".safetensors") return {p.string(), "safetensors"};
  if (ext == ".pt" || ext == ".pth" || ext == ".bin") return {p.string(), "torch"};
  throw ReadError(p.string(), "unknown checkpoint type (expected a folder or a .safetensors, .pt, .pth or .bin file)");
}

void visit(const fs::path& p, bool top, std::vector<Source>& found) {
  std::error_code ec;
  if (fs::is_directory(p, ec)) {
    if (is_model_folder(p)) {
      found.push_back({p.string(), fs::exists(p / "adapter_config.json") ? "adapter" : "folder"});
      return;
    }
    std::vector<fs::path> children;
    for (const auto& e : fs::directory_iterator(p, ec)) children.push_back(e.path());
    if (ec) throw ReadError(p.string(), "cannot list this folder: " + ec.message());
    std::sort(children.begin(), children.end());
    const auto before = found.size();
    for (const auto& c : children) {
      if (fs::is_directory(c, ec)) {
        visit(c, false, found);
      } else if (is_weight_file(c)) {
        found.push_back(file_source(c));
      }
    }
    if (top && found.size() == before)
      throw ReadError(p.string(), "no checkpoints found in this folder (looked for *.safetensors, *.pt, *.pth, *.bin "
                                  "and model or adapter folders)");
  } else if (fs::exists(p, ec)) {
    found.push_back(file_source(p));
  } else {
    throw ReadError(p.string(), "no such file or folder");
  }
}

}  // namespace

std::vector<Source> discover_sources(const std::vector<std::string>& paths) {
  if (paths.empty()) throw ReadError("(none)", "no checkpoints given");
  std::vector<Source> found;
  for (const auto& p : paths) visit(fs::path(p), true, found);
  std::sort(found.begin(), found.end(), [](const Source& a, const Source& b) { return a.path < b.path; });
  std::map<std::string, std::string> seen;  // canonical path -> the path as found
  for (const auto& s : found) {
    std::error_code ec;
    auto key = fs::weakly_canonical(s.path, ec).string();
    if (ec) key = s.path;
    const auto [it, fresh] = seen.emplace(key, s.path);
    if (!fresh) throw ReadError(s.path, "this model is given twice (as '" + it->second + "' too)");
  }
  return found;
}

}  // namespace unisub::analysis
