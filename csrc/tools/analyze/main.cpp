// unisub-analyze: per-slot universal subspaces of many safetensors checkpoints, without Python.
//
//   unisub-analyze PATH... --out DIR [--slots PATTERN...] [--modes out in delta] [--energy 0.9]
//                  [--rank R] [--batch-size 8] [--no-lora-scaling] [--eigen-weights K] [--include-1d]
//                  [--max-gram-bytes BYTES] [--gram-precision auto|float64|float32] [--resume] [--profile]
//   unisub-analyze --check-headers FILE...     (validate headers only: one line per file)
//   unisub-analyze --check PATH...             (read every tensor of each model as analysed: "ok PATH" and a
//                                               line per tensor with its FNV-1a hash, or "error MESSAGE")
//
// PATHs are .safetensors files, PEFT adapter folders, model folders (their *.safetensors files are
// one model's shards), or folders of these. Patterns are globs on the tensor name or 're:REGEX'.
// `--modes delta` analyses the LoRA deltas ΔW = s·B·A of adapters along the model axis (slot
// '<module>.delta'). Writes
// DIR/subspaces/<slot>.safetensors and DIR/report.json in the formats of `unisub analyze` (each slot's
// entry is computed by libunisub, as there; the Python front end adds a summary and plots), and prints a table. Each finished slot's entry
// is also kept in DIR/slots/, so `--resume` after an interruption redoes only the slot that was
// in progress. Files are read by libunisub's reader, the one `unisub analyze` uses. Exit status:
// 0 done, 2 bad input or usage (a clear message naming the file, nothing written), 1 otherwise.
#include <fmt/core.h>
#include <torch/torch.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <future>
#include <filesystem>
#include <optional>
#include <iostream>
#include <map>
#include <set>

#include "analysis/accumulators.h"
#include "analysis/json.h"
#include "analysis/json_writer.h"
#include "analysis/output_folder.h"
#include "analysis/plan.h"
#include "analysis/profile.h"
#include "analysis/reader.h"
#include "analysis/release_memory.h"
#include "analysis/run_report.h"
#include "analysis/slot_result.h"
#include "analysis/writer.h"
#include "models.h"
#include "unisub/analysis.h"

namespace fs = std::filesystem;
using namespace unisub_tool;

