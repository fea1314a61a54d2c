// unisub-analyze: per-slot universal subspaces of many safetensors checkpoints, without Python.
//
//   unisub-analyze PATH... --out DIR [--slots PATTERN...] [--modes out in] [--energy 0.9]
//                  [--rank R] [--batch-size 8]
//   unisub-analyze --check-headers FILE...     (validate headers only: one line per file)
//
// PATHs are .safetensors files or folders of them (one model per file). Patterns are globs on the
// tensor name or 're:REGEX'. Writes DIR/subspaces/<slot>.safetensors and DIR/report.json in the
// formats of `unisub analyze` (the Python report adds the null spectra and plots), and prints a table.
#include <fmt/core.h>
#include <fnmatch.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <regex>

#include "accumulator.h"
#include "safetensors.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace unisub_tool;

namespace {

struct Options {
  std::vector<std::string> paths, slots, modes{"out", "in"};
  std::string out;
  double energy = 0.9;
  int64_t rank = -1, batch_size = 8;
  bool check_headers = false;
};

[[noreturn]] void usage_error(const std::string& msg) { throw std::invalid_argument(msg); }

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
    else if (a == "--energy") o.energy = std::stod(value()), list = &o.paths;
    else if (a == "--rank") o.rank = std::stoll(value()), list = &o.paths;
    else if (a == "--batch-size") o.batch_size = std::stoll(value()), list = &o.paths;
    else if (a == "--slots") list = &o.slots;
    else if (a == "--modes") o.modes.clear(), list = &o.modes;
    else if (a == "--check-headers") o.check_headers = true, list = &o.paths;
    else if (a.rfind("--", 0) == 0) usage_error(fmt::format("unknown option '{}'", a));
    else list->push_back(a);
  }
  for (const auto& m : o.modes)
    if (m != "out" && m != "in") usage_error(fmt::format("--modes takes out and/or in, got '{}'", m));
  if (o.paths.empty()) usage_error("no PATH given");
  if (!o.check_headers && o.out.empty()) usage_error("--out DIR is required");
  if (!(o.energy > 0 && o.energy <= 1)) usage_error(fmt::format("--energy must lie in (0, 1], got {}", o.energy));
  if (o.batch_size < 1) usage_error(fmt::format("--batch-size must be >= 1, got {}", o.batch_size));
  return o;
}

bool matches(const std::string& key, const std::vector<std::string>& patterns) {
  for (const auto& p : patterns) {
    if (p.rfind("re:", 0) == 0) {
      if (std::regex_search(key, std::regex(p.substr(3)))) return true;
    } else if (fnmatch(p.c_str(), key.c_str(), 0) == 0) {
      return true;
    }
  }
  return false;
}

