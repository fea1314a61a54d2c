#include "analysis/discover.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

#include "analysis/reader.h"

namespace fs = std::filesystem;

namespace unisub::analysis {
namespace {

// The run's description (state/run.json) and report.json record every model's path as JSON text,
// which must be UTF-8: a name that is not is refused where it is found, shown with its stray bytes
// as \xNN (as Python's backslashreplace shows them).
constexpr const char* kNotUtf8 = "file names must be valid UTF-8 (the run's description and report.json record them); rename it";

bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    uint32_t cp = len == 1 ? c : c & (0x7F >> len);
    for (size_t k = 1; k < len; ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    // overlong forms, UTF-16 surrogates and code points beyond U+10FFFF are not UTF-8
    const uint32_t least[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < least[len] || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return false;
    i += len;
  }
  return true;
}

std::string shown(const std::string& path) {
  std::string out;
  for (size_t i = 0; i < path.size();) {
    size_t len = 1;
    while (len <= 4 && i + len <= path.size() && !valid_utf8(path.substr(i, len))) ++len;
    if (len <= 4 && i + len <= path.size()) {
      out += path.substr(i, len);
      i += len;
    } else {
      char hex[5];
      std::snprintf(hex, sizeof hex, "\\x%02x", static_cast<unsigned char>(path[i]));
      out += hex;
      ++i;
    }
  }
  return out;
}

void check_utf8(const fs::path& p) {
  if (!valid_utf8(p.string())) throw ReadError(shown(p.string()), kNotUtf8);
}

// What makes two paths one model: the file system's device and inode (stat follows symlinks), so
// that a symlink, a hard link or a bind mount of one file is found as the same model; the
// canonical path where stat fails.
std::string identity(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0)
    return std::to_string(static_cast<uint64_t>(st.st_dev)) + ":" + std::to_string(static_cast<uint64_t>(st.st_ino));
  std::error_code ec;
  const auto canonical = fs::weakly_canonical(path, ec).string();
  return ec ? path : canonical;
}

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

// A symlinked folder is followed (a zoo of links to model folders is common) unless it leads back to
// a folder being searched or already searched: a link to an ancestor (/proc/self/root is "/") would
// search the whole file system, a cycle forever.
bool leads_back(const fs::path& link, const fs::path& parent, const std::set<std::string>& searched) {
  std::error_code ec;
  if (!fs::is_symlink(link, ec)) return false;
  const auto target = fs::canonical(link, ec);
  if (ec) return true;
  if (searched.count(identity(target.string()))) return true;
  const auto here = fs::canonical(parent, ec).string(), there = target.string();
  return !ec && (there == "/" || here == there || here.rfind(there + "/", 0) == 0);
}

void visit(const fs::path& p, bool top, std::vector<Source>& found, std::set<std::string>& searched) {
  if (top) check_utf8(p);  // below, only what is taken as a model is checked: other names do not matter
  std::error_code ec;
  if (fs::is_directory(p, ec)) {
    if (is_model_folder(p)) {
      check_utf8(p);
      found.push_back({p.string(), fs::exists(p / "adapter_config.json") ? "adapter" : "folder"});
      return;
    }
    searched.insert(identity(p.string()));
    std::vector<fs::path> children;
    for (const auto& e : fs::directory_iterator(p, ec)) children.push_back(e.path());
    if (ec) throw ReadError(p.string(), "cannot list this folder: " + ec.message());
    std::sort(children.begin(), children.end());
    const auto before = found.size();
    for (const auto& c : children) {
      if (fs::is_directory(c, ec)) {
        if (!leads_back(c, p, searched)) visit(c, false, found, searched);
      } else if (is_weight_file(c)) {
        check_utf8(c);
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
  std::set<std::string> searched;  // the folders of models searched so far (identity())
  for (const auto& p : paths) visit(fs::path(p), true, found, searched);
  std::sort(found.begin(), found.end(), [](const Source& a, const Source& b) { return a.path < b.path; });
  std::map<std::string, std::string> seen;  // the file's identity -> the path as found
  for (const auto& s : found) {
    const auto [it, fresh] = seen.emplace(identity(s.path), s.path);
    if (!fresh) throw ReadError(s.path, "this model is given twice (as '" + it->second + "' too)");
  }
  return found;
}

}  // namespace unisub::analysis
