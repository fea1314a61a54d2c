// The safetensors rules: an 8-byte little-endian header length N, N bytes of JSON (an object of
// tensor entries {dtype, shape, data_offsets: [begin, end)} relative to the data, and an optional
// "__metadata__" of strings), then the data, which the tensors must cover exactly: sorted by
// offsets, each begins where the previous ends, and the last ends at the end of the file. So a
// length field a few bytes short (landing in the header's padding) or bytes appended to the file
// are refused instead of every tensor being read shifted.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <tuple>

#include "analysis/json.h"
#include "analysis/profile.h"
#include "analysis/reader.h"

namespace unisub::analysis {

static_assert(std::endian::native == std::endian::little, "the safetensors reader assumes a little-endian host");

ReadError::ReadError(std::string path_, std::string message_, std::string slot_)
    : std::runtime_error(slot_.empty() ? path_ + ": " + message_ : path_ + ": slot '" + slot_ + "': " + message_),
      path(std::move(path_)),
      message(std::move(message_)),
      slot(std::move(slot_)) {}

const std::map<std::string, std::pair<at::ScalarType, int>>& safetensors_dtypes() {
  static const std::map<std::string, std::pair<at::ScalarType, int>> table{
      {"F64", {at::kDouble, 8}},    {"F32", {at::kFloat, 4}},    {"F16", {at::kHalf, 2}},
      {"BF16", {at::kBFloat16, 2}}, {"I64", {at::kLong, 8}},     {"I32", {at::kInt, 4}},
      {"I16", {at::kShort, 2}},     {"I8", {at::kChar, 1}},      {"U8", {at::kByte, 1}},
      {"BOOL", {at::kBool, 1}},     {"F8_E4M3", {at::kFloat8_e4m3fn, 1}}, {"F8_E5M2", {at::kFloat8_e5m2, 1}}};
  return table;
}

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// An open file descriptor, closed on every path out.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

void open_regular(const std::string& path, Fd& f, uint64_t& size, const std::string& slot = "") {
  // O_NONBLOCK: opening a named pipe (or a device) would otherwise wait for a writer forever, before
  // the check below can refuse it; on a regular file it changes nothing
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (f.fd < 0) throw ReadError(path, std::string("cannot read: ") + std::strerror(errno), slot);
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) throw ReadError(path, std::string("cannot read: ") + std::strerror(errno), slot);
  if (!S_ISREG(st.st_mode)) throw ReadError(path, "cannot read: not a regular file", slot);
  size = static_cast<uint64_t>(st.st_size);
}

void read_exactly(const Fd& f, const std::string& path, void* dst, uint64_t n, uint64_t offset,
                  const std::string& slot = "") {
  auto* p = static_cast<char*>(dst);
  while (n > 0) {
    const ssize_t got = ::pread(f.fd, p, std::min<uint64_t>(n, 1ull << 30), static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) throw ReadError(path, std::string("cannot read: ") + std::strerror(errno), slot);
    if (got == 0) throw ReadError(path, "cannot read: the file ended early (it changed while being read)", slot);
    p += got, n -= static_cast<uint64_t>(got), offset += static_cast<uint64_t>(got);
  }
}

// A non-negative JSON integer that fits in int64.
bool as_count(const json::Value& v, int64_t& out) {
  if (!v.is_number() || !v.integer || v.int_value < 0) return false;
  out = v.int_value;
  return true;
}

std::string quoted(const json::Value* v) { return v ? v->dump() : "nothing (the field is missing)"; }

TensorInfo parse_entry(const std::string& path, const std::string& key, const json::Value& e, uint64_t data_start,
                       uint64_t data_len) {
  if (!e.is_object()) throw ReadError(path, std::string("header entry must be an object, got ") + e.type_name(), key);
  TensorInfo t;
  const json::Value* d = e.find("dtype");
  if (!d || !d->is_string() || !safetensors_dtypes().count(d->text)) {
    std::string known;
    for (const auto& [name, _] : safetensors_dtypes()) known += (known.empty() ? "" : ", ") + name;
    throw ReadError(path, "unknown dtype " + quoted(d) + " (known: " + known + ")", key);
  }
  t.dtype = d->text;
  t.scalar_type = safetensors_dtypes().at(t.dtype).first;
  const json::Value* s = e.find("shape");
  bool shape_ok = s && s->is_array();
  if (shape_ok)
    for (const auto& x : s->items) {
      int64_t v;
      if (!as_count(x, v)) {
        shape_ok = false;
        break;
      }
      t.shape.push_back(v);
    }
  if (!shape_ok) throw ReadError(path, "shape must be a list of non-negative integers, got " + quoted(s), key);
  // an empty tensor may have huge other dimensions on paper; torch cannot size them all the same
  unsigned __int128 nonzero = 1;
  for (auto v : t.shape)
    if (v > 0) nonzero = std::min<unsigned __int128>(nonzero * static_cast<uint64_t>(v), static_cast<unsigned __int128>(1) << 100);
  if (nonzero > (static_cast<unsigned __int128>(1) << 62))
    throw ReadError(path, "shape " + shape_str(t.shape) + " is too large for any tensor", key);
  const json::Value* o = e.find("data_offsets");
  int64_t b = 0, en = 0;
  if (!o || !o->is_array() || o->items.size() != 2 || !as_count(o->items[0], b) || !as_count(o->items[1], en))
    throw ReadError(path, "data_offsets must be two non-negative integers, got " + quoted(o), key);
  if (b > en)
    throw ReadError(path, "data_offsets [" + std::to_string(b) + ", " + std::to_string(en) + "] must satisfy 0 <= begin <= end", key);
  if (static_cast<uint64_t>(en) > data_len)
    throw ReadError(path, "data_offsets end " + std::to_string(en) + " lies past the end of the data (" + std::to_string(data_len) +
                              " bytes; file truncated or header lies)", key);
  // numel * itemsize in 128 bits, saturated: a lying shape must not overflow into a plausible size
  unsigned __int128 need = static_cast<unsigned>(safetensors_dtypes().at(t.dtype).second);
  const unsigned __int128 cap = static_cast<unsigned __int128>(1) << 100;
  for (auto v : t.shape) need = std::min(need * static_cast<uint64_t>(v), cap);
  if (need != static_cast<unsigned __int128>(en - b)) {
    const std::string needs = need >= cap ? "more than 2^100" : std::to_string(static_cast<uint64_t>(need));
    throw ReadError(path, "data_offsets span " + std::to_string(en - b) + " bytes but shape " + shape_str(t.shape) + " of " +
                              t.dtype + " needs " + needs, key);
  }
  t.begin = data_start + static_cast<uint64_t>(b);
  t.end = data_start + static_cast<uint64_t>(en);
  return t;
}

}  // namespace