std::vector<std::string> discover(const std::vector<std::string>& paths) {
  std::vector<std::string> files;
  for (const auto& p : paths) {
    if (fs::is_directory(p)) {
      std::vector<std::string> found;
      for (const auto& e : fs::directory_iterator(p))
        if (e.path().extension() == ".safetensors") found.push_back(e.path().string());
      if (found.empty()) throw CheckpointError(fmt::format("{}: no checkpoints found in this folder (looked for *.safetensors)", p));
      files.insert(files.end(), found.begin(), found.end());
    } else if (fs::exists(p)) {
      files.push_back(p);
    } else {
      throw CheckpointError(fmt::format("{}: no such file or folder", p));
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::pair<int64_t, int64_t> matrix_shape(const std::vector<int64_t>& s) {
  if (s.size() == 1) return {1, s[0]};
  int64_t rest = 1;
  for (size_t i = 1; i < s.size(); ++i) rest *= s[i];
  return {s[0], rest};
}

std::string safe_name(const std::string& slot) {
  return std::regex_replace(slot, std::regex("[^A-Za-z0-9._-]"), "_");
}

std::vector<double> to_vec(const torch::Tensor& t) {
  auto c = t.contiguous().to(torch::kDouble);
  return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

torch::Tensor principal_angles(const torch::Tensor& U1, const torch::Tensor& U2) {
  const int64_t k = std::min(U1.size(1), U2.size(1));
  auto cos = torch::linalg_svdvals(U1.t().mm(U2)).slice(0, 0, k).clamp(0, 1);
  auto R = U2.size(1) <= U1.size(1) ? U2 - U1.mm(U1.t().mm(U2)) : U1 - U2.mm(U2.t().mm(U1));
  auto sin = torch::linalg_svdvals(R).flip(0).slice(0, 0, k).clamp(0, 1);
  auto theta = torch::where(cos > std::sqrt(0.5), torch::arcsin(sin), torch::arccos(cos.flip(0)).flip(0));
  return std::get<0>(theta.sort());
}

json mode_report(const std::string& mode, const Accumulator& total, const Accumulator* halves, int64_t r_cap,
                 double energy, double uncentred, torch::Tensor& basis, torch::Tensor& evals_out) {
  auto [ev, U] = total.eigh(mode);
  const int64_t d = ev.numel();
  const double tot = ev.sum().item<double>();
  int64_t r = r_cap > 0 ? std::min(r_cap, d) : d;
  r = std::min(r, rank_for_energy(ev, energy));
  basis = U.slice(1, 0, r).contiguous();
  evals_out = ev;
  auto cum = tot > 0 ? ev.cumsum(0) / tot : torch::zeros_like(ev);
  json rep;
  rep["dim"] = d;
  rep["rank"] = r;
  rep["singular_values"] = to_vec(ev.sqrt());
  rep["explained_variance_ratio"] = to_vec(tot > 0 ? ev / tot : torch::zeros_like(ev));
  rep["cumulative_explained_variance"] = to_vec(cum);
  for (double t : {0.5, 0.8, 0.9, 0.95, 0.99}) rep["rank_at_tau"][fmt::format("{}", t)] = rank_for_energy(ev, t);
  for (int64_t k : {1, 2, 4, 8, 16, 32, 64}) {
    if (k > d) break;
    rep["reconstruction_error"][std::to_string(k)] = tot > 0 ? std::sqrt(std::max(0.0, 1 - cum[k - 1].item<double>())) : 0.0;
    rep["reconstruction_error_with_mean"][std::to_string(k)] =
        uncentred > 0 ? std::sqrt(std::max(0.0, ev.slice(0, k).sum().item<double>()) / uncentred) : 0.0;
  }
  const double lr = ev[r - 1].item<double>(), lnext = r < d ? ev[r].item<double>() : 0.0;
  rep["eigengap"] = {{"at_rank", r}, {"abs", r < d ? lr - lnext : lr},
                     {"sigma_ratio", r < d && lnext > 0 ? std::sqrt(lr) / std::sqrt(lnext) : INFINITY}};
  const int64_t other = mode == "out" ? total.n : total.m;
  const double N = static_cast<double>(other) * static_cast<double>(total.count - 1);
  const double edge = N > 0 && tot > 0 ? tot / (d * N) * std::pow(std::sqrt(double(d)) + std::sqrt(N), 2) : 0.0;
  rep["null"] = {{"shape", {d, static_cast<int64_t>(N)}}, {"mp_upper_edge", edge},
                 {"components_above_mp_edge", tot > 0 ? (ev > edge).sum().item<int64_t>() : 0}};
  if (halves) {
    auto Ua = halves[0].eigh(mode).second.slice(1, 0, r), Ub = halves[1].eigh(mode).second.slice(1, 0, r);
    auto theta = principal_angles(Ua, Ub);
    rep["split_half"] = {{"models", {halves[0].count, halves[1].count}},
                         {"principal_angles_deg", to_vec(torch::rad2deg(theta))},
                         {"max_sin", theta.numel() ? theta.max().sin().item<double>() : 0.0},
                         {"mean_cos2", theta.numel() ? theta.cos().pow(2).mean().item<double>() : 1.0}};
  } else {
    rep["split_half"] = nullptr;
  }
  return rep;
}

int check_headers(const std::vector<std::string>& files) {
  for (const auto& f : files) {
    try {
      auto h = read_header(f);
      for (const auto& [k, t] : h.tensors) read_tensor(h, k);
      fmt::print("ok {}\n", f);
    } catch (const CheckpointError& e) {
      fmt::print("error {}\n", e.what());
    }
  }
  return 0;
}

int run(const Options& o) {
  auto files = discover(o.paths);
  // every header first: a bad file fails now, before any output exists
  std::vector<Header> headers;
  for (const auto& f : files) headers.push_back(read_header(f));
  std::vector<std::string> slots;
  std::map<std::string, std::string> skipped;
  for (const auto& [k, t] : headers[0].tensors) {
    const bool explicit_ = !o.slots.empty();
    if (explicit_ && !matches(k, o.slots)) continue;
    if (!analysable(t.dtype)) {
      if (explicit_) throw CheckpointError(fmt::format("{}: slot '{}': dtype {} cannot be analysed (need one of F64, F32, F16, BF16)", files[0], k, t.dtype));
      skipped[k] = "dtype " + t.dtype;
    } else if (t.shape.size() < 2) {
      skipped[k] = fmt::format("{}-D tensor", t.shape.size());
    } else {
      slots.push_back(k);
    }
  }
  if (slots.empty()) throw CheckpointError(fmt::format("{}: no tensor to analyse matches the --slots patterns", files[0]));
  for (size_t i = 1; i < headers.size(); ++i)
    for (const auto& k : slots) {
      auto it = headers[i].tensors.find(k);
      if (it == headers[i].tensors.end()) throw CheckpointError(fmt::format("{}: slot '{}': missing (present in '{}')", files[i], k, files[0]));
      if (it->second.shape != headers[0].tensors.at(k).shape)
        throw CheckpointError(fmt::format("{}: slot '{}': shape differs from the one in '{}'", files[i], k, files[0]));
      if (!analysable(it->second.dtype))
        throw CheckpointError(fmt::format("{}: slot '{}': dtype {} cannot be analysed", files[i], k, it->second.dtype));
    }
  std::error_code ec;
  fs::create_directories(fs::path(o.out) / "subspaces", ec);
  if (ec) throw std::runtime_error(fmt::format("output folder '{}' is not writable: {}", o.out, ec.message()));

  const int64_t M = static_cast<int64_t>(files.size());
  json report;
  report["format"] = "unisub.report/1";
  report["models"] = M;
  report["sources"] = files;
  report["options"] = {{"slots", slots}, {"modes", o.modes}, {"energy", o.energy},
                       {"rank", o.rank > 0 ? json(o.rank) : json(nullptr)}, {"batch_size", o.batch_size}, {"world", 1}};
  report["skipped"] = skipped;
  report["slots"] = json::object();
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t nbatches = (M + o.batch_size - 1) / o.batch_size;
  int64_t done = 0;
  for (const auto& key : slots) {
    auto [m, n] = matrix_shape(headers[0].tensors.at(key).shape);
    Accumulator halves[2] = {Accumulator(m, n, o.modes), Accumulator(m, n, o.modes)};
    for (int64_t b0 = 0; b0 < M; b0 += o.batch_size) {
      std::vector<torch::Tensor> part[2];
      for (int64_t i = b0; i < std::min(M, b0 + o.batch_size); ++i)
        part[i % 2].push_back(read_tensor(headers[i], key).reshape({m, n}));
      for (int h = 0; h < 2; ++h)
        if (!part[h].empty()) halves[h].update(torch::stack(part[h]));
      ++done;
      const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const int64_t all = nbatches * static_cast<int64_t>(slots.size());
      fmt::print(stderr, "\ranalyse {}/{} batches, {:.1f} s, ETA {:.1f} s   ", done, all, el, el / done * (all - done));
    }
    Accumulator total(m, n, o.modes);
    total.merge(halves[0]);
    total.merge(halves[1]);
    const bool split = std::min(halves[0].count, halves[1].count) >= 2;
    const double centred = total.grams.at(o.modes[0]).trace().item<double>();
    const double mean_energy = static_cast<double>(M) * total.mean.pow(2).sum().item<double>();
    const double uncentred = centred + mean_energy;
    json slot_rep;
    slot_rep["slot"] = key;
    slot_rep["shape"] = {m, n};
    slot_rep["models"] = M;
    slot_rep["energy"] = {{"total", uncentred}, {"mean", mean_energy}, {"centred", centred},
                          {"mean_share", uncentred > 0 ? mean_energy / uncentred : 0.0},
                          {"centred_share", uncentred > 0 ? centred / uncentred : 0.0}};
    std::vector<std::pair<std::string, torch::Tensor>> tensors{{"mean", total.mean}};
    std::map<std::string, int64_t> ranks;
    for (const auto& mo : o.modes) {
      torch::Tensor basis, evals;
      slot_rep["modes"][mo] = mode_report(mo, total, split ? halves : nullptr, o.rank, o.energy, uncentred, basis, evals);
      ranks[mo] = basis.size(1);
      tensors.emplace_back("basis." + mo, basis);
      tensors.emplace_back("eigenvalues." + mo, evals);
    }
    const int64_t r_out = ranks.count("out") ? ranks["out"] : m, r_in = ranks.count("in") ? ranks["in"] : n;
    int64_t stored = m * n + M * r_out * r_in;
    for (const auto& [mo, r] : ranks) stored += (mo == "out" ? m : n) * r;
    slot_rep["compression"] = {{"original_numbers", M * m * n}, {"stored_numbers", stored},
                               {"ratio", static_cast<double>(M * m * n) / static_cast<double>(stored)}};
    json meta = {{"slot", key}, {"count", M}, {"center", true}, {"modes", o.modes},
                 {"metadata", {{"source_files", {files[0]}}, {"original_shape", headers[0].tensors.at(key).shape}}},
                 {"format", "unisub.subspace/1"}};
    save_safetensors((fs::path(o.out) / "subspaces" / (safe_name(key) + ".safetensors")).string(), tensors, meta.dump());
    report["slots"][key] = slot_rep;
  }
  fmt::print(stderr, "\n");
  write_text_atomically((fs::path(o.out) / "report.json").string(), report.dump(1) + "\n");

  fmt::print("{} models, {} slots\n{:<48} {:>11} {:>4} {:>5} {:>7} {:>6} {:>4} {:>12} {:>6} {:>7}\n", M, slots.size(),
             "slot", "shape", "mode", "r", "r(0.9)", "EVR1", ">MP", "split sinmax", "mean%", "ratio");
  for (const auto& [key, rep] : report["slots"].items()) {
    bool first = true;
    for (const auto& [mo, mr] : rep["modes"].items()) {
      fmt::print("{:<48} {:>11} {:>4} {:>5} {:>7} {:>6.3f} {:>4} {:>12} {:>6} {:>7}\n", first ? key : "",
                 first ? fmt::format("{}x{}", rep["shape"][0].get<int64_t>(), rep["shape"][1].get<int64_t>()) : "", mo,
                 mr["rank"].get<int64_t>(), mr["rank_at_tau"]["0.9"].get<int64_t>(),
                 mr["explained_variance_ratio"][0].get<double>(), mr["null"]["components_above_mp_edge"].get<int64_t>(),
                 mr["split_half"].is_null() ? "-" : fmt::format("{:.3f}", mr["split_half"]["max_sin"].get<double>()),
                 first ? fmt::format("{:.1f}", 100 * rep["energy"]["mean_share"].get<double>()) : "",
                 first ? fmt::format("{:.2f}", rep["compression"]["ratio"].get<double>()) : "");
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
    return run(o);
  } catch (const std::invalid_argument& e) {
    fmt::print(stderr, "unisub-analyze: error: {}\nusage: unisub-analyze PATH... --out DIR [--slots P...] [--modes out in] "
                       "[--energy T] [--rank R] [--batch-size B]\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "\nunisub-analyze: error: {}\n", e.what());
    return 1;
  }
}
