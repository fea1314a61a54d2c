#include "analysis/run_report.h"

#include <c10/util/Exception.h>

#include <map>
#include <set>

#include "analysis/json.h"
#include "analysis/json_writer.h"

namespace unisub::analysis {
namespace {

json::Value parse_entry(const std::string& slot, const std::string& text) {
  try {
    auto v = json::parse(text);
    TORCH_CHECK_VALUE(v.is_object(), "report: the entry of slot '", slot, "' is not a JSON object");
    return v;
  } catch (const json::ParseError& e) {
    TORCH_CHECK_VALUE(false, "report: the entry of slot '", slot, "' is not valid JSON: ", e.what());
  }
}

const json::Value* path(const json::Value& v, std::initializer_list<const char*> keys) {
  const json::Value* cur = &v;
  for (const char* k : keys) {
    cur = cur->find(k);
    if (!cur) return nullptr;
  }
  return cur;
}

double number(const json::Value* v) { return v && v->is_number() ? v->number : 0.0; }

// Averages over slots, per mode (the fields tables and plots read).
Json summarize(const std::vector<std::pair<std::string, json::Value>>& entries) {
  Json summary = Json::object();
  std::set<std::string> modes;
  for (const auto& [_, e] : entries)
    if (const auto* m = e.find("modes"); m && m->is_object())
      for (const auto& mem : m->members) modes.insert(mem.key);
  for (const auto& mode : modes) {
    double n = 0, rank = 0, fraction = 0, above = 0, above_null = 0, sin_sum = 0, sin_n = 0;
    for (const auto& [_, e] : entries) {
      const auto* m = path(e, {"modes", mode.c_str()});
      if (!m) continue;
      n += 1;
      const double r = number(m->find("rank")), d = number(m->find("dim"));
      rank += r;
      fraction += d > 0 ? r / d : 0.0;
      above += number(path(*m, {"null", "components_above_mp_edge"}));
      // against the slot's own null (the norm-matched one for LoRA deltas; null.kind says which)
      above_null += number(path(*m, {"null", "components_above_null"}));
      if (const auto* s = m->find("split_half"); s && s->is_object()) sin_sum += number(s->find("max_sin")), sin_n += 1;
    }
    if (n == 0) continue;
    Json s = Json::object();
    s["slots"] = static_cast<int64_t>(n);
    s["mean_rank"] = rank / n;
    s["mean_rank_fraction"] = fraction / n;
    s["mean_components_above_mp_edge"] = above / n;
    s["mean_components_above_null"] = above_null / n;
    s["mean_split_half_max_sin"] = sin_n > 0 ? sin_sum / sin_n : 0.0;
    summary[mode] = s;
  }
  if (!entries.empty()) {
    double share = 0, ratio = 0;
    for (const auto& [_, e] : entries) {
      share += number(path(e, {"energy", "mean_share"}));
      ratio += number(path(e, {"compression", "ratio"}));
    }
    summary["mean_energy_share_of_mean"] = share / static_cast<double>(entries.size());
    summary["mean_compression_ratio"] = ratio / static_cast<double>(entries.size());
  }
  return summary;
}

}  // namespace

std::string options_json(const RunOptions& o) {
  Json j = Json::object();
  j["slots"] = Json(o.slots);
  j["modes"] = Json(o.modes);
  j["energy"] = o.energy ? Json(*o.energy) : Json();
  j["rank"] = o.rank ? Json(*o.rank) : Json();
  j["center"] = o.center;
  j["batch_size"] = o.batch_size;
  j["world"] = o.world;
  j["scale_lora"] = o.scale_lora;
  j["include_1d"] = o.include_1d;
  j["taus"] = Json(o.taus);
  j["error_ranks"] = Json(o.error_ranks);
  j["max_gram_bytes"] = o.max_gram_bytes;
  j["gram_precision"] = o.gram_precision;
  if (!o.delta_slots.empty()) {
    j["delta_slots"] = Json(o.delta_slots);
    j["eigen_weights"] = o.eigen_weights;
  }
  return j.dump();
}

std::string run_json(const std::vector<std::string>& sources, const std::vector<int64_t>& source_bytes,
                     const std::string& options) {
  TORCH_CHECK_VALUE(sources.size() == source_bytes.size(), "run_json: one size per source");
  Json j = Json::object();
  j["format"] = "unisub.run/1";
  Json list = Json::array();
  for (size_t i = 0; i < sources.size(); ++i) {
    Json item = Json::array();
    item.push_back(sources[i]);
    item.push_back(source_bytes[i]);
    list.push_back(item);
  }
  j["sources"] = list;
  j["options"] = Json::raw(options);
  return j.dump();
}

std::string report_json(const std::string& tool, const std::vector<std::string>& sources, const std::string& options,
                        const std::vector<std::pair<std::string, std::string>>& skipped,
                        const std::vector<std::pair<std::string, std::string>>& entries,
                        const std::string& profile, const std::string& plan) {
  std::vector<std::pair<std::string, json::Value>> parsed;
  for (const auto& [slot, text] : entries) parsed.emplace_back(slot, parse_entry(slot, text));
  Json j = Json::object();
  j["format"] = "unisub.report/1";
  j["tool"] = tool;
  j["models"] = static_cast<int64_t>(sources.size());
  j["sources"] = Json(sources);
  j["options"] = Json::raw(options);
  Json skip = Json::object();
  for (const auto& [slot, why] : skipped) skip[slot] = why;
  j["skipped"] = skip;
  if (!plan.empty()) j["plan"] = Json::raw(plan);
  Json slots = Json::object();
  for (const auto& [slot, text] : entries) slots[slot] = Json::raw(text);
  j["slots"] = slots;
  j["summary"] = summarize(parsed);
  if (!profile.empty()) j["profile"] = Json::raw(profile);
  return j.dump() + "\n";
}

}  // namespace unisub::analysis
