#include "analysis/profile.h"

#include <ATen/ATen.h>
#include <algorithm>
#include <cstdarg>
#include <cstdio>

#include <map>
#include <mutex>

#include "analysis/json.h"
#include "analysis/json_writer.h"

namespace unisub::analysis {
namespace {

struct Stats {
  double seconds = 0, madds = 0;
  uint64_t bytes = 0, calls = 0;
};

std::mutex& lock() {
  static std::mutex m;
  return m;
}

std::map<std::string, Stats>& stages() {
  static std::map<std::string, Stats> s;
  return s;
}

// The order stages are listed in: the pipeline's.
const char* const kOrder[] = {"read",       "convert", "gram",   "gram_float32", "gram_check", "eigh", "eigen_weights",
                              "split_half", "null",    "report", "write"};

thread_local ScopedStage* current_stage = nullptr;

// Multiply-adds per second of a float GEMM of a size the Grams have (1024 × 1024 · 1024 × 512),
// best of 3 after a warm-up.
double gemm_rate(at::ScalarType dtype) {
  const auto opts = at::TensorOptions().dtype(dtype);
  const auto a = at::randn({1024, 1024}, opts), b = at::randn({1024, 512}, opts);
  auto c = at::mm(a, b);
  double best = 1e300;
  for (int i = 0; i < 3; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    at::mm_out(c, a, b);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return 1024.0 * 1024.0 * 512.0 / best;
}

std::string format(const char* f, ...) {
  char buf[512];
  va_list args;
  va_start(args, f);
  std::vsnprintf(buf, sizeof buf, f, args);
  va_end(args);
  return buf;
}

}  // namespace

ScopedStage::ScopedStage(const char* stage, uint64_t bytes, double multiply_adds)
    : stage_(stage), bytes_(bytes), madds_(multiply_adds), start_(std::chrono::steady_clock::now()),
      enclosing_(current_stage) {
  current_stage = this;
}

ScopedStage::~ScopedStage() {
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  profile_add(stage_, std::max(0.0, seconds - nested_), bytes_, madds_);
  if (enclosing_) enclosing_->nested_ += seconds;
  current_stage = enclosing_;
}

void profile_add(const char* stage, double seconds, uint64_t bytes, double multiply_adds) {
  std::lock_guard<std::mutex> g(lock());
  auto& s = stages()[stage];
  s.seconds += seconds, s.bytes += bytes, s.madds += multiply_adds, s.calls += 1;
}

void profile_reset() {
  std::lock_guard<std::mutex> g(lock());
  stages().clear();
}

std::string profile_json(bool measure_gemm) {
  std::map<std::string, Stats> copy;
  {
    std::lock_guard<std::mutex> g(lock());
    copy = stages();
  }
  const double rate64 = measure_gemm ? gemm_rate(at::kDouble) : 0.0;
  const double rate32 = measure_gemm ? gemm_rate(at::kFloat) : 0.0;
  Json out = Json::object();
  Json list = Json::object();
  double total = 0;
  auto emit = [&](const std::string& name, const Stats& s) {
    Json j = Json::object();
    j["seconds"] = s.seconds;
    j["bytes"] = static_cast<int64_t>(s.bytes);
    j["calls"] = static_cast<int64_t>(s.calls);
    j["multiply_adds"] = s.madds;
    // a Gram's unavoidable work at the GEMM rate of its precision is the yardstick: "gram" runs
    // float64 GEMMs, "gram_float32" float32 ones (accumulators.h, GramPrecision)
    const double rate = name == "gram_float32" ? rate32 : rate64;
    j["gemm_fraction"] = s.madds > 0 && s.seconds > 0 && rate > 0 ? Json(s.madds / s.seconds / rate) : Json();
    list[name] = j;
    total += s.seconds;
  };
  for (const char* name : kOrder)
    if (copy.count(name)) emit(name, copy.at(name));
  for (const auto& [name, s] : copy)
    if (std::find(std::begin(kOrder), std::end(kOrder), name) == std::end(kOrder)) emit(name, s);
  out["stages"] = list;
  out["total_seconds"] = total;
  Json rates = Json::object();
  rates["float64"] = measure_gemm ? Json(rate64) : Json();
  rates["float32"] = measure_gemm ? Json(rate32) : Json();
  out["gemm_rate"] = rates;
  return out.dump();
}

std::string profile_table(const std::string& text) {
  json::Value v;
  try {
    v = json::parse(text);
  } catch (const json::ParseError& e) {
    TORCH_CHECK_VALUE(false, "analysis_profile_table: the profile is not valid JSON: ", e.what());
  }
  // a profile written by another version, or by hand, may lack fields: each is read as a number or
  // refused by name (an absent one was read through a null pointer)
  auto number = [](const json::Value& obj, const char* field, const std::string& where) {
    const auto* f = obj.is_object() ? obj.find(field) : nullptr;
    TORCH_CHECK_VALUE(f && f->is_number(), "analysis_profile_table: ", where, " has no number '", field, "'");
    return f->number;
  };
  std::string out = format("%-10s %10s %7s %14s %8s %16s %10s\n", "stage", "seconds", "share", "bytes", "calls",
                           "speed", "GEMM rate");
  const auto* st = v.is_object() ? v.find("stages") : nullptr;
  const auto* total = v.is_object() ? v.find("total_seconds") : nullptr;
  const double all = total && total->is_number() ? total->number : 0.0;
  if (st && st->is_object())
    for (const auto& m : st->members) {
      const auto& s = m.value;
      const std::string where = "stage '" + m.key + "'";
      const double sec = number(s, "seconds", where), madds = number(s, "multiply_adds", where);
      const double bytes = number(s, "bytes", where), calls = number(s, "calls", where);
      const auto* frac = s.find("gemm_fraction");
      const std::string speed = madds > 0 && sec > 0   ? format("%.2f Gmadd/s", madds / sec / 1e9)
                                : bytes > 0 && sec > 0 ? format("%.2f GB/s", bytes / sec / 1e9)
                                                       : std::string("-");
      out += format("%-10s %10.3f %6.1f%% %14.0f %8.0f %16s %10s\n", m.key.c_str(), sec, all > 0 ? 100 * sec / all : 0.0,
                    bytes, calls, speed.c_str(),
                    frac && frac->is_number() ? format("%.0f%%", 100 * frac->number).c_str() : "-");
    }
  const auto* rates = v.is_object() ? v.find("gemm_rate") : nullptr;
  const auto* f64 = rates && rates->is_object() ? rates->find("float64") : nullptr;
  const auto* f32 = rates && rates->is_object() ? rates->find("float32") : nullptr;
  if (f64 && f64->is_number() && f32 && f32->is_number())
    out += format("GEMM rate measured in this run: float64 %.2f Gmadd/s, float32 %.2f Gmadd/s\n", f64->number / 1e9,
                  f32->number / 1e9);
  return out;
}

}  // namespace unisub::analysis
