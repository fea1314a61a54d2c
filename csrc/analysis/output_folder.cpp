#include "analysis/output_folder.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "analysis/json.h"
#include "analysis/json_writer.h"
#include "analysis/reader.h"
#include "analysis/writer.h"

namespace fs = std::filesystem;

namespace unisub::analysis {
namespace {

constexpr size_t kMaxPlainStem = 120, kCutStem = 100;

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw WriteError("cannot read '" + p.string() + "': " + std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json::Value parse_file(const fs::path& p) {
  try {
    return json::parse(read_text(p));
  } catch (const json::ParseError& e) {
    TORCH_CHECK_VALUE(false, "'", p.string(), "' is not valid JSON (", e.what(), "); the output folder is damaged");
  }
}

std::string canonical(const json::Value& v) { return v.dump(std::numeric_limits<size_t>::max()); }

void make_dir(const fs::path& p) {
  std::error_code ec;
  fs::create_directories(p, ec);
  if (ec) throw WriteError("output folder '" + p.string() + "' cannot be created: " + ec.message());
}

// The partial-state file's metadata: {"slot", "kind", "next_batch", ...}.
std::map<std::string, std::string> partial_meta(const std::string& slot, const char* kind, int64_t next_batch,
                                                 Json extra = Json::object()) {
  extra["slot"] = slot;
  extra["kind"] = kind;
  extra["next_batch"] = next_batch;
  return {{"unisub", extra.dump()}, {"format", "unisub.partial/1"}};
}

}  // namespace

std::string slot_file_stem(const std::string& slot) {
  TORCH_CHECK_VALUE(!slot.empty(), "slot_file_stem: the slot name is empty");
  std::string safe;
  bool plain = slot.size() <= kMaxPlainStem && slot != "." && slot != "..";
  for (unsigned char c : slot) {
    const bool ok = std::isalnum(c) || c == '.' || c == '_' || c == '-';
    safe += ok && c < 0x80 ? static_cast<char>(c) : '_';
    plain = plain && ok && c < 0x80;
  }
  // a plain name of the hashed form ("enc_w-086936bee5253521", what "enc/w" becomes) is hashed too,
  // so that the two do not share a file
  const auto hex_digit = [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); };
  const bool looks_hashed = slot.size() > 17 && slot[slot.size() - 17] == '-' &&
                            std::all_of(slot.end() - 16, slot.end(), hex_digit);
  if (plain && !looks_hashed) return slot;
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : slot) h = (h ^ c) * 1099511628211ull;
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return safe.substr(0, kCutStem) + "-" + hex;
}

OutputFolder::OutputFolder(std::string dir, const std::string& run_json, bool resume, bool primary)
    : dir_(std::move(dir)), resume_(resume) {
  const fs::path root(dir_);
  json::Value run;
  try {
    run = json::parse(run_json);
  } catch (const json::ParseError& e) {
    TORCH_CHECK_VALUE(false, "OutputFolder: the run description is not valid JSON: ", e.what());
  }
  const auto record = root / "state" / "run.json";
  if (!primary) {
    TORCH_CHECK_VALUE(fs::exists(record), "output folder '", dir_, "' was not prepared by the first process");
    return;
  }
  if (resume) {  // checked before anything is created or removed
    TORCH_CHECK_VALUE(fs::exists(record), "--resume: no saved state in '", (root / "state").string(),
                      "' (start without --resume)");
    TORCH_CHECK_VALUE(canonical(parse_file(record)) == canonical(run), "--resume: the state in '",
                      (root / "state").string(),
                      "' is from a different run (other checkpoints, slots or options); start without --resume");
  }
  // an earlier unisub run's folder (its run description is there): what it wrote is forgotten below;
  // any other folder's files are the user's and stay
  const bool earlier_run = fs::exists(record);
  for (const char* sub : {"subspaces", "slots", "state"}) make_dir(root / sub);
  const auto lock = (root / "state" / "lock").string();
  lock_fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
  if (lock_fd_ < 0) throw WriteError("output folder '" + dir_ + "' is not writable: " + std::strerror(errno));
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    std::string holder = read_text(lock);
    ::close(lock_fd_);
    lock_fd_ = -1;
    if (err == EWOULDBLOCK)
      throw WriteError("output folder '" + dir_ + "' is in use by another unisub analysis" +
                       (holder.empty() ? std::string() : " (pid " + holder + ")") +
                       "; wait for it to finish or choose another output folder");
    throw WriteError("cannot lock output folder '" + dir_ + "': " + std::strerror(err));
  }
  const auto pid = std::to_string(::getpid());
  if (::ftruncate(lock_fd_, 0) != 0 || ::pwrite(lock_fd_, pid.data(), pid.size(), 0) < 0) {
    // the pid is only for the message above; the lock itself is held
  }
  if (resume) return;
  // an earlier run's results must not pass for this one's: its entries, subspace files, plots and
  // report (this run writes its own report at the end)
  std::error_code ec;
  for (const auto& [sub, extension] : {std::pair{"slots", ".json"}, std::pair{"subspaces", ".safetensors"},
                                       std::pair{"plots", ".png"}}) {
    if (!earlier_run || !fs::is_directory(root / sub, ec)) continue;
    for (const auto& e : fs::directory_iterator(root / sub, ec))
      if (e.path().extension() == extension) fs::remove(e.path(), ec);
  }
  if (earlier_run) fs::remove(root / "report.json", ec);
  for (const auto& e : fs::directory_iterator(root / "state"))
    if (e.path().filename().string().rfind("partial.", 0) == 0) fs::remove(e.path(), ec);
  write_file_atomically(record.string(), run_json + "\n");
}