namespace {

struct Options {
  std::vector<std::string> paths, slots, modes{"out", "in"};
  std::string out, gram_precision = "auto";
  double energy = 0.9;
  int64_t rank = -1, batch_size = 8, eigen_weights = 0, max_gram_bytes = unisub::analysis::kDefaultMaxGramBytes;
  bool check_headers = false, check = false, scale = true, resume = false, profile = false, include_1d = false;
  bool rank_given = false;
};

[[noreturn]] void usage_error(const std::string& msg) { throw std::invalid_argument(msg); }

// The whole text must be the number ("1e9" is no integer, "0.5junk" no number): std::stoll and
// std::stod stop at the first character they cannot read and return what they read before it.
int64_t integer_option(const std::string& option, const std::string& text) {
  int64_t v = 0;
  const char* end = text.data() + text.size();
  // a leading '+' is a sign, as Python's int() and strtoll read it (from_chars does not)
  const char* begin = text.size() > 1 && text[0] == '+' && text[1] != '-' ? text.data() + 1 : text.data();
  const auto [stop, ec] = std::from_chars(begin, end, v);
  if (ec == std::errc::result_out_of_range)
    usage_error(fmt::format("{} {} is out of range: values must fit a signed 64-bit integer", option, text));
  if (ec != std::errc() || stop != end) usage_error(fmt::format("{} takes an integer, got '{}'", option, text));
  return v;
}

double number_option(const std::string& option, const std::string& text) {
  errno = 0;
  char* stop = nullptr;
  const double v = std::strtod(text.c_str(), &stop);
  // ERANGE with a result of 0 is an underflow: the number is read (as 0), and the option's own range
  // check says what is wrong with it
  if (text.empty() || stop != text.c_str() + text.size() || (errno == ERANGE && v != 0))
    usage_error(fmt::format("{} takes a number, got '{}'", option, text));
  return v;
}

Options parse_args(int argc, char** argv) {
  Options o;
  std::vector<std::string>* list = &o.paths;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(fmt::format("{} needs a value", a));
      return argv[++i];
    };
    if (a == "--out") o.out = value(), list = &o.paths;
    else if (a == "--energy") o.energy = number_option(a, value()), list = &o.paths;
    else if (a == "--rank") o.rank = integer_option(a, value()), o.rank_given = true, list = &o.paths;
    else if (a == "--batch-size") o.batch_size = integer_option(a, value()), list = &o.paths;
    else if (a == "--eigen-weights") o.eigen_weights = integer_option(a, value()), list = &o.paths;
    else if (a == "--max-gram-bytes") o.max_gram_bytes = integer_option(a, value()), list = &o.paths;
    else if (a == "--gram-precision") o.gram_precision = value(), list = &o.paths;
    else if (a == "--include-1d") o.include_1d = true, list = &o.paths;
    else if (a == "--slots") list = &o.slots;
    else if (a == "--modes") o.modes.clear(), list = &o.modes;
    else if (a == "--check-headers") o.check_headers = true, list = &o.paths;
    else if (a == "--check") o.check = true, list = &o.paths;
    else if (a == "--no-lora-scaling") o.scale = false, list = &o.paths;
    else if (a == "--resume") o.resume = true, list = &o.paths;
    else if (a == "--profile") o.profile = true, list = &o.paths;
    else if (a.rfind("--", 0) == 0) usage_error(fmt::format("unknown option '{}'", a));
    else list->push_back(a);
  }
  for (const auto& m : o.modes)
    if (m != "out" && m != "in" && m != "delta") usage_error(fmt::format("--modes takes out, in and/or delta, got '{}'", m));
  if (o.modes.empty()) usage_error("--modes needs at least one of out, in, delta");
  std::set<std::string> seen;
  for (const auto& m : o.modes)
    if (!seen.insert(m).second) usage_error(fmt::format("--modes takes each mode once, got '{}' twice", m));
  if (o.rank_given && o.rank < 1) usage_error(fmt::format("--rank must be a positive integer, got {}", o.rank));
  if (o.paths.empty()) usage_error("no PATH given");
  if (!o.check_headers && !o.check && o.out.empty()) usage_error("--out DIR is required");
  if (!(o.energy > 0 && o.energy <= 1)) usage_error(fmt::format("--energy must lie in (0, 1], got {}", o.energy));
  if (o.batch_size < 1) usage_error(fmt::format("--batch-size must be >= 1, got {}", o.batch_size));
  if (o.max_gram_bytes < 1) usage_error(fmt::format("--max-gram-bytes must be >= 1, got {}", o.max_gram_bytes));
  if (o.gram_precision != "auto" && o.gram_precision != "float64" && o.gram_precision != "float32")
    usage_error(fmt::format("--gram-precision takes auto, float64 or float32, got '{}'", o.gram_precision));
  if (o.eigen_weights < 0) usage_error(fmt::format("--eigen-weights must be >= 0, got {}", o.eigen_weights));
  if (o.eigen_weights > 0 && std::find(o.modes.begin(), o.modes.end(), "delta") == o.modes.end())
    usage_error("--eigen-weights needs --modes delta");
  return o;
}

// One line per file; exit status 1 when any file is bad, so that scripts can tell.
int check_headers(const std::vector<std::string>& files) {
  int status = 0;
  for (const auto& f : files) {
    try {
      auto h = unisub::analysis::read_safetensors_header(f);
      for (const auto& [k, t] : h.tensors) unisub::analysis::read_safetensors_tensor(h, k);
      fmt::print("ok {}\n", f);
    } catch (const unisub::analysis::ReadError& e) {
      fmt::print("error {}\n", e.what());
      status = 1;
    }
  }
  return status;
}

