// PEFT's adapter_config.json rules. rank_pattern / alpha_pattern keys are Python regular
// expressions, and PEFT picks a module's key as peft.utils.other.get_pattern_key does: the first
// key, in file order, for which re.match(rf"(.*\.)?({key})$", module) succeeds; when none does, the
// module name itself is looked up. We compile the same wrapped expression with PCRE2 (anchored at
// the start as re.match is; "$" also matches before a final newline, as in Python), whose matcher
// keeps its backtracking on the heap: std::regex recursed and crashed on long module names.
// The matcher is pattern.cpp's, shared with the analysis' slot patterns.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "analysis/json.h"
#include "analysis/pattern.h"
#include "analysis/reader.h"


namespace fs = std::filesystem;

namespace unisub::analysis {

#ifdef UNISUB_HAVE_PCRE2
bool built_with_pcre2() { return true; }
#else
bool built_with_pcre2() { return false; }
#endif

struct PatternSet {
  struct Entry {
    std::string key;
    double value = 0;
    std::optional<Pattern> pattern;  // absent only without PCRE2 (then a config with patterns is refused)
  };
  std::vector<Entry> entries;

  // The value for `module` as PEFT gives it, or nullptr (then the config's default applies).
  const Entry* find(const std::string& module, const std::string& where, const char* field) const {
    for (const auto& e : entries)
      if (matches(e, module, where, field)) return &e;
    for (const auto& e : entries)  // get_pattern_key returned the module name itself
      if (e.key == module) return &e;
    return nullptr;
  }

