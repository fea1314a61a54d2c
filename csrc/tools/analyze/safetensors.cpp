#include "safetensors.h"

#include <fmt/core.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

namespace unisub_tool {

using nlohmann::json;

bool analysable(const std::string& dtype) {
  return dtype == "F64" || dtype == "F32" || dtype == "F16" || dtype == "BF16";
}

void write_text_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".partial";
  {
    std::ofstream out(tmp, std::ios::binary);
    if (!out) throw std::runtime_error(fmt::format("cannot open '{}' for writing: {}", tmp, std::strerror(errno)));
    out << text;
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      throw std::runtime_error(fmt::format("short write to '{}'", tmp));
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error(fmt::format("cannot rename '{}' to '{}'", tmp, path));
  }
}

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::string& metadata_json) {
  json header = json::object();
  std::string data;
  for (const auto& [key, t0] : tensors) {
    auto t = t0.contiguous().to(torch::kDouble);
    const auto nbytes = static_cast<size_t>(t.numel()) * 8;
    std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
    header[key] = {{"dtype", "F64"}, {"shape", shape}, {"data_offsets", {data.size(), data.size() + nbytes}}};
    data.append(static_cast<const char*>(t.data_ptr()), nbytes);
  }
  header["__metadata__"] = {{"unisub", metadata_json}};
  std::string raw = header.dump();
  raw.append((8 - raw.size() % 8) % 8, ' ');
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((raw.size() >> (8 * i)) & 0xff);
  write_text_atomically(path, file + raw + data);
}

}  // namespace unisub_tool
