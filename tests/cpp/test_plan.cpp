// The slot plan and the pattern matcher through the C++ API (what unisub-analyze calls): Python's
// glob rules, default selections that differ between models skipped, named ones refused with the
// file, the Gram budget per mode, and the error for fewer than 2 models.
#include <boost/test/unit_test.hpp>

#include <string>
#include <vector>

#include "analysis/pattern.h"
#include "analysis/plan.h"
#include "analysis/reader.h"

namespace {

using unisub::analysis::Pattern;
using unisub::analysis::PlanModel;
using unisub::analysis::PlanOptions;

PlanModel model(const std::string& name, int64_t labels) {
  PlanModel m;
  m.name = name;
  m.tensors["emb.weight"] = {"F32", {3000, 12}};
  m.tensors["q.weight"] = {"BF16", {12, 12}};
  m.tensors["ids"] = {"I64", {1, 16}};
  m.tensors["norm.weight"] = {"F32", {12}};
  m.tensors["classifier.weight"] = {"F32", {labels, 12}};
  for (const auto& [k, _] : m.tensors) m.files[k] = name + "/model.safetensors";
  return m;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(slot_plan)

// What CPython's fnmatch.translate gives, in PCRE2 spelling (\z for Python's \Z).
BOOST_AUTO_TEST_CASE(globs_translate_as_python_does) {
  using unisub::analysis::translate_glob;
  BOOST_TEST(translate_glob("*.w") == "(?s:.*\\.w)\\z");
  BOOST_TEST(translate_glob("a**?") == "(?s:a.*.)\\z");
  BOOST_TEST(translate_glob("[!a-c]x") == "(?s:[^a-c]x)\\z");
  BOOST_TEST(translate_glob("[z-a]") == "(?s:(?!))\\z");  // a reversed range matches nothing
  BOOST_TEST(translate_glob("a[") == "(?s:a\\[)\\z");     // unclosed: literal
  BOOST_TEST(translate_glob("[]]") == "(?s:[]])\\z");     // a leading ']' is literal
  BOOST_TEST(translate_glob("[^x]") == "(?s:[\\^x])\\z"); // '^' is no negation in a Python glob
  BOOST_TEST(translate_glob("a\\b") == "(?s:a\\\\b)\\z"); // backslashes are literal
  // '.', ':', '=' and '[' in a class are escaped: PCRE2 would read "[..." as a collating element
  BOOST_TEST(translate_glob("[.:=[]") == "(?s:[\\.\\:\\=\\[])\\z");
}

BOOST_AUTO_TEST_CASE(patterns_match_as_fnmatchcase_and_re_search) {
  if (!unisub::analysis::built_with_pcre2()) return;  // globs fall back to fnmatch(3)
  BOOST_TEST(Pattern::slot_pattern("*attn*").matches("layers.0.attn.q"));
  BOOST_TEST(!Pattern::slot_pattern("layers.?.q").matches("layers.10.q"));
  BOOST_TEST(Pattern::slot_pattern("[^x]").matches("^"));
  BOOST_TEST(!Pattern::slot_pattern("[^x]").matches("a"));
  BOOST_TEST(Pattern::slot_pattern("*").matches("a\nb"));  // DOTALL, as fnmatch
  BOOST_TEST(Pattern::slot_pattern("?[...]").matches("a."));  // was refused as a POSIX collating element
  BOOST_TEST(!Pattern::slot_pattern("?[...]").matches("ab"));
  BOOST_TEST(Pattern::slot_pattern("re:mlp\\.\\d+").matches("layers.3.mlp.12.weight"));  // searched
  BOOST_TEST(!Pattern::slot_pattern("re:^mlp").matches("layers.mlp"));
  BOOST_CHECK_THROW(Pattern::slot_pattern("re:("), std::invalid_argument);
}

BOOST_AUTO_TEST_CASE(defaults_skip_with_reasons_and_named_slots_are_errors) {
  const std::vector<PlanModel> models{model("a", 2), model("b", 4), model("c", 2), model("d", 2)};
  PlanOptions o;
  o.max_gram_bytes = 1 << 20;  // 1 MiB: the 3000 x 3000 out Gram of emb.weight is over it
  const auto res = unisub::analysis::plan_slots(models, o);
  BOOST_REQUIRE(res.plan && !res.error);
  const auto& p = *res.plan;
  BOOST_TEST(p.skipped.at("ids") == "dtype I64");
  BOOST_TEST(p.skipped.at("norm.weight").rfind("1-D tensor", 0) == 0);
  BOOST_TEST(p.skipped.at("classifier.weight") ==
             "shape [4, 12] differs from [2, 12] in 'a/model.safetensors' (in 'b/model.safetensors')");
  BOOST_TEST(p.skipped.at("emb.weight [out]").find("3000 x 3000 float64 = 68.7 MiB, above the budget 1.0 MiB") !=
             std::string::npos);
  BOOST_REQUIRE(p.slots.size() == 2u);
  BOOST_TEST(p.slots[0].key == "emb.weight");
  BOOST_REQUIRE(p.slots[0].modes.size() == 1u);
  BOOST_TEST(p.slots[0].modes[0].mode == "in");
  BOOST_TEST(p.slots[1].modes[0].gram_bytes == 8 * 12 * 12);
  BOOST_TEST(p.slots[1].modes[0].multiply_adds == 4.0 * 12 * 12 * 12 + 3.0 * 12 * 12 * 12);
  BOOST_TEST(!p.split_half_note.has_value());

  o.patterns = std::vector<std::string>{"classifier.*"};
  const auto named = unisub::analysis::plan_slots(models, o);
  BOOST_REQUIRE(named.error && !named.plan);
  BOOST_TEST(named.error->what() == "b/model.safetensors: slot 'classifier.weight': shape [4, 12] differs from [2, 12] "
                                    "in 'a/model.safetensors'");
  o.patterns = std::vector<std::string>{"ids"};
  const auto dtype = unisub::analysis::plan_slots(models, o);
  BOOST_REQUIRE(dtype.error);
  BOOST_TEST(dtype.error->slot == "ids");
}

BOOST_AUTO_TEST_CASE(model_counts) {
  const auto one = unisub::analysis::plan_slots({model("a", 2)}, PlanOptions{});
  BOOST_REQUIRE(one.error);
  BOOST_TEST(one.error->message.find("need at least 2 models") != std::string::npos);
  const auto three = unisub::analysis::plan_slots({model("a", 2), model("b", 2), model("c", 2)}, PlanOptions{});
  BOOST_REQUIRE(three.plan);
  BOOST_TEST(three.plan->split_half_note.value().find("no split-half stability") != std::string::npos);
  PlanOptions select_only;
  select_only.modes.clear();  // the selection alone: one model will do
  BOOST_TEST(unisub::analysis::plan_slots({model("a", 2)}, select_only).plan.has_value());
}

// Thin models of a large Gram are read more at a time, so that each half's Gram update has at
// least 512 columns; within 64 MiB of batch; --batch-size otherwise.
BOOST_AUTO_TEST_CASE(thin_slots_of_large_grams_get_larger_batches) {
  using unisub::analysis::mode_slot_batch;
  BOOST_TEST(mode_slot_batch(16, 4096, 2, 8) == 64);    // rank-16 LoRA A: 64 × 16 = 1024 columns, 512 a half
  BOOST_TEST(mode_slot_batch(4096, 16, 2, 8) == 64);    // its B
  BOOST_TEST(mode_slot_batch(16, 4096, 2, 100) == 100); // already enough
  BOOST_TEST(mode_slot_batch(768, 768, 2, 8) == 8);     // a full weight: its own columns suffice
  BOOST_TEST(mode_slot_batch(6, 5, 4, 3) == 3);         // a small Gram: no gain
  BOOST_TEST(mode_slot_batch(1, 50000, 4, 8) == 335);   // 1 column a model, capped at 64 MiB a batch
  BOOST_TEST(mode_slot_batch(16, 10000000, 4, 8) == 8); // never below --batch-size
  // the plan carries it, and counts the larger batch in the slot's peak
  std::vector<PlanModel> models;
  for (const char* name : {"a", "b", "c", "d"}) {
    PlanModel m;
    m.name = name;
    m.tensors["lora.weight"] = {"F16", {16, 4096}};
    m.files["lora.weight"] = std::string(name) + ".safetensors";
    models.push_back(m);
  }
  const auto planned = unisub::analysis::plan_slots(models, PlanOptions{});
  BOOST_REQUIRE(planned.plan && planned.plan->slots.size() == 1);
  BOOST_TEST(planned.plan->slots[0].batch == 64);
}

BOOST_AUTO_TEST_SUITE_END()