SafetensorsHeader read_safetensors_header(const std::string& path) {
  Fd f;
  SafetensorsHeader h;
  h.path = path;
  open_regular(path, f, h.file_size);
  if (h.file_size < 8)
    throw ReadError(path, "truncated: " + std::to_string(h.file_size) + " bytes, a safetensors file has at least 8");
  uint64_t n = 0;
  read_exactly(f, path, &n, 8, 0);  // little-endian host
  if (n > std::min(h.file_size - 8, kMaxHeaderBytes))
    throw ReadError(path, "header length field says " + std::to_string(n) + " bytes but the file has " +
                              std::to_string(h.file_size - 8) + " after it (truncated or not safetensors)");
  std::string raw(n, '\0');
  read_exactly(f, path, raw.data(), n, 8);
  json::Value obj;
  try {
    obj = json::parse(raw);
  } catch (const json::ParseError& e) {
    throw ReadError(path, std::string("header is not valid UTF-8 JSON: ") + e.what() + " of the header");
  }
  if (!obj.is_object()) throw ReadError(path, std::string("header must be a JSON object, got ") + obj.type_name());
  if (raw.empty() || raw[0] != '{')
    throw ReadError(path, "header must begin with '{' (no leading whitespace), as the safetensors format requires");
  const uint64_t data_start = 8 + n, data_len = h.file_size - data_start;
  for (const auto& [key, entry] : obj.members) {
    if (key == "__metadata__") {
      if (entry.is_null()) continue;
      bool ok = entry.is_object();
      if (ok)
        for (const auto& m : entry.members) ok = ok && m.value.is_string();
      if (!ok) throw ReadError(path, "__metadata__ must map strings to strings");
      for (const auto& m : entry.members) h.metadata[m.key] = m.value.text;
      continue;
    }
    h.tensors[key] = parse_entry(path, key, entry, data_start, data_len);
  }
  // the tensors must tile the data region: sorted by (begin, end), each starts where the last ended
  std::vector<std::tuple<uint64_t, uint64_t, const std::string*>> spans;
  for (const auto& [k, t] : h.tensors) spans.emplace_back(t.begin - data_start, t.end - data_start, &k);
  std::sort(spans.begin(), spans.end(), [](const auto& a, const auto& b) {
    return std::tie(std::get<0>(a), std::get<1>(a), *std::get<2>(a)) < std::tie(std::get<0>(b), std::get<1>(b), *std::get<2>(b));
  });
  uint64_t covered = 0;
  const std::string* last = nullptr;
  for (const auto& [b, e, k] : spans) {
    if (b < covered)
      throw ReadError(path, "data_offsets [" + std::to_string(b) + ", " + std::to_string(e) + ") overlap those of '" + *last +
                                "' (which end at " + std::to_string(covered) + ")", *k);
    if (b > covered)
      throw ReadError(path, "a gap of " + std::to_string(b - covered) + " bytes lies before this tensor's data (" +
                                (last ? "after '" + *last + "'" : std::string("at the start of the data")) +
                                "): the tensors must cover the data exactly", *k);
    covered = e, last = k;
  }
  if (covered != data_len)
    throw ReadError(path, "the tensors cover " + std::to_string(covered) + " bytes of data but " + std::to_string(data_len) +
                              " follow the header: the header length field is wrong, or bytes were added to the file");
  return h;
}

at::Tensor read_safetensors_tensor(const SafetensorsHeader& h, const std::string& key) {
  auto it = h.tensors.find(key);
  if (it == h.tensors.end()) throw ReadError(h.path, "no such tensor in this file", key);
  const TensorInfo& t = it->second;
  ScopedStage stage("read", t.end - t.begin);
  auto out = at::empty(t.shape, at::TensorOptions().dtype(t.scalar_type));
  if (t.end > t.begin) {
    Fd f;
    uint64_t size = 0;
    open_regular(h.path, f, size, key);
    if (size != h.file_size)
      throw ReadError(h.path, "file changed size since its header was read (" + std::to_string(h.file_size) + " -> " +
                                  std::to_string(size) + " bytes)", key);
    read_exactly(f, h.path, out.data_ptr(), t.end - t.begin, t.begin, key);
  }
  return out;
}

}  // namespace unisub::analysis