OutputFolder::~OutputFolder() { close(); }

void OutputFolder::close() {
  if (lock_fd_ >= 0) {
    ::flock(lock_fd_, LOCK_UN);
    ::close(lock_fd_);
    lock_fd_ = -1;
  }
}

std::string OutputFolder::subspace_path(const std::string& slot) const {
  return (fs::path(dir_) / "subspaces" / (slot_file_stem(slot) + ".safetensors")).string();
}

std::string OutputFolder::entry_path(const std::string& slot) const {
  return (fs::path(dir_) / "slots" / (slot_file_stem(slot) + ".json")).string();
}

std::string OutputFolder::partial_path(int64_t rank_id) const {
  return (fs::path(dir_) / "state" / ("partial.rank" + std::to_string(rank_id) + ".safetensors")).string();
}

bool OutputFolder::finished(const std::string& slot) const {
  return resume_ && fs::exists(entry_path(slot)) && fs::exists(subspace_path(slot));
}

std::string OutputFolder::load_entry(const std::string& slot) const {
  auto text = read_text(entry_path(slot));
  const auto v = parse_file(entry_path(slot));
  TORCH_CHECK_VALUE(v.is_object(), "'", entry_path(slot), "' is not a report entry; the output folder is damaged");
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

void OutputFolder::save_slot(const std::string& slot, const SlotResult& result) const {
  save_safetensors(subspace_path(slot), result.tensors, {{"unisub", result.meta}});
  write_file_atomically(entry_path(slot), result.entry + "\n");
}

void OutputFolder::write_report(const std::string& json_text) const {
  write_file_atomically((fs::path(dir_) / "report.json").string(), json_text);
}

void OutputFolder::save_partial(const std::string& slot, int64_t next_batch, const ModeAccumulator& even,
                                const ModeAccumulator& odd, int64_t rank_id) const {
  // the accumulators as accumulated (shift, shift sum, shifted Grams): a resumed run continues bit
  // for bit as one that never stopped
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  Json extra = Json::object();
  extra["counts"] = Json(std::vector<int64_t>{even.count(), odd.count()});
  extra["float32_models"] = Json(std::vector<int64_t>{even.float32_models(), odd.float32_models()});
  extra["float32_energy"] = Json(std::vector<double>{even.float32_energy(), odd.float32_energy()});
  extra["modes"] = Json(even.modes());
  int h = 0;
  for (const auto* acc : {&even, &odd}) {
    const auto prefix = "half" + std::to_string(h++) + ".";
    const auto raw = acc->raw_state();
    tensors.emplace_back(prefix + "shift", raw.shift);
    tensors.emplace_back(prefix + "shift_sum", raw.shift_sum);
    for (size_t k = 0; k < acc->modes().size(); ++k) tensors.emplace_back(prefix + "gram." + acc->modes()[k], raw.grams[k]);
  }
  save_safetensors(partial_path(rank_id), tensors, partial_meta(slot, "modes", next_batch, extra));
}

void OutputFolder::save_partial(const std::string& slot, int64_t next_batch, const DeltaAccumulator& acc,
                                int64_t rank_id) const {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  const auto B = acc.B(), A = acc.A();
  for (int64_t i = 0; i < acc.count(); ++i) {
    tensors.emplace_back("B." + std::to_string(i), B[i]);
    tensors.emplace_back("A." + std::to_string(i), A[i]);
  }
  tensors.emplace_back("scalings", at::tensor(acc.scalings(), at::TensorOptions().dtype(at::kDouble)));
  tensors.emplace_back("ids", at::tensor(acc.ids(), at::TensorOptions().dtype(at::kLong)));
  save_safetensors(partial_path(rank_id), tensors, partial_meta(slot, "delta", next_batch));
}

namespace {

// The partial state of `slot` and `kind` in `path`, or nullopt (none, or another slot's).
std::optional<std::pair<SafetensorsHeader, json::Value>> open_partial(const std::string& path, const std::string& slot,
                                                                       const char* kind) {
  if (!fs::exists(path)) return std::nullopt;
  auto h = read_safetensors_header(path);
  const auto it = h.metadata.find("unisub");
  TORCH_CHECK_VALUE(it != h.metadata.end(), "'", path, "' is not a partial state; the output folder is damaged");
  auto meta = json::parse(it->second);
  const auto* s = meta.find("slot");
  const auto* k = meta.find("kind");
  if (!s || !s->is_string() || s->text != slot || !k || !k->is_string() || k->text != kind) return std::nullopt;
  return std::make_pair(std::move(h), std::move(meta));
}

int64_t next_batch_of(const json::Value& meta, const std::string& path) {
  const auto* b = meta.find("next_batch");
  TORCH_CHECK_VALUE(b && b->integer && b->int_value >= 0, "'", path, "': bad next_batch; the output folder is damaged");
  return b->int_value;
}

}  // namespace

int64_t OutputFolder::load_partial(const std::string& slot, ModeAccumulator& even, ModeAccumulator& odd,
                                   int64_t rank_id) const {
  const auto path = partial_path(rank_id);
  const auto found = open_partial(path, slot, "modes");
  if (!found) return 0;
  const auto& [h, meta] = *found;
  const auto* counts = meta.find("counts");
  TORCH_CHECK_VALUE(counts && counts->is_array() && counts->items.size() == 2, "'", path, "': bad counts");
  const auto* f32 = meta.find("float32_models");
  const auto* energy = meta.find("float32_energy");
  TORCH_CHECK_VALUE(f32 && f32->is_array() && f32->items.size() == 2 && energy && energy->is_array() &&
                        energy->items.size() == 2 && h.tensors.count("half0.shift_sum"),
                    "'", path, "': not a partial state of this unisub release (no shifted state); "
                    "run again without --resume");
  int h_index = 0;
  for (auto* acc : {&even, &odd}) {
    const auto prefix = "half" + std::to_string(h_index) + ".";
    ModeAccumulator::RawState raw;
    raw.count = counts->items[h_index].int_value;
    raw.float32_models = f32->items[h_index].int_value;
    raw.float32_energy = energy->items[h_index].number;
    raw.shift = read_safetensors_tensor(h, prefix + "shift");
    raw.shift_sum = read_safetensors_tensor(h, prefix + "shift_sum");
    for (const auto& mo : acc->modes()) raw.grams.push_back(read_safetensors_tensor(h, prefix + "gram." + mo));
    acc->load_raw(raw);
    ++h_index;
  }
  return next_batch_of(meta, path);
}

int64_t OutputFolder::load_partial(const std::string& slot, DeltaAccumulator& acc, int64_t rank_id) const {
  const auto path = partial_path(rank_id);
  const auto found = open_partial(path, slot, "delta");
  if (!found) return 0;
  const auto& [h, meta] = *found;
  const auto scalings = read_safetensors_tensor(h, "scalings").contiguous();
  const auto ids = read_safetensors_tensor(h, "ids").contiguous();
  TORCH_CHECK_VALUE(scalings.dim() == 1 && ids.dim() == 1 && scalings.numel() == ids.numel(), "'", path,
                    "': bad scalings or ids");
  DeltaAccumulator fresh(acc.rows(), acc.cols(), acc.center(), acc.device());
  fresh.set_gram_precision(acc.gram_precision());  // the caller's rule, which a fresh one lacks
  fresh.reserve(ids.numel());
  for (int64_t i = 0; i < ids.numel(); ++i)
    fresh.add(read_safetensors_tensor(h, "B." + std::to_string(i)), read_safetensors_tensor(h, "A." + std::to_string(i)),
              scalings.data_ptr<double>()[i], ids.data_ptr<int64_t>()[i]);
  acc = std::move(fresh);
  return next_batch_of(meta, path);
}

void OutputFolder::drop_partial(int64_t rank_id) const {
  std::error_code ec;
  fs::remove(partial_path(rank_id), ec);
}

}  // namespace unisub::analysis
