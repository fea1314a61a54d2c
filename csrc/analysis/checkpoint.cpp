// Models as the analysis sees them: one safetensors file, the shards of a Hugging Face model
// folder (by its *.safetensors.index.json), or a PEFT adapter (names without PEFT's prefix,
// lora_B scaled).
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "analysis/json.h"
#include "analysis/reader.h"

namespace fs = std::filesystem;

namespace unisub::analysis {
namespace {

constexpr std::string_view kPeftPrefix = "base_model.model.";

// One model of one or more safetensors files; a tensor may live in one of them only.
Checkpoint open_shards(const std::string& name, const std::vector<std::string>& files, bool adapter_names) {
  Checkpoint ck;
  ck.name = name;
  for (const auto& f : files) {
    ck.shards.push_back(read_safetensors_header(f));
    for (const auto& [key, info] : ck.shards.back().tensors) {
      const auto as = adapter_names ? adapter_tensor_name(key) : key;
      if (ck.raw.count(as))
        throw ReadError(f, "also in '" + ck.file_of(as) + "'" + (as == key ? "" : " (as '" + ck.raw.at(as) + "')") +
                               ": a tensor must be in one file only", as);
      ck.raw[as] = key;
      ck.shard_of[as] = ck.shards.size() - 1;
    }
  }
  return ck;
}

bool is_shard_index(const fs::path& p) {
  const auto n = p.filename().string();
  constexpr std::string_view tail = ".safetensors.index.json";
  return n.size() > tail.size() && n.compare(n.size() - tail.size(), tail.size(), tail) == 0;
}

std::string read_text(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ReadError(path, "cannot read " + what + ": " + std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw ReadError(path, "cannot read " + what);
  return ss.str();
}

// A shard name from an index: a relative path inside the folder (no "..", not absolute).
bool confined(const std::string& name) {
  if (name.empty() || name.find('\0') != std::string::npos) return false;
  const fs::path p(name);
  if (p.is_absolute() || p.has_root_name() || p.has_root_directory()) return false;
  for (const auto& part : p)
    if (part == "..") return false;
  return !fs::path(p).lexically_normal().empty() && p.lexically_normal() != ".";
}

}  // namespace

std::string adapter_tensor_name(const std::string& key) {
  return key.rfind(kPeftPrefix, 0) == 0 ? key.substr(kPeftPrefix.size()) : key;
}

std::vector<std::string> Checkpoint::keys() const {
  std::vector<std::string> out;
  out.reserve(raw.size());
  for (const auto& [name, _] : raw) out.push_back(name);
  return out;
}

const TensorInfo& Checkpoint::info(const std::string& key) const {
  auto it = shard_of.find(key);
  if (it == shard_of.end()) throw ReadError(name, "no such tensor in this checkpoint", key);
  return shards[it->second].tensors.at(raw.at(key));
}

const std::string& Checkpoint::file_of(const std::string& key) const {
  auto it = shard_of.find(key);
  return it == shard_of.end() ? name : shards[it->second].path;
}

uint64_t Checkpoint::total_bytes() const {
  uint64_t total = 0;
  for (const auto& h : shards) total += h.file_size;
  return total;
}

at::Tensor Checkpoint::get_unscaled(const std::string& key) const {
  auto it = shard_of.find(key);
  if (it == shard_of.end()) throw ReadError(name, "no such tensor in this checkpoint", key);
  return read_safetensors_tensor(shards[it->second], raw.at(key));
}

at::Tensor Checkpoint::get(const std::string& key, bool scale) const {
  auto t = get_unscaled(key);
  auto s = scalings.find(key);
  if (!scale || s == scalings.end()) return t;
  // the product in float64, rounded once to float32 (float64 factors stay float64)
  auto scaled = t.to(at::kDouble) * s->second;
  return t.scalar_type() == at::kDouble ? scaled : scaled.to(at::kFloat);
}

double Checkpoint::scaling(const std::string& b_key, bool scale) const {
  if (!scale) return 1.0;
  auto s = scalings.find(b_key);
  if (s == scalings.end()) throw ReadError(name, "no LoRA scaling (not a lora_B of a PEFT adapter)", b_key);
  return s->second;
}

Checkpoint open_safetensors(const std::vector<std::string>& files, const std::string& name) {
  if (files.empty()) throw ReadError(name, "no safetensors files given");
  return open_shards(name.empty() ? files[0] : name, files, false);
}

Checkpoint open_model_folder(const std::string& folder_name) {
  const fs::path folder(folder_name);
  std::vector<fs::path> all, indexes;
  try {
    for (const auto& e : fs::directory_iterator(folder)) {
      if (is_shard_index(e.path())) indexes.push_back(e.path());
      else if (e.path().extension() == ".safetensors" && e.is_regular_file()) all.push_back(e.path());
    }
  } catch (const fs::filesystem_error& e) {
    throw ReadError(folder_name, std::string("cannot list the folder: ") + e.code().message());
  }
  std::sort(indexes.begin(), indexes.end());
  if (indexes.size() > 1)
    throw ReadError(folder_name, "holds several shard indexes ('" + indexes[0].filename().string() + "', '" +
                                     indexes[1].filename().string() + "'): which one describes the model is unclear");
  std::vector<std::string> files;
  std::vector<std::pair<std::string, std::string>> placed;  // tensor -> shard name, as the index says
  if (indexes.empty()) {
    std::sort(all.begin(), all.end());
    for (const auto& p : all) files.push_back(p.string());
    if (files.empty()) throw ReadError(folder_name, "folder holds no *.safetensors files");
  } else {
    const auto index = indexes[0].string();
    json::Value doc;
    try {
      doc = json::parse(read_text(index, "the shard index"));
    } catch (const json::ParseError& e) {
      throw ReadError(index, std::string("cannot read the shard index: invalid JSON: ") + e.what());
    }
    const json::Value* map = doc.find("weight_map");
    if (!map || !map->is_object() || map->members.empty())
      throw ReadError(index, "the shard index needs a non-empty 'weight_map' of tensor name -> shard file");
    std::set<std::string> names;
    for (const auto& m : map->members) {
      if (!m.value.is_string())
        throw ReadError(index, "weight_map['" + m.key + "'] must be a shard file name, got " + m.value.dump());
      if (!confined(m.value.text))
        throw ReadError(index, "weight_map['" + m.key + "'] names '" + m.value.text +
                                   "', which is not a file inside the model folder");
      names.insert(m.value.text);
      placed.emplace_back(m.key, m.value.text);
    }
    std::vector<std::string> missing;
    for (const auto& n : names) {
      std::error_code ec;
      if (!fs::is_regular_file(folder / n, ec)) missing.push_back(n);
      files.push_back((folder / n).string());
    }
    if (!missing.empty()) {
      std::string list;
      for (size_t i = 0; i < std::min<size_t>(3, missing.size()); ++i) list += (i ? ", " : "") + missing[i];
      throw ReadError(index, "names shard(s) that are not in the folder: " + list);
    }
  }
  Checkpoint ck = open_shards(folder_name, files, false);
  for (const auto& [key, shard] : placed) {
    const auto expected = (folder / shard).string();
    if (!ck.raw.count(key)) throw ReadError(expected, "the shard index places this tensor here, but the file does not hold it", key);
    if (ck.file_of(key) != expected)
      throw ReadError(indexes[0].string(), "places this tensor in '" + shard + "', but it is in '" + ck.file_of(key) + "'", key);
  }
  return ck;
}

Checkpoint open_adapter(const std::string& folder_name) {
  const fs::path folder(folder_name);
  AdapterConfig cfg = AdapterConfig::read(folder_name);
  const auto st = folder / "adapter_model.safetensors";
  std::error_code ec;
  if (!fs::is_regular_file(st, ec)) {
    if (fs::exists(folder / "adapter_model.bin", ec))
      throw ReadError(folder_name, "PEFT folder holds adapter_model.bin, not adapter_model.safetensors; this reader takes "
                                   "safetensors (the Python front end reads .bin with torch.load)");
    throw ReadError(folder_name, "PEFT folder has adapter_config.json but neither adapter_model.safetensors nor adapter_model.bin");
  }
  Checkpoint ck = open_shards(folder_name, {st.string()}, true);
  ck.adapter = true;
  for (const auto& [name, _] : ck.raw) {
    const auto s = cfg.check_factor(name, ck.info(name).shape, ck.file_of(name));
    if (s) ck.scalings[name] = *s;
  }
  ck.config = std::move(cfg);
  return ck;
}

}  // namespace unisub::analysis
