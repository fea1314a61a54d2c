#include "analysis/run_report.h"

#include <c10/util/Exception.h>

#include <map>

#include "analysis/json.h"
#include "analysis/json_writer.h"

namespace unisub::analysis {
namespace {

// What of an entry the summary reads.
const std::vector<std::vector<std::string>> kSummaryPaths = {
    {"modes", "*", "rank"}, {"modes", "*", "dim"}, {"modes", "*", "null", "components_above_mp_edge"},
    {"modes", "*", "null", "components_above_null"}, {"modes", "*", "split_half", "max_sin"},
    {"energy", "mean_share"}, {"compression", "ratio"}};

json::Value parse_entry(const std::string& slot, const std::string& text) {
  try {
    auto v = json::parse_paths(text, kSummaryPaths);
    TORCH_CHECK_VALUE(v.is_object(), "report: the entry of slot '", slot, "' is not a JSON object");
    return v;
  } catch (const json::ParseError& e) {
    TORCH_CHECK_VALUE(false, "report: the entry of slot '", slot, "' is not valid JSON: ", e.what());
  }
}

// Averages over slots, per mode (the fields tables and plots read). Each entry is parsed in turn and
// only its sums kept: all of them parsed at once (500-model delta slots carry their scores) held more
// memory than any slot's own work. Sums run over the entries in their order, as before.
Json summarize(const std::vector<std::pair<std::string, std::string>>& entries) {
  struct Sums {
    double n = 0, rank = 0, fraction = 0, above = 0, above_null = 0, sin_sum = 0, sin_n = 0;
  };
  std::map<std::string, Sums> modes;
  double share = 0, ratio = 0;
  for (const auto& [slot, text] : entries) {
    const auto e = parse_entry(slot, text);
    if (const auto* ms = e.find("modes"); ms && ms->is_object()) {
      for (const auto& mem : ms->members) {
        const auto* m = &mem.value;
        auto& t = modes[mem.key];
        t.n += 1;
        const double r = m->number_at({"rank"}), d = m->number_at({"dim"});
        t.rank += r;
        t.fraction += d > 0 ? r / d : 0.0;
        t.above += m->number_at({"null", "components_above_mp_edge"});
        // against the slot's own null (the norm-matched one for LoRA deltas; null.kind says which)
        t.above_null += m->number_at({"null", "components_above_null"});
        if (const auto* sh = m->find("split_half"); sh && sh->is_object())
          t.sin_sum += sh->number_at({"max_sin"}), t.sin_n += 1;
      }
    }
    share += e.number_at({"energy", "mean_share"});
    ratio += e.number_at({"compression", "ratio"});
  }
  Json summary = Json::object();
  for (const auto& [mode, t] : modes) {
    Json s = Json::object();
    s["slots"] = static_cast<int64_t>(t.n);
    s["mean_rank"] = t.rank / t.n;
    s["mean_rank_fraction"] = t.fraction / t.n;
    s["mean_components_above_mp_edge"] = t.above / t.n;
    s["mean_components_above_null"] = t.above_null / t.n;
    s["mean_split_half_max_sin"] = t.sin_n > 0 ? t.sin_sum / t.sin_n : 0.0;
    summary[mode] = s;
  }
  if (!entries.empty()) {
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
  const auto summary = summarize(entries);  // also checks that every entry is a JSON object
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
  j["summary"] = summary;
  if (!profile.empty()) j["profile"] = Json::raw(profile);
  return j.dump() + "\n";
}

}  // namespace unisub::analysis
