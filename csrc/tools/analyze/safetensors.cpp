#include "safetensors.h"

#include <fcntl.h>
#include <fmt/core.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <tuple>

namespace unisub_tool {
namespace {

using nlohmann::json;

const std::map<std::string, std::pair<at::ScalarType, int>>& dtypes() {
  static const std::map<std::string, std::pair<at::ScalarType, int>> table{
      {"F64", {at::kDouble, 8}},      {"F32", {at::kFloat, 4}},          {"F16", {at::kHalf, 2}},
      {"BF16", {at::kBFloat16, 2}},   {"I64", {at::kLong, 8}},           {"I32", {at::kInt, 4}},
      {"I16", {at::kShort, 2}},       {"I8", {at::kChar, 1}},            {"U8", {at::kByte, 1}},
      {"BOOL", {at::kBool, 1}},       {"F8_E4M3", {at::kFloat8_e4m3fn, 1}}, {"F8_E5M2", {at::kFloat8_e5m2, 1}}};
  return table;
}

constexpr uint64_t kMaxHeader = 100ull << 20;

[[noreturn]] void fail(const std::string& path, const std::string& slot, const std::string& msg) {
  if (slot.empty()) throw CheckpointError(fmt::format("{}: {}", path, msg));
  throw CheckpointError(fmt::format("{}: slot '{}': {}", path, slot, msg));
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// A JSON integer that fits in int64 (Python's `type(x) is int` after its own range check).
bool as_int(const json& j, int64_t& out) {
  if (j.is_number_unsigned()) {
    if (j.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) return false;
    out = static_cast<int64_t>(j.get<uint64_t>());
    return true;
  }
  if (j.is_number_integer()) {
    out = j.get<int64_t>();
    return true;
  }
  return false;
}

TensorInfo parse_entry(const std::string& path, const std::string& key, const json& e, uint64_t data_start,
                       uint64_t data_len) {
  if (!e.is_object()) fail(path, key, fmt::format("header entry must be an object, got {}", e.type_name()));
  TensorInfo t;
  auto d = e.find("dtype");
  if (d == e.end() || !d->is_string() || !dtypes().count(d->get<std::string>()))
    fail(path, key, fmt::format("unknown dtype {}", d == e.end() ? "None" : d->dump()));
  t.dtype = d->get<std::string>();
  auto s = e.find("shape");
  bool shape_ok = s != e.end() && s->is_array();
  if (shape_ok)
    for (const auto& x : *s) {
      int64_t v;
      if (!as_int(x, v) || v < 0) { shape_ok = false; break; }
      t.shape.push_back(v);
    }
  if (!shape_ok) fail(path, key, fmt::format("shape must be a list of non-negative integers, got {}", s == e.end() ? "None" : s->dump()));
  auto o = e.find("data_offsets");
  int64_t b = 0, en = 0;
  if (o == e.end() || !o->is_array() || o->size() != 2 || !as_int((*o)[0], b) || !as_int((*o)[1], en))
    fail(path, key, fmt::format("data_offsets must be two integers, got {}", o == e.end() ? "None" : o->dump()));
  if (b < 0 || b > en) fail(path, key, fmt::format("data_offsets [{}, {}] must satisfy 0 <= begin <= end", b, en));
  if (static_cast<uint64_t>(en) > data_len)
    fail(path, key, fmt::format("data_offsets end {} lies past the end of the data ({} bytes; file truncated or header lies)", en, data_len));
  // numel * itemsize in 128 bits: a lying shape must not overflow into a plausible size
  unsigned __int128 need = dtypes().at(t.dtype).second;
  for (auto v : t.shape) {
    need *= static_cast<uint64_t>(v);
    if (need > (static_cast<unsigned __int128>(1) << 100)) need = static_cast<unsigned __int128>(1) << 100;
  }
  if (need != static_cast<unsigned __int128>(en - b))
    fail(path, key, fmt::format("data_offsets span {} bytes but shape {} of {} needs {}", en - b, shape_str(t.shape),
                                t.dtype, static_cast<unsigned long long>(std::min<unsigned __int128>(need, UINT64_MAX))));
  t.begin = data_start + b;
  t.end = data_start + en;
  return t;
}

}  // namespace

bool analysable(const std::string& dtype) {
  return dtype == "F64" || dtype == "F32" || dtype == "F16" || dtype == "BF16";
}

Header read_header(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) fail(path, "", fmt::format("cannot read: {}", std::strerror(errno)));
  Header h;
  h.path = path;
  h.file_size = static_cast<uint64_t>(in.tellg());
  if (h.file_size < 8) fail(path, "", fmt::format("truncated: {} bytes, a safetensors file has at least 8", h.file_size));
  in.seekg(0);
  unsigned char len_bytes[8];
  in.read(reinterpret_cast<char*>(len_bytes), 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
  if (n > std::min(h.file_size - 8, kMaxHeader))
    fail(path, "", fmt::format("header length field says {} bytes but the file has {} after it (truncated or not safetensors)", n, h.file_size - 8));
  std::string raw(n, '\0');
  in.read(raw.data(), static_cast<std::streamsize>(n));
  json obj;
  try {
    obj = json::parse(raw);
  } catch (const json::exception& e) {
    fail(path, "", fmt::format("header is not valid UTF-8 JSON: {}", e.what()));
  }
  if (!obj.is_object()) fail(path, "", fmt::format("header must be a JSON object, got {}", obj.type_name()));
  const uint64_t data_start = 8 + n, data_len = h.file_size - data_start;
  for (const auto& [key, entry] : obj.items()) {
    if (key == "__metadata__") {
      if (entry.is_null()) continue;
      bool ok = entry.is_object();
      if (ok) for (const auto& v : entry) ok = ok && v.is_string();
      if (!ok) fail(path, "", "__metadata__ must map strings to strings");
      continue;
    }
    h.tensors[key] = parse_entry(path, key, entry, data_start, data_len);
  }
  std::vector<std::tuple<uint64_t, uint64_t, std::string>> spans;
  for (const auto& [k, t] : h.tensors)
    if (t.end > t.begin) spans.emplace_back(t.begin, t.end, k);
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i)
    if (std::get<0>(spans[i]) < std::get<1>(spans[i - 1]))
      fail(path, std::get<2>(spans[i]), fmt::format("data_offsets overlap those of '{}'", std::get<2>(spans[i - 1])));
  return h;
}

torch::Tensor read_tensor(const Header& h, const std::string& key) {
  auto it = h.tensors.find(key);
  if (it == h.tensors.end()) fail(h.path, key, "no such tensor in this file");
  const TensorInfo& t = it->second;
  auto bytes = torch::empty({static_cast<int64_t>(t.end - t.begin)}, torch::kUInt8);
  if (t.end > t.begin) {
    int fd = ::open(h.path.c_str(), O_RDONLY);
    if (fd < 0) fail(h.path, key, fmt::format("cannot read: {}", std::strerror(errno)));
    struct stat st {};
    ::fstat(fd, &st);
    if (static_cast<uint64_t>(st.st_size) != h.file_size) {
      ::close(fd);
      fail(h.path, key, fmt::format("file changed size since its header was read ({} -> {} bytes)", h.file_size, st.st_size));
    }
    void* map = ::mmap(nullptr, h.file_size, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (map == MAP_FAILED) fail(h.path, key, fmt::format("cannot map: {}", std::strerror(errno)));
    std::memcpy(bytes.data_ptr(), static_cast<const char*>(map) + t.begin, t.end - t.begin);
    ::munmap(map, h.file_size);
  }
  return bytes.view(dtypes().at(t.dtype).first).reshape(t.shape);
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