uint64_t fnv1a(const torch::Tensor& t) {
  const auto c = t.contiguous();
  const auto* p = static_cast<const unsigned char*>(c.data_ptr());
  uint64_t h = 14695981039346656037ull;
  for (size_t i = 0, n = c.numel() * c.element_size(); i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// Each PATH opened as one model and every tensor read as the analysis reads it (lora_B scaled
// unless --no-lora-scaling): "ok PATH" then "  HASH DTYPE SHAPE NAME" per tensor (shape and name as
// JSON), or "error MESSAGE". Exit status 1 when any is bad. The fuzz tests compare this with Python.
int check_models(const std::vector<std::string>& paths, bool scale) {
  int status = 0;
  for (const auto& p : paths) {
    try {
      const auto model = open_model(p);
      std::vector<std::string> lines;
      for (const auto& k : model.keys()) {
        const auto t = model.get(k, scale);
        std::string name;
        unisub::analysis::append_json_string(name, k);
        lines.push_back(fmt::format("  {:016x} {} {} {}", fnv1a(t), model.info(k).dtype,
                                    unisub::analysis::Json(t.sizes().vec()).dump(), name));
      }
      fmt::print("ok {}\n", p);
      for (const auto& l : lines) fmt::print("{}\n", l);
    } catch (const unisub::analysis::ReadError& e) {
      fmt::print("error {}\n", e.what());
      status = 1;
    }
  }
  return status;
}

int run(const Options& o) {
  unisub::analysis::profile_reset();
  // every header (and adapter config) first: a bad file fails now, before any output exists
  const auto models = discover_models(o.paths);
  const auto& first = models[0];
  // the slot plan: libunisub's, the one `unisub analyze` makes (selection, checks across models,
  // budget, cost); printed before anything is read
  std::vector<unisub::analysis::PlanModel> tables;
  for (const auto& model : models) {
    unisub::analysis::PlanModel t;
    t.name = model.name;
    t.adapter = model.adapter;
    t.dora = model.dora();
    t.peft_type = model.peft_type();
    for (const auto& k : model.keys()) {
      t.tensors[k] = {model.info(k).dtype, model.info(k).shape};
      t.files[k] = model.file_of(k);
    }
    tables.push_back(std::move(t));
  }
  unisub::analysis::PlanOptions popts;
  if (!o.slots.empty()) popts.patterns = o.slots;
  popts.include_1d = o.include_1d;
  popts.modes = o.modes;
  popts.max_gram_bytes = o.max_gram_bytes;
  popts.batch_size = o.batch_size;
  unisub::analysis::PlanResult planned;
  try {
    planned = unisub::analysis::plan_slots(tables, popts);
  } catch (const std::invalid_argument& e) {
    usage_error(e.what());
  }
  if (planned.error) throw CheckpointError(planned.error->what());
  const auto& plan = *planned.plan;
  fmt::print(stderr, "{}\n", plan.text());
  const std::vector<std::string>& chosen = plan.selected;
  const std::map<std::string, std::string>& skipped = plan.skipped;
  std::map<std::string, std::vector<std::string>> plan_modes;  // the modes each slot runs (within the budget)
  for (const auto& s : plan.slots)
    for (const auto& c : s.modes) plan_modes[s.key].push_back(c.mode);
  std::vector<unisub::analysis::DeltaModulePlan> deltas;  // libunisub's delta plan, the one `unisub analyze` makes
  if (std::find(o.modes.begin(), o.modes.end(), "delta") != o.modes.end()) {
    auto planned_deltas = unisub::analysis::plan_deltas(tables, chosen, !o.slots.empty());
    if (planned_deltas.error) throw CheckpointError(planned_deltas.error->what());
    deltas = std::move(planned_deltas.modules);
  }
  std::vector<std::string> slots;  // analysed along out / in
  for (const auto& sl : plan.slots) slots.push_back(sl.key);
  const int64_t M = static_cast<int64_t>(models.size());
  std::vector<std::string> sources, delta_slots;
  std::vector<int64_t> source_bytes;
  for (const auto& model : models) sources.push_back(model.name), source_bytes.push_back(model.total_bytes());
  for (const auto& d : deltas) delta_slots.push_back(d.module + ".delta");
  const unisub::analysis::ReportOptions report_options;
  unisub::analysis::RunOptions run_options;
  run_options.slots = slots, run_options.modes = o.modes, run_options.delta_slots = delta_slots;
  run_options.energy = o.energy;
  if (o.rank > 0) run_options.rank = o.rank;
  run_options.scale_lora = o.scale, run_options.batch_size = o.batch_size, run_options.eigen_weights = o.eigen_weights;
  run_options.include_1d = o.include_1d, run_options.max_gram_bytes = o.max_gram_bytes;
  run_options.gram_precision = o.gram_precision;
  run_options.taus = report_options.taus, run_options.error_ranks = report_options.error_ranks;
  const auto options = unisub::analysis::options_json(run_options);
  const auto precision = unisub::analysis::parse_gram_precision(o.gram_precision);
  // created only now: bad input has been found above, before any output exists
  unisub::analysis::OutputFolder folder(o.out, unisub::analysis::run_json(sources, source_bytes, options), o.resume);
  const std::optional<int64_t> rank = o.rank > 0 ? std::optional<int64_t>(o.rank) : std::nullopt;
  std::vector<std::pair<std::string, std::string>> entries;
  int64_t resumed = 0;
  const auto t0 = std::chrono::steady_clock::now();
  // mode slots read plan.batch models at a time (thin models of a large Gram more than --batch-size);
  // delta slots --batch-size
  std::map<std::string, int64_t> slot_batch;
  for (const auto& s : plan.slots) slot_batch[s.key] = s.batch;
  auto batches_of = [M](int64_t size) { return (M + size - 1) / size; };
  const int64_t nbatches = batches_of(o.batch_size);
  int64_t all = nbatches * static_cast<int64_t>(deltas.size());
  for (const auto& key : slots) all += batches_of(slot_batch.at(key));
  int64_t done = 0;
  auto progress = [&](const std::string& what) {
    ++done;
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    fmt::print(stderr, "\ranalyse {} {}/{} batches, {:.1f} s, ETA {:.1f} s   ", what, done, all, el, el / done * (all - done));
  };
  // the in-progress slot's accumulators are saved this often (and after its last batch)
  auto due = [last = std::chrono::steady_clock::now()](bool last_batch) mutable {
    const auto now = std::chrono::steady_clock::now();
    if (!last_batch && now - last < std::chrono::seconds(60)) return false;
    last = now;
    return true;
  };
  for (int64_t slot_index = 0; slot_index < static_cast<int64_t>(slots.size()); ++slot_index) {
    const auto& key = slots[slot_index];
    const int64_t batch = slot_batch.at(key), slot_batches = batches_of(batch);
    if (folder.finished(key)) {
      entries.emplace_back(key, folder.load_entry(key));
      done += slot_batches, ++resumed;
      continue;
    }
    const auto& modes = plan_modes.at(key);  // the requested ones within the Gram budget
    const auto [m, n] = *unisub::analysis::matrix_shape(first.info(key).shape);  // planned: >= 1-D
    unisub::analysis::ModeAccumulator even(m, n, modes, /*center=*/true, torch::kCPU), odd(m, n, modes, true, torch::kCPU);
    even.set_gram_precision(precision), odd.set_gram_precision(precision);
    const int64_t start = o.resume ? folder.load_partial(key, even, odd, 0) : 0;
    done += start;
    // batch b's models, split into the even and odd halves by their index
    using Halves = std::array<std::vector<torch::Tensor>, 2>;
    auto read_batch = [&, m = m, n = n](int64_t b) {
      Halves part;
      for (int64_t i = b * batch; i < std::min(M, (b + 1) * batch); ++i)
        part[i % 2].push_back(read_finite(models[i], key, o.scale).reshape({m, n}));
      return part;
    };
    // the next batch is read while this one is accumulated (reading is I/O and a cast; the Grams
    // are BLAS): on a cold disk the read time hides behind the Grams
    std::future<Halves> next;
    if (start < slot_batches) next = std::async(std::launch::async, read_batch, start);
    for (int64_t b = start; b < slot_batches; ++b) {
      Halves part = next.get();
      if (b + 1 < slot_batches) next = std::async(std::launch::async, read_batch, b + 1);
      even.update(part[0]);
      odd.update(part[1]);
      part = Halves();
      unisub::analysis::release_freed_memory();
      if (due(b + 1 == slot_batches)) folder.save_partial(key, b + 1, even, odd, 0);
      progress(key);
    }
    unisub::analysis::Json meta = unisub::analysis::Json::object();
    meta["source_files"] = unisub::analysis::Json(std::vector<std::string>{first.file_of(key)});
    meta["original_shape"] = unisub::analysis::Json(first.info(key).shape);
    // the Gaussian null's seed is the slot's index, as in `unisub analyze`
    const auto result = unisub::analysis::finalize_mode_slot(key, even, odd, rank, o.energy, slot_index, meta.dump(),
                                                             report_options);
    folder.save_slot(key, result);
    folder.drop_partial(0);
    entries.emplace_back(key, result.entry);
    unisub::analysis::release_freed_memory();
  }
  // each delta slot's store, once released, is kept for the next one's factors (store_reuse.h),
  // and freed after the last, before the report is assembled
  std::optional<unisub::analysis::DeltaStoreReuse> reuse_stores;
  reuse_stores.emplace();
  for (size_t di = 0; di < deltas.size(); ++di) {
    const auto& d = deltas[di];
    const auto slot = d.module + ".delta";
    if (folder.finished(slot)) {
      entries.emplace_back(slot, folder.load_entry(slot));
      done += nbatches, ++resumed;
      continue;
    }
    unisub::analysis::DeltaAccumulator acc(d.m, d.n, /*center=*/true, torch::kCPU);
    acc.set_gram_precision(precision);
    const int64_t start = o.resume ? folder.load_partial(slot, acc, 0) : 0;
    acc.reserve(M);  // every model's factors in one store, allocated once
    done += start;
    for (int64_t b = start; b < nbatches; ++b) {
      for (int64_t i = b * o.batch_size; i < std::min(M, (b + 1) * o.batch_size); ++i)
        unisub::analysis::add_delta_model(acc, models[i], d.a_key, d.b_key, o.scale, i);
      // not after the last batch: the state is every factor read (re-reading them costs less than
      // writing them, 213 MB for 500 adapters of a 4096-wide module), and the slot finishes next
      if (due(false)) folder.save_partial(slot, b + 1, acc, 0);
      progress(slot);
    }
    unisub::analysis::Json meta = unisub::analysis::Json::object();
    meta["factors"] = unisub::analysis::Json(std::vector<std::string>{d.a_key, d.b_key});
    meta["source_files"] = unisub::analysis::Json(std::vector<std::string>{models[0].file_of(d.b_key)});
    meta["models"] = unisub::analysis::Json(sources);
    const auto result = unisub::analysis::finalize_delta_slot(slot, acc, rank, o.energy, o.eigen_weights,
                                                              static_cast<int64_t>(slots.size() + di), meta.dump(),
                                                              report_options, /*release_factors=*/true);
    folder.save_slot(slot, result);
    folder.drop_partial(0);
    entries.emplace_back(slot, result.entry);
    unisub::analysis::release_freed_memory();
  }
  reuse_stores.reset();
  fmt::print(stderr, "\n");
  if (resumed) fmt::print(stderr, "resumed: {} finished slot(s) read from {}\n", resumed, (fs::path(o.out) / "slots").string());
  std::vector<std::pair<std::string, std::string>> skipped_list(skipped.begin(), skipped.end());
  const auto stages = o.profile ? unisub::analysis::profile_json(/*measure_gemm=*/true) : std::string();
  const auto text = unisub::analysis::report_json("unisub-analyze", sources, options, skipped_list, entries, stages,
                                                  plan.totals_json());
  if (o.profile) fmt::print(stderr, "{}", unisub::analysis::profile_table(stages));
  folder.write_report(text);
  folder.close();
  // The table from each slot's entry, parsed one at a time in key order (as the report lists
  // them): the whole report parsed at once held more memory than any slot's own work (8 delta
  // slots of 500 models: ~70 MB of JSON nodes, mostly the scores).
  std::sort(entries.begin(), entries.end());
  fmt::print("{} models, {} slots\n{:<48} {:>11} {:>4} {:>5} {:>7} {:>6} {:>5} {:>12} {:>6} {:>7}\n", M, entries.size(),
             "slot", "shape", "mode", "r", "r(0.9)", "EVR1", ">null", "split sinmax", "mean%", "ratio");
  // libunisub's parser (the report's own): the numbers a row shows, 0 where a field is absent
  using unisub::analysis::json::Value;
  static const std::vector<std::vector<std::string>> kTablePaths = {
      {"shape"}, {"modes", "*", "rank"}, {"modes", "*", "rank_at_tau", "0.9"}, {"modes", "*", "explained_variance_ratio"},
      {"modes", "*", "null", "components_above_null"}, {"modes", "*", "split_half", "max_sin"},
      {"energy", "mean_share"}, {"compression", "ratio"}};
  for (const auto& [key, entry] : entries) {
    const Value rep = unisub::analysis::json::parse_paths(entry, kTablePaths);
    const Value* shape = rep.find("shape");
    const std::string shape_text = shape && shape->is_array() && shape->items.size() == 2
                                       ? fmt::format("{}x{}", shape->items[0].int_value, shape->items[1].int_value)
                                       : "";
    bool first = true;
    const Value* modes_of = rep.find("modes");
    if (!modes_of || !modes_of->is_object()) continue;
    for (const auto& member : modes_of->members) {
      const Value& mr = member.value;
      const Value* split = mr.find("split_half");
      const Value* evr = mr.find("explained_variance_ratio");
      const double evr1 = evr && !evr->items.empty() ? evr->items[0].number : 0.0;
      fmt::print("{:<48} {:>11} {:>4} {:>5} {:>7} {:>6.3f} {:>5} {:>12} {:>6} {:>7}\n", first ? key : "",
                 first ? shape_text : "", member.key, static_cast<int64_t>(mr.number_at({"rank"})),
                 static_cast<int64_t>(mr.number_at({"rank_at_tau", "0.9"})), evr1,
                 static_cast<int64_t>(mr.number_at({"null", "components_above_null"})),
                 !split || !split->is_object() ? "-" : fmt::format("{:.3f}", split->number_at({"max_sin"})),
                 first ? fmt::format("{:.1f}", 100 * rep.number_at({"energy", "mean_share"})) : "",
                 first ? fmt::format("{:.2f}", rep.number_at({"compression", "ratio"})) : "");
      first = false;
    }
  }
  fmt::print("written to {}\n", o.out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    auto o = parse_args(argc, argv);
    if (o.check_headers) return check_headers(o.paths);
    if (o.check) return check_models(o.paths, o.scale);
    return run(o);
  } catch (const std::invalid_argument& e) {
    fmt::print(stderr, "unisub-analyze: error: {}\nusage: unisub-analyze PATH... --out DIR [--slots P...] [--modes out in delta] "
                       "[--energy T] [--rank R] [--batch-size B] [--no-lora-scaling] [--eigen-weights K] [--include-1d] "
                       "[--max-gram-bytes BYTES] [--gram-precision auto|float64|float32] [--resume] [--profile]\n", e.what());
    return 2;
  } catch (const unisub::analysis::ReadError& e) {  // bad input, found by the reader
    fmt::print(stderr, "\nunisub-analyze: error: {}\n", e.what());
    return 2;
  } catch (const CheckpointError& e) {  // bad input, found by the tool (models that do not fit together)
    fmt::print(stderr, "\nunisub-analyze: error: {}\n", e.what());
    return 2;
  } catch (const c10::ValueError& e) {  // bad input or state found by libunisub's checks (e.g. --resume of another run)
    fmt::print(stderr, "\nunisub-analyze: error: {}\n", e.what_without_backtrace());
    return 2;
  } catch (const unisub::analysis::WriteError& e) {  // the output side: a full disk, no permission, a folder in use
    fmt::print(stderr, "\nunisub-analyze: error: {}\n", e.what());
    return 1;
  } catch (const c10::Error& e) {
    fmt::print(stderr, "\nunisub-analyze: error: {}\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "\nunisub-analyze: error: {}\n", e.what());
    return 1;
  }
}
