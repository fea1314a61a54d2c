// The slot plan (plan.h): selection by pattern, the checks across models, and a cost estimate per
// slot and mode, once for both front ends. Defaults must survive a real transformer folder: a
// default-selected tensor that differs between models (each SEQ_CLS task's own classifier head) is
// skipped with its reason, and a Gram beyond the memory budget (BERT's word embedding: 7.5 GB) is
// skipped with its reason instead of being attempted; tensors the user named stay errors.
#include "analysis/plan.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>
#include <stdexcept>

#include "analysis/json_writer.h"
#include "analysis/pattern.h"
#include "cpu/lora_gram_cpu.h"
#include "unisub/analysis.h"

namespace unisub::analysis {
namespace {

const std::vector<std::string> kAnalysable{"F64", "F32", "F16", "BF16"};

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

int64_t itemsize(const std::string& dtype) { return dtype == "F64" ? 8 : dtype == "F32" ? 4 : 2; }

// printf-style formatting: the library itself does not link fmt (only the tools do)
template <typename... Args>
std::string format(const char* f, Args... args) {
  char buf[512];
  std::snprintf(buf, sizeof buf, f, args...);
  return buf;
}

std::string bytes_str(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  return format(u ? "%.1f %s" : "%.0f %s", b, units[u]);
}

}  // namespace

const std::string& PlanModel::file_of(const std::string& key) const {
  const auto it = files.find(key);
  return it == files.end() ? name : it->second;
}

std::string PlanError::what() const {
  return slot.empty() ? path + ": " + message : path + ": slot '" + slot + "': " + message;
}

bool analysable_dtype(const std::string& dtype) {
  return std::find(kAnalysable.begin(), kAnalysable.end(), dtype) != kAnalysable.end();
}

std::optional<std::pair<int64_t, int64_t>> matrix_shape(const std::vector<int64_t>& shape) {
  if (shape.empty()) return std::nullopt;
  if (shape.size() == 1) return std::pair<int64_t, int64_t>{1, shape[0]};
  int64_t n = 1;
  for (size_t i = 1; i < shape.size(); ++i) n *= shape[i];
  return std::pair<int64_t, int64_t>{shape[0], n};
}

namespace {
// The delta modules' costs in the plan (what the run will hold and compute); a module plan_deltas
// refuses adds nothing here, and the front ends report plan_deltas' error themselves.
void add_delta_costs(SlotPlan& plan, const std::vector<PlanModel>& models, bool named) {
  const auto deltas = plan_deltas(models, plan.selected, named);
  if (deltas.error) return;
  for (const auto& [module, why] : deltas.skipped) plan.skipped[module] = why;
  const double M = static_cast<double>(models.size());
  for (const auto& d : deltas.modules) {
    PlannedDelta c{d.module, d.m, d.n};
    int64_t r_max = 0, widest = 0;
    for (const auto& model : models) {
      for (const auto* key : {&d.b_key, &d.a_key}) widest = std::max(widest, itemsize(model.tensors.at(*key).dtype));
      const int64_t r = matrix_shape(model.tensors.at(d.b_key).shape)->second;
      c.rank_sum += r, r_max = std::max(r_max, r);
    }
    const double R = static_cast<double>(c.rank_sum);
    c.multiply_adds = R * R * static_cast<double>(d.m + d.n) / 2 + 4 * M * M * M;
    // the accumulator's store (every factor padded to the largest rank, in the widest dtype read),
    // lora_gram's buffers (at most: float64 GEMMs on converted panels), K and a few M × M
    // temporaries, and the null's kept draws (20 M × M, at most 256 MiB)
    const int64_t MM = 8 * static_cast<int64_t>(M * M);
    c.peak_bytes = static_cast<int64_t>(M) * r_max * (d.m + d.n) * widest +
                   unisub::detail::lora_gram_cpu_workspace_bytes(d.m, d.n, at::kDouble, widest != 8) + 4 * MM +
                   std::min<int64_t>(kDeltaNullDraws * MM, kDeltaNullKeepBytes);
    plan.peak_bytes = std::max(plan.peak_bytes, c.peak_bytes);
    plan.multiply_adds += c.multiply_adds;
    plan.deltas.push_back(std::move(c));
  }
}
}  // namespace

int64_t mode_slot_batch(int64_t m, int64_t n, int64_t itemsize, int64_t batch_size) {
  const int64_t thin = std::min(m, n), wide = std::max(m, n);
  if (wide < 1024 || thin <= 0 || batch_size * thin >= 2 * kMinHalfUpdateColumns) return batch_size;
  const int64_t wanted = (2 * kMinHalfUpdateColumns + thin - 1) / thin;  // both halves' columns
  const int64_t affordable = std::max<int64_t>(1, (int64_t{64} << 20) / std::max<int64_t>(1, m * n * itemsize));
  return std::max(batch_size, std::min(wanted, affordable));
}

PlanResult plan_slots(const std::vector<PlanModel>& models, const PlanOptions& o) {
  for (const auto& mo : o.modes)
    if (mo != "out" && mo != "in" && mo != "delta")
      throw std::invalid_argument("modes are 'out', 'in' or 'delta', got '" + mo + "'");
  if (o.max_gram_bytes < 1) throw std::invalid_argument("max_gram_bytes must be >= 1, got " + std::to_string(o.max_gram_bytes));
  if (o.batch_size < 1) throw std::invalid_argument("batch_size must be >= 1, got " + std::to_string(o.batch_size));
  std::vector<Pattern> patterns;
  if (o.patterns)
    for (const auto& p : *o.patterns) patterns.push_back(Pattern::slot_pattern(p));
  auto fail = [](std::string path, std::string message, std::string slot = "") {
    return PlanResult{std::nullopt, PlanError{std::move(path), std::move(message), std::move(slot)}};
  };
  // no modes: the selection alone (unisub.io.select, on one model's table)
  if (models.empty() || (models.size() < 2 && !o.modes.empty()))
    return fail(models.empty() ? "(no input)" : models[0].name,
                "need at least 2 models to analyse (a subspace shared by models), got " + std::to_string(models.size()));
  const auto& ref = models[0];
  const bool named = o.patterns.has_value();
  std::vector<std::string> factor_modes;
  for (const auto& mo : o.modes)
    if (mo != "delta") factor_modes.push_back(mo);

  SlotPlan plan;
  plan.models = static_cast<int64_t>(models.size());
  plan.max_gram_bytes = o.max_gram_bytes;
  // 1. selection on the reference model (sorted names, as the readers list them)
  for (const auto& [key, t] : ref.tensors) {
    if (named && std::none_of(patterns.begin(), patterns.end(), [&](const Pattern& p) { return p.matches(key); }))
      continue;
    if (!analysable_dtype(t.dtype)) {
      if (named)
        return fail(ref.file_of(key), "dtype " + t.dtype + " cannot be analysed (need one of F64, F32, F16, BF16)", key);
      plan.skipped[key] = "dtype " + t.dtype;
    } else if (t.shape.empty() || (t.shape.size() == 1 && !o.include_1d)) {
      plan.skipped[key] = t.shape.empty() ? "0-D tensor" : "1-D tensor (include_1d / --include-1d analyses it)";
    } else if (std::find(t.shape.begin(), t.shape.end(), 0) != t.shape.end()) {
      plan.skipped[key] = "empty shape " + shape_str(t.shape);
    } else {
      plan.selected.push_back(key);
    }
  }
  if (plan.selected.empty()) {
    std::string some;
    int shown = 0;
    for (const auto& [key, t] : ref.tensors) {
      if (shown == 5) break;
      some += (shown++ ? ", " : ": ") + key;
    }
    std::string what = "is a floating-point tensor of 2 or more dimensions";
    if (named) {
      what = "matches --slots";
      for (const auto& p : *o.patterns) what += " " + p;
      // the patterns matched, but only tensors that cannot be analysed as they are: say which, and why
      if (!plan.skipped.empty()) {
        std::string why;
        int listed = 0;
        for (const auto& [key, reason] : plan.skipped)
          if (listed++ < 5) why += (why.empty() ? "" : "; ") + key + ": " + reason;
        if (listed > 5) why += "; and " + std::to_string(listed - 5) + " more";
        return fail(ref.name, "no tensor that " + what + " can be analysed (" + why + ")");
      }
    }
    return fail(ref.name, "no tensor " + what + " (it has " + std::to_string(ref.tensors.size()) + " tensors" + some + ")");
  }
  if (o.modes.empty()) return {plan, std::nullopt};
  if (plan.models < 4)
    plan.split_half_note = std::to_string(plan.models) + " models: the split halves (even and odd model indices) need 2 models "
                                                                 "each, so no split-half stability is reported";
  if (std::find(o.modes.begin(), o.modes.end(), "delta") != o.modes.end()) add_delta_costs(plan, models, named);
  if (factor_modes.empty()) {
    plan.seconds = plan.multiply_adds / kMultiplyAddsPerSecond;
    return {plan, std::nullopt};
  }

  // 2. every model must hold each slot with the reference's shape and an analysable dtype: a named
  // slot that does not is an error naming the file; a default-selected one is skipped with why
  std::vector<std::string> common;
  std::map<std::string, PlanError> refused;  // what a skipped slot would have been, had it been named
  for (const auto& key : plan.selected) {
    const auto& rt = ref.tensors.at(key);
    std::string why;
    PlanError as_error;
    for (size_t i = 1; i < models.size() && why.empty(); ++i) {
      const auto& mdl = models[i];
      const auto it = mdl.tensors.find(key);
      if (it == mdl.tensors.end()) {
        as_error = {mdl.name, "missing (present in '" + ref.file_of(key) + "')", key};
        why = "missing in '" + mdl.name + "' (present in '" + ref.file_of(key) + "')";
      } else if (it->second.shape != rt.shape) {
        const auto msg = "shape " + shape_str(it->second.shape) + " differs from " + shape_str(rt.shape) + " in '" +
                         ref.file_of(key) + "'";
        as_error = {mdl.file_of(key), msg, key};
        why = msg + " (in '" + mdl.file_of(key) + "')";
      } else if (!analysable_dtype(it->second.dtype)) {
        const auto msg = "dtype " + it->second.dtype + " cannot be analysed (need one of F64, F32, F16, BF16)";
        as_error = {mdl.file_of(key), msg, key};
        why = msg + " (in '" + mdl.file_of(key) + "')";
      }
    }
    if (why.empty()) {
      common.push_back(key);
    } else {
      if (named) return {std::nullopt, as_error};
      plan.skipped[key] = why;
      refused.emplace(key, as_error);
    }
  }
  // nothing left to analyse: the first refusal is the error (as it was before default selections
  // that differ between models were skipped)
  if (common.empty()) {
    auto e = refused.at(plan.selected.front());
    if (plan.selected.size() > 1)
      e.message += " (and every other selected tensor was skipped, " + std::to_string(plan.selected.size()) + " in all)";
    return {std::nullopt, e};
  }

  // 3. the cost of each slot and mode; a mode whose Gram is beyond the budget is skipped
  const double M = static_cast<double>(plan.models);
  for (const auto& key : common) {
    const auto& t = ref.tensors.at(key);
    const auto [m, n] = *matrix_shape(t.shape);
    PlannedSlot s{key, t.shape, m, n, {}, 0, 0};
    std::vector<std::string> over;
    int64_t gram_total = 0;
    for (const auto& mo : factor_modes) {
      const int64_t d = mo == "out" ? m : n, other = mo == "out" ? n : m;
      const double dd = static_cast<double>(d);
      // 8·d² overflows int64 beyond d ≈ 1e9 only: shapes are far below
      const int64_t bytes = 8 * d * d;
      if (bytes > o.max_gram_bytes) {
        over.push_back(mo);
        plan.skipped[key + " [" + mo + "]"] =
            "the '" + mo + "' Gram is " + std::to_string(d) + " x " + std::to_string(d) + " float64 = " +
            bytes_str(static_cast<double>(bytes)) + ", above the budget " + bytes_str(static_cast<double>(o.max_gram_bytes)) +
            " (raise it with --max-gram-bytes)";
        continue;
      }
      s.modes.push_back({mo, d, bytes, M * dd * dd * static_cast<double>(other) + 3 * dd * dd * dd});
      s.multiply_adds += s.modes.back().multiply_adds;
      gram_total += bytes;
    }
    if (s.modes.empty()) {
      for (const auto& mo : over) plan.skipped.erase(key + " [" + mo + "]");
      std::string why = "every mode's Gram is above the budget " + bytes_str(static_cast<double>(o.max_gram_bytes)) +
                        " (raise it with --max-gram-bytes):";
      for (const auto& mo : over) {
        const int64_t d = mo == "out" ? m : n;
        why += " '" + mo + "' " + std::to_string(d) + " x " + std::to_string(d) + " = " +
               bytes_str(8.0 * static_cast<double>(d) * static_cast<double>(d));
      }
      plan.skipped[key] = why;
      continue;
    }
    // At the slot's end: the two half accumulators, their merged total and the kept bases (4 Grams
    // per mode), and the eigh of the largest mode (the input's copy, the eigenvectors and LAPACK's
    // 2·d² workspace, and one half's basis kept while the other half is decomposed: 5 of its
    // Grams). While reading: two batches as read (the next is read while one is accumulated) and
    // five m × n float64 matrices (means, one centred model). Measured (2 threads, float32 models
    // of 2 × 3000, 512 × 2048, 1024²): this is 0.6–1.0× the peak above the idle process, whose
    // rest is the libraries' and thread pools' memory; the earlier 5 Grams per mode was 0.4–0.55×.
    int64_t largest = 0;
    for (const auto& c : s.modes) largest = std::max(largest, c.gram_bytes);
    s.batch = mode_slot_batch(m, n, itemsize(t.dtype), o.batch_size);
    s.peak_bytes = 4 * gram_total + 5 * largest + 5 * 8 * m * n + 2 * s.batch * m * n * itemsize(t.dtype);
    plan.peak_bytes = std::max(plan.peak_bytes, s.peak_bytes);
    plan.multiply_adds += s.multiply_adds;
    plan.slots.push_back(std::move(s));
  }
  plan.seconds = plan.multiply_adds / kMultiplyAddsPerSecond;
  if (plan.slots.empty()) {
    std::string why;
    int shown = 0;
    for (const auto& key : plan.selected) {
      const auto it = plan.skipped.find(key);
      if (it == plan.skipped.end() || shown == 3) continue;
      why += (shown++ ? "; " : "") + key + ": " + it->second;
    }
    return fail(ref.name, "every selected tensor was skipped (" + std::to_string(plan.selected.size()) + " of them; " + why + ")");
  }
  return {plan, std::nullopt};
}

namespace {
// The run-level totals, the start of both the plan's JSON forms.
Json totals_of(const SlotPlan& p) {
  Json j = Json::object();
  j["models"] = p.models;
  j["max_gram_bytes"] = p.max_gram_bytes;
  j["peak_bytes"] = p.peak_bytes;
  j["multiply_adds"] = p.multiply_adds;
  j["seconds"] = p.seconds;
  j["split_half"] = p.split_half_note ? Json(*p.split_half_note) : Json();
  return j;
}
}  // namespace

Json SlotPlan::to_json() const {
  Json j = totals_of(*this);
  j["selected"] = selected;
  Json sl = Json::object();
  for (const auto& s : slots) {
    Json e = Json::object();
    e["shape"] = s.shape;
    e["matrix"] = std::vector<int64_t>{s.m, s.n};
    Json ms = Json::object();
    for (const auto& c : s.modes) {
      Json mc = Json::object();
      mc["dim"] = c.dim;
      mc["gram_bytes"] = c.gram_bytes;
      mc["multiply_adds"] = c.multiply_adds;
      ms[c.mode] = std::move(mc);
    }
    e["modes"] = std::move(ms);
    e["batch"] = s.batch;
    e["peak_bytes"] = s.peak_bytes;
    e["multiply_adds"] = s.multiply_adds;
    sl[s.key] = std::move(e);
  }
  j["slots"] = std::move(sl);
  if (!deltas.empty()) {
    Json dl = Json::object();
    for (const auto& d : deltas) {
      Json e = Json::object();
      e["matrix"] = std::vector<int64_t>{d.m, d.n};
      e["rank_sum"] = d.rank_sum;
      e["peak_bytes"] = d.peak_bytes;
      e["multiply_adds"] = d.multiply_adds;
      dl[d.module] = std::move(e);
    }
    j["deltas"] = std::move(dl);
  }
  Json sk = Json::object();
  for (const auto& [k, v] : skipped) sk[k] = v;
  j["skipped"] = std::move(sk);
  return j;
}

std::string SlotPlan::totals_json() const { return totals_of(*this).dump(); }

std::string SlotPlan::text() const {
  std::string out;
  if (slots.empty() && deltas.empty()) {
    out = "plan: " + std::to_string(models) + " models, " + std::to_string(selected.size()) + " tensors selected";
  } else {
    int64_t modes = 0;
    for (const auto& s : slots) modes += static_cast<int64_t>(s.modes.size());
    out = "plan: " + std::to_string(models) + " models, ";
    if (!slots.empty())
      out += std::to_string(slots.size()) + " slots (" + std::to_string(modes) + " slot-modes), " +
             std::to_string(skipped.size()) + " skipped";
    if (!deltas.empty()) out += std::string(slots.empty() ? "" : ", ") + std::to_string(deltas.size()) + " delta modules";
    out += "; peak memory ~" + bytes_str(static_cast<double>(peak_bytes)) + " (largest slot), " +
           format("~%.2g multiply-adds, roughly %.0f s at %.0e/s", multiply_adds, seconds, kMultiplyAddsPerSecond);
  }
  for (const auto& [k, v] : skipped)
    if (v.find("budget") != std::string::npos) out += "\n  skipped " + k + ": " + v;
  if (split_half_note) out += "\n  " + *split_half_note;
  return out;
}

std::map<std::string, std::pair<std::string, std::string>> lora_pairs(const std::vector<std::string>& keys) {
  // "^(.+)\.lora_(embedding_)?A(\.weight)?$" by suffixes, not a regex (std::regex recursed once per
  // character and overflowed the stack on very long names)
  std::map<std::string, std::pair<std::string, std::string>> pairs;
  const std::set<std::string> all(keys.begin(), keys.end());
  auto ends_with = [](const std::string& s, const std::string& t) {
    return s.size() > t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
  };
  for (const auto& key : all) {
    for (const std::string suffix : {".weight", ""}) {
      bool matched = false;
      for (const std::string tag : {".lora_A", ".lora_embedding_A"}) {
        const auto tail = tag + suffix;
        if (!ends_with(key, tail)) continue;
        matched = true;
        const auto module = key.substr(0, key.size() - tail.size());
        const auto b_key = module + tag.substr(0, tag.size() - 1) + "B" + suffix;
        if (all.count(b_key)) pairs[module] = {key, b_key};
      }
      if (matched) break;
    }
  }
  return pairs;
}

namespace {

// Why an adapter's weight change is not s·B·A, which --modes delta assumes, or "".
std::string not_plain_lora(const PlanModel& m) {
  const std::string advice = "; analyse its factors with --modes out in";
  if (m.dora)
    return "a DoRA adapter (use_dora): its weight change is a rescaled direction, not s·B·A, so --modes delta would "
           "misreport it" + advice;
  if (!m.peft_type.empty() && m.peft_type != "LORA")
    return "peft_type '" + m.peft_type + "' in adapter_config.json: --modes delta reads LoRA adapters (peft_type "
           "'LORA'), whose weight change is s·B·A" + advice;
  for (const auto& [key, _] : m.tensors) {
    if (key.find(".lora_magnitude_vector") != std::string::npos)
      return "a DoRA adapter (it holds '" + key + "'): its weight change is a rescaled direction, not s·B·A" + advice;
    if (key.find(".lora_E") != std::string::npos || key.find(".ranknum") != std::string::npos)
      return "an AdaLoRA adapter (it holds '" + key + "'): its weight change is B·diag(E)·A, not s·B·A" + advice;
  }
  return "";
}

}  // namespace

DeltaPlanResult plan_deltas(const std::vector<PlanModel>& models, const std::vector<std::string>& selected,
                            bool named) {
  DeltaPlanResult out;
  auto fail = [&](std::string path, std::string message, std::string slot = "") {
    out.error = PlanError{std::move(path), std::move(message), std::move(slot)};
    out.modules.clear();
    out.skipped.clear();
    return out;
  };
  if (models.empty()) return fail("(none)", "no checkpoints given");
  for (const auto& m : models) {
    if (!m.adapter)
      return fail(m.name, "--modes delta analyses LoRA deltas ΔW = s·B·A and needs PEFT adapter folders "
                          "(adapter_config.json gives s); this is not one");
    if (const auto why = not_plain_lora(m); !why.empty()) return fail(m.name, why);
  }
  const auto& ref = models[0];
  std::vector<std::string> keys;
  for (const auto& [k, _] : ref.tensors) keys.push_back(k);
  const std::set<std::string> sel(selected.begin(), selected.end());
  std::optional<PlanError> first_refusal;  // what a skipped module would have been, had it been named
  for (const auto& [module, ab] : lora_pairs(keys)) {
    if (!sel.count(ab.first) && !sel.count(ab.second)) continue;
    const auto& [a_key, b_key] = ab;
    DeltaModulePlan plan{module, a_key, b_key};
    std::optional<PlanError> refusal;  // a model this module does not fit in: an error if named, else skipped
    for (size_t i = 0; i < models.size() && !refusal; ++i) {
      const auto& m = models[i];
      for (const auto& key : {a_key, b_key}) {
        const auto it = m.tensors.find(key);
        if (it == m.tensors.end()) {
          refusal = PlanError{m.name, "missing (present in '" + ref.file_of(key) + "')", key};
          break;
        }
        if (!analysable_dtype(it->second.dtype)) {
          refusal = PlanError{m.file_of(key),
                              "dtype " + it->second.dtype + " cannot be analysed (need one of F64, F32, F16, BF16)", key};
          break;
        }
      }
      if (refusal) break;
      const auto& a = m.tensors.at(a_key).shape;
      const auto& b = m.tensors.at(b_key).shape;
      const auto as = matrix_shape(a), bs = matrix_shape(b);
      if (!as || !bs || as->first != bs->second)  // a broken adapter, named or not
        return fail(m.file_of(b_key), "lora_B " + shape_str(b) + " and lora_A " + shape_str(a) + " have different ranks",
                    b_key);
      const int64_t rows = bs->first, cols = as->second;
      if (i == 0) {
        plan.m = rows, plan.n = cols;
      } else if (rows != plan.m || cols != plan.n) {
        refusal = PlanError{m.file_of(b_key),
                            "ΔW = B·A of shape " + shape_str({rows, cols}) + " differs from " +
                                shape_str({plan.m, plan.n}) + " in '" + ref.file_of(b_key) + "'",
                            b_key};
      }
    }
    if (!refusal) {
      out.modules.push_back(std::move(plan));
      continue;
    }
    if (named) return fail(refusal->path, refusal->message, refusal->slot);
    out.skipped[module + ".delta"] = refusal->slot + ": " + refusal->message + " (in '" + refusal->path + "')";
    if (!first_refusal) first_refusal = refusal;
  }
  if (out.modules.empty()) {
    if (first_refusal) {
      auto e = *first_refusal;
      if (out.skipped.size() > 1)
        e.message += " (and every other module was skipped, " + std::to_string(out.skipped.size()) + " in all)";
      return fail(e.path, e.message, e.slot);
    }
    return fail(ref.name, "--modes delta: no selected tensor is the lora_A or lora_B of a module that has both factors");
  }
  return out;
}

}  // namespace unisub::analysis
