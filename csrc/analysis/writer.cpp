#include "analysis/writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "analysis/json_writer.h"
#include "analysis/profile.h"
#include "analysis/reader.h"

namespace unisub::analysis {
namespace {

std::string system_reason(int err) { return std::strerror(err); }

const std::string& dtype_name(at::ScalarType t, const std::string& key) {
  for (const auto& [name, info] : safetensors_dtypes())
    if (info.first == t) return name;
  TORCH_CHECK_TYPE(false, "save_safetensors: tensor '", key, "' has dtype ", t, ", which safetensors cannot hold");
}

}  // namespace

void write_file_atomically(const std::string& path, const std::string& bytes) {
  namespace fs = std::filesystem;
  ScopedStage stage("write", bytes.size());
  const fs::path dest(path);
  const auto dir = dest.has_parent_path() ? dest.parent_path() : fs::path(".");
  static std::atomic<uint64_t> counter{0};
  const auto stamp = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  int fd = -1;
  fs::path tmp;
  for (int attempt = 0; attempt < 100 && fd < 0; ++attempt) {
    // built by appending: GCC 12's -Wrestrict misfires on "literal" + std::string&& (its bug 105651)
    std::string name(".");
    name += dest.filename().string();
    name += '.';
    name += std::to_string(::getpid());
    name += '.';
    name += std::to_string(stamp + counter++);
    name += ".partial";
    tmp = dir / name;
    // 0666 less the umask: the file gets the permissions the user's other files get
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0) throw WriteError("cannot write '" + path + "': " + system_reason(errno));
  auto fail = [&](int err) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    throw WriteError("cannot write '" + path + "': " + system_reason(err));
  };
  const char* p = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(errno);
    }
    p += n, left -= static_cast<size_t>(n);
  }
  const int closed = ::close(fd);
  fd = -1;
  if (closed != 0) fail(errno);  // NFS and full disks may report the error only here
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail(errno);
}

std::string safetensors_bytes(const std::vector<std::pair<std::string, at::Tensor>>& tensors_in,
                              const std::map<std::string, std::string>& metadata) {
  auto tensors = tensors_in;
  std::stable_sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (size_t i = 1; i < tensors.size(); ++i)
    TORCH_CHECK_VALUE(tensors[i].first != tensors[i - 1].first, "save_safetensors: tensor name '", tensors[i].first,
                      "' is given twice");
  std::string header = "{";
  std::vector<at::Tensor> data;
  uint64_t offset = 0;
  for (const auto& [key, t0] : tensors) {
    TORCH_CHECK_VALUE(key != "__metadata__", "save_safetensors: '__metadata__' cannot name a tensor");
    TORCH_CHECK_VALUE(t0.defined(), "save_safetensors: tensor '", key, "' is undefined");
    const auto t = t0.detach().to(at::kCPU).contiguous();
    const auto& name = dtype_name(t.scalar_type(), key);
    const uint64_t nbytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    if (header.size() > 1) header += ',';
    append_json_string(header, key);
    header += ":{\"dtype\":";
    append_json_string(header, name);
    header += ",\"shape\":[";
    for (int64_t d = 0; d < t.dim(); ++d) {
      if (d) header += ',';
      header += std::to_string(t.size(d));
    }
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + nbytes) + "]}";
    offset += nbytes;
    data.push_back(t);
  }
  if (!metadata.empty()) {
    if (header.size() > 1) header += ',';
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      if (!first) header += ',';
      first = false;
      append_json_string(header, k);
      header += ':';
      append_json_string(header, v);
    }
    header += '}';
  }
  header += '}';
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  const uint64_t len = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  out.reserve(8 + header.size() + offset);
  out += header;
  for (const auto& t : data) out.append(static_cast<const char*>(t.const_data_ptr()), t.numel() * t.element_size());
  return out;
}

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  write_file_atomically(path, safetensors_bytes(tensors, metadata));
}

}  // namespace unisub::analysis