 private:
  static bool matches(const Entry& e, const std::string& module, const std::string& where, const char* field) {
    if (!e.pattern) return false;
    try {
      return e.pattern->matches(module);
    } catch (const std::runtime_error& err) {
      throw ReadError(where, std::string(field) + " key '" + e.key + "': " + err.what());
    }
  }
};

namespace {

std::shared_ptr<const PatternSet> read_patterns(const json::Value* v, const char* field, bool integer_values,
                                                const std::string& path) {
  auto set = std::make_shared<PatternSet>();
  if (!v || v->is_null()) return set;
  if (!v->is_object())
    throw ReadError(path, std::string(field) + " must map module patterns to values, got " + v->type_name() + " " + v->dump());
  if (!v->members.empty() && !built_with_pcre2())
    throw ReadError(path, std::string("has a ") + field + ", but this libunisub was built without PCRE2, which matching "
                          "PEFT's patterns needs (apt-get install libpcre2-dev, then rebuild)");
  for (const auto& m : v->members) {
    const std::string what = std::string(field) + "['" + m.key + "']";
    const auto& x = m.value;
    if (integer_values ? !(x.is_number() && x.integer && x.int_value > 0) : !(x.is_number() && std::isfinite(x.number)))
      throw ReadError(path, what + " must be " + (integer_values ? "a positive integer" : "a finite number") + ", got " + x.dump());
    PatternSet::Entry e{m.key, integer_values ? static_cast<double>(x.int_value) : x.number, std::nullopt};
    if (built_with_pcre2()) {
      try {
        e.pattern = Pattern::regex("(.*\\.)?(" + m.key + ")$", /*anchored=*/true, m.key);
      } catch (const std::invalid_argument& err) {
        throw ReadError(path, std::string(field) + " " + err.what());
      }
    }
    set->entries.push_back(std::move(e));
  }
  return set;
}

// ".lora_A" etc. in a name as analysed: (module, is_B, is_bias), or no factor.
struct Factor {
  std::string module;
  bool b = false, bias = false;
};

std::optional<Factor> factor_of(const std::string& key) {
  for (const char* tag : {".lora_embedding_A", ".lora_embedding_B", ".lora_A", ".lora_B"}) {
    const auto at = key.find(tag);
    if (at == std::string::npos) continue;
    const std::string t(tag);
    const auto rest = key.substr(at + t.size());
    return Factor{key.substr(0, at), t.back() == 'B', rest == ".bias"};
  }
  return std::nullopt;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace

AdapterConfig AdapterConfig::read(const std::string& folder) {
  AdapterConfig cfg;
  cfg.path = (fs::path(folder) / "adapter_config.json").string();
  {
    std::ifstream in(cfg.path, std::ios::binary);
    if (!in) throw ReadError(cfg.path, std::string("cannot read adapter config: ") + std::strerror(errno));
    std::ostringstream ss;
    ss << in.rdbuf();
    cfg.text = ss.str();
  }
  json::Value doc;
  try {
    doc = json::parse(cfg.text);
  } catch (const json::ParseError& e) {
    throw ReadError(cfg.path, std::string("cannot read adapter config: invalid JSON: ") + e.what());
  }
  if (!doc.is_object()) throw ReadError(cfg.path, std::string("adapter config must be a JSON object, got ") + doc.type_name());
  if (const auto* r = doc.find("r"); r) {
    if (!(r->is_number() && r->integer && r->int_value > 0))
      throw ReadError(cfg.path, "r must be a positive integer, got " + r->dump());
    cfg.r = r->int_value;
  }
  if (const auto* a = doc.find("lora_alpha"); a) {
    if (!(a->is_number() && std::isfinite(a->number)))
      throw ReadError(cfg.path, "lora_alpha must be a finite number, got " + a->dump());
    cfg.lora_alpha = a->number;
  }
  for (auto [field, target] : {std::pair{"use_rslora", &cfg.use_rslora}, std::pair{"use_dora", &cfg.use_dora}}) {
    const auto* v = doc.find(field);
    if (!v || v->is_null()) continue;
    if (!v->is_bool()) throw ReadError(cfg.path, std::string(field) + " must be true or false, got " + v->dump());
    *target = v->boolean;
  }
  if (const auto* v = doc.find("peft_type"); v && !v->is_null()) {
    if (!v->is_string()) throw ReadError(cfg.path, "peft_type must be a string, got " + v->dump());
    cfg.peft_type = v->text;
  }
  cfg.rank_pattern = read_patterns(doc.find("rank_pattern"), "rank_pattern", true, cfg.path);
  cfg.alpha_pattern = read_patterns(doc.find("alpha_pattern"), "alpha_pattern", false, cfg.path);
  return cfg;
}

std::pair<int64_t, double> AdapterConfig::rank_and_alpha(const std::string& module) const {
  const auto* r = rank_pattern->find(module, path, "rank_pattern");
  const auto* a = alpha_pattern->find(module, path, "alpha_pattern");
  return {r ? static_cast<int64_t>(r->value) : this->r, a ? a->value : lora_alpha};
}

std::optional<double> AdapterConfig::check_factor(const std::string& key, const std::vector<int64_t>& shape,
                                                  const std::string& file) const {
  const auto f = factor_of(key);
  if (!f) return std::nullopt;
  const auto [r, alpha] = rank_and_alpha(f->module);
  const char* which = f->b ? "lora_B" : "lora_A";
  if (!f->bias) {
    if (shape.size() < 2)
      throw ReadError(file, std::string("a LoRA factor needs 2 or more dimensions (lora_B [out, r], lora_A [r, in]), but ") +
                                which + " has shape " + shape_str(shape), key);
    for (auto d : shape)
      if (d == 0) throw ReadError(file, std::string("empty LoRA factor: ") + which + " has shape " + shape_str(shape), key);
    // the rank is lora_B's second dimension ([out, r], lora_embedding_B [embedding_dim, r]) and
    // lora_A's first ([r, in], lora_embedding_A [r, num_embeddings])
    const int64_t actual = f->b ? shape[1] : shape[0];
    if (actual != r)
      throw ReadError(file, "adapter_config.json gives rank " + std::to_string(r) + " for module '" + f->module + "' but " +
                                which + " has shape " + shape_str(shape), key);
  }
  if (!f->b) return std::nullopt;
  // in float64, as PEFT computes it in Python
  return use_rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
}

}  // namespace unisub::analysis
