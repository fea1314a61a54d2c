// torch.ops.unisub.plan_slots: the slot plan (plan.h) for Python, which passes every model's slot
// table as JSON (the tables come from libunisub's reader, or from torch.load for .pt / .bin files).
#include <torch/library.h>

#include <stdexcept>

#include "analysis/json.h"
#include "analysis/json_writer.h"
#include "analysis/pattern.h"
#include "analysis/plan.h"

namespace unisub::analysis {
namespace {

// models_json: [{"name": str, "tensors": {key: [dtype, [dims...], file or null]}, "adapter": bool,
// "dora": bool, "peft_type": str}, ...] ("adapter" and "dora" optional: false; "peft_type": "")
std::vector<PlanModel> models_of(const std::string& text) {
  constexpr const char* op = "unisub.plan_slots";
  json::Value doc;
  try {
    doc = json::parse(text);
  } catch (const json::ParseError& e) {
    TORCH_CHECK(false, op, ": models_json is not valid JSON: ", e.what());
  }
  TORCH_CHECK(doc.is_array(), op, ": models_json must be an array of models, got ", doc.type_name());
  std::vector<PlanModel> models;
  for (const auto& m : doc.items) {
    const auto* name = m.find("name");
    const auto* tensors = m.find("tensors");
    TORCH_CHECK(m.is_object() && name && name->is_string() && tensors && tensors->is_object(), op,
                ": each model must be {\"name\": str, \"tensors\": {...}}, got ", m.dump());
    PlanModel pm;
    pm.name = name->text;
    if (const auto* a = m.find("adapter"); a && a->is_bool()) pm.adapter = a->boolean;
    if (const auto* d = m.find("dora"); d && d->is_bool()) pm.dora = d->boolean;
    if (const auto* t = m.find("peft_type"); t && t->is_string()) pm.peft_type = t->text;
    for (const auto& t : tensors->members) {
      const auto& v = t.value;
      TORCH_CHECK(v.is_array() && v.items.size() == 3 && v.items[0].is_string() && v.items[1].is_array() &&
                      (v.items[2].is_string() || v.items[2].is_null()),
                  op, ": tensor '", t.key, "' must be [dtype, [dims...], file or null], got ", v.dump());
      PlanTensor pt{v.items[0].text, {}};
      for (const auto& d : v.items[1].items) {
        TORCH_CHECK(d.is_number() && d.integer && d.int_value >= 0, op, ": tensor '", t.key,
                    "': dimensions must be non-negative integers, got ", d.dump());
        pt.shape.push_back(d.int_value);
      }
      pm.tensors.emplace(t.key, std::move(pt));
      if (v.items[2].is_string()) pm.files.emplace(t.key, v.items[2].text);
    }
    models.push_back(std::move(pm));
  }
  return models;
}

// A planning error as the front ends read it: {"path", "slot", "message", "what"}.
Json error_json(const PlanError& error) {
  Json e = Json::object();
  e["path"] = error.path;
  e["slot"] = error.slot;
  e["message"] = error.message;
  e["what"] = error.what();
  return e;
}

// {"plan": {...}, "text": "...", "totals": "..."} or {"error": {"path", "slot", "message"}} or {"usage": "..."}:
// the front ends raise their own error types (CheckpointError, exit status 2) from these.
std::string plan_slots_op(const std::string& models_json, std::optional<std::vector<std::string>> patterns,
                          bool include_1d, std::vector<std::string> modes, int64_t max_gram_bytes, int64_t batch_size) {
  const auto models = models_of(models_json);
  PlanOptions o{std::move(patterns), include_1d, std::move(modes), max_gram_bytes, batch_size};
  Json out = Json::object();
  try {
    const auto res = plan_slots(models, o);
    if (res.error) {
      out["error"] = error_json(*res.error);
    } else {
      out["plan"] = res.plan->to_json();
      out["text"] = res.plan->text();
      out["totals"] = res.plan->totals_json();  // report.json's "plan", as text: the same bytes from both
    }
  } catch (const std::invalid_argument& e) {
    out["usage"] = std::string(e.what());
  }
  return out.dump();
}

// {"modules": [[module, a_key, b_key, m, n], ...], "skipped": {slot: why}} or {"error": {"path",
// "slot", "message", "what"}}
std::string plan_deltas_op(const std::string& models_json, std::vector<std::string> selected, bool named) {
  const auto res = plan_deltas(models_of(models_json), selected, named);
  Json out = Json::object();
  if (res.error) {
    out["error"] = error_json(*res.error);
    return out.dump();
  }
  Json list = Json::array();
  for (const auto& d : res.modules) {
    Json item = Json::array();
    item.push_back(d.module), item.push_back(d.a_key), item.push_back(d.b_key), item.push_back(d.m), item.push_back(d.n);
    list.push_back(std::move(item));
  }
  out["modules"] = std::move(list);
  Json skipped = Json::object();
  for (const auto& [k, v] : res.skipped) skipped[k] = v;
  out["skipped"] = std::move(skipped);
  return out.dump();
}

std::tuple<std::vector<std::string>, std::vector<std::string>, std::vector<std::string>> lora_pairs_op(
    std::vector<std::string> keys) {
  std::vector<std::string> modules, a, b;
  for (const auto& [module, ab] : lora_pairs(keys)) modules.push_back(module), a.push_back(ab.first), b.push_back(ab.second);
  return {modules, a, b};
}

}  // namespace
}  // namespace unisub::analysis

TORCH_LIBRARY_FRAGMENT(unisub, m) {
  m.def("plan_slots(str models_json, str[]? patterns, bool include_1d, str[] modes, int max_gram_bytes, "
        "int batch_size) -> str",
        &unisub::analysis::plan_slots_op);
  m.def("plan_deltas(str models_json, str[] selected, bool named=False) -> str", &unisub::analysis::plan_deltas_op);
  m.def("lora_pairs(str[] keys) -> (str[], str[], str[])", &unisub::analysis::lora_pairs_op);
  // the slot-pattern rule (pattern.h) for other callers (unisub.lora selects modules with it)
  m.def("slot_patterns_match(str[] keys, str[] patterns) -> bool[]",
        [](std::vector<std::string> keys, std::vector<std::string> patterns) {
          std::vector<unisub::analysis::Pattern> compiled;
          try {
            for (const auto& p : patterns) compiled.push_back(unisub::analysis::Pattern::slot_pattern(p));
          } catch (const std::invalid_argument& e) {
            TORCH_CHECK_VALUE(false, e.what());
          }
          c10::List<bool> out;
          for (const auto& k : keys) {
            bool any = false;
            for (const auto& p : compiled) any = any || p.matches(k);
            out.push_back(any);
          }
          return out;
        });
  // [m, n], or [] for a scalar (which cannot be analysed)
  m.def("analysis_matrix_shape(int[] shape) -> int[]", [](std::vector<int64_t> shape) {
    const auto mn = unisub::analysis::matrix_shape(shape);
    return mn ? std::vector<int64_t>{mn->first, mn->second} : std::vector<int64_t>{};
  });
}
