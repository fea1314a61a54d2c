#include "run_state.h"

#include <fmt/core.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <stdexcept>

#include "safetensors.h"

namespace fs = std::filesystem;

namespace unisub_tool {
namespace {

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(fmt::format("{}: cannot open", path.string()));
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(fmt::format("{}: not valid JSON ({})", path.string(), e.what()));
  }
}

}  // namespace

std::string safe_name(const std::string& slot) {
  return std::regex_replace(slot, std::regex("[^A-Za-z0-9._-]"), "_");
}

RunState::RunState(const std::string& out, const nlohmann::json& fingerprint, bool resume)
    : out_(out), resume_(resume) {
  const fs::path root(out);
  const auto marker = root / "state" / "unisub-analyze.json";
  if (resume) {  // checked before anything is created
    if (!fs::exists(marker))
      throw std::runtime_error(fmt::format("--resume: no saved state in '{}' (start without --resume)", (root / "state").string()));
    if (read_json(marker) != fingerprint)
      throw std::runtime_error(fmt::format("--resume: the state in '{}' is from a different run (other checkpoints, "
                                           "slots or options); start without --resume", (root / "state").string()));
  }
  std::error_code ec;
  for (const char* sub : {"subspaces", "slots", "state"}) {
    fs::create_directories(root / sub, ec);
    if (ec) throw std::runtime_error(fmt::format("output folder '{}' is not writable: {}", out, ec.message()));
  }
  if (resume) return;
  for (const auto& e : fs::directory_iterator(root / "slots"))
    if (e.path().extension() == ".json") fs::remove(e.path());
  write_text_atomically(marker.string(), fingerprint.dump(1) + "\n");
}

std::string RunState::subspace_path(const std::string& slot) const {
  return (fs::path(out_) / "subspaces" / (safe_name(slot) + ".safetensors")).string();
}

std::string RunState::entry_path(const std::string& slot) const {
  return (fs::path(out_) / "slots" / (safe_name(slot) + ".json")).string();
}

bool RunState::finished(const std::string& slot) const {
  return resume_ && fs::exists(entry_path(slot)) && fs::exists(subspace_path(slot));
}

nlohmann::json RunState::load(const std::string& slot) const { return read_json(entry_path(slot)); }

void RunState::save(const std::string& slot, const nlohmann::json& entry) const {
  write_text_atomically(entry_path(slot), entry.dump(1) + "\n");
}

}  // namespace unisub_tool
