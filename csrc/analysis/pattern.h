#pragma once
// Python's pattern rules in C++, matched by PCRE2 (the matcher PEFT's rank_pattern / alpha_pattern
// use, peft.cpp), so that `unisub analyze` and `unisub-analyze` select the same tensors:
//   * a glob is matched as fnmatch.fnmatchcase does: translated as fnmatch.translate translates it
//     (`*` any run, `?` one character, `[...]` / `[!...]` classes; everything else literal, a
//     backslash included) and matched against the whole name;
//   * a regular expression is re.search'ed, or re.match'ed when `anchored`.
// Without PCRE2 (an optional build dependency), globs fall back to fnmatch(3) with FNM_NOESCAPE
// (the same except that `[^...]` negates there) and regular expressions are refused.
#include <memory>
#include <string>

namespace unisub::analysis {

class Pattern {
 public:
  // Throws std::invalid_argument naming the pattern (`shown`, else the expression) when it does not
  // compile (or without PCRE2). matches() throws std::runtime_error when PCRE2 gives up (limits).
  static Pattern regex(const std::string& expression, bool anchored = false, const std::string& shown = "");
  static Pattern glob(const std::string& glob);
  // `slots` syntax: "re:REGEX" is a regular expression (searched), anything else a glob.
  static Pattern slot_pattern(const std::string& pattern);
  bool matches(const std::string& subject) const;
  const std::string& source() const { return source_; }

 private:
  std::string source_;
  std::shared_ptr<void> code_;  // pcre2_code*; null for a fnmatch(3) glob
  bool glob_fallback_ = false;
};

// fnmatch.translate's regular expression for a glob, in PCRE2 syntax (`\z` for Python's `\Z`).
std::string translate_glob(const std::string& glob);

}  // namespace unisub::analysis
