// Python's glob and regular-expression rules through PCRE2 (see pattern.h). One matcher: PEFT's
// rank_pattern / alpha_pattern keys (peft.cpp) and the analysis' slot patterns (plan.cpp) use it.
#include "analysis/pattern.h"

#include <fnmatch.h>

#include <stdexcept>
#include <vector>

#include "analysis/reader.h"

#ifdef UNISUB_HAVE_PCRE2
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#endif

namespace unisub::analysis {

namespace {
std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) s.replace(at, from.size(), to);
  return s;
}
}  // namespace

std::string translate_glob(const std::string& pat) {
  // A line-by-line port of CPython's fnmatch.translate (3.11), so that classes, ranges, a leading
  // '!' or ']', reversed ranges and unclosed '[' mean what they mean in Python. (Python compares
  // range ends as code points, we as bytes: the same for ASCII names.)
  std::string out;
  const size_t n = pat.size();
  size_t i = 0;
  auto escape = [](char c) {  // re.escape of one character
    static const std::string special = "()[]{}?*+-|^$\\.&~# \t\n\r\v\f";
    return special.find(c) != std::string::npos ? std::string("\\") + c : std::string(1, c);
  };
  while (i < n) {
    const char c = pat[i++];
    if (c == '*') {
      if (out.size() < 2 || out.compare(out.size() - 2, 2, ".*") != 0) out += ".*";
    } else if (c == '?') {
      out += '.';
    } else if (c == '[') {
      size_t j = i;
      if (j < n && pat[j] == '!') ++j;
      if (j < n && pat[j] == ']') ++j;
      while (j < n && pat[j] != ']') ++j;
      if (j >= n) {
        out += "\\[";
        continue;
      }
      std::string stuff = pat.substr(i, j - i);
      if (stuff.find('-') == std::string::npos) {
        stuff = replace_all(stuff, "\\", "\\\\");
      } else {
        std::vector<std::string> chunks;
        size_t k = pat[i] == '!' ? i + 2 : i + 1;
        while (true) {
          const size_t found = k < j ? pat.substr(0, j).find('-', k) : std::string::npos;
          if (found == std::string::npos) break;
          chunks.push_back(pat.substr(i, found - i));
          i = found + 1;
          k = found + 3;
        }
        const std::string chunk = pat.substr(i, j - i);
        if (!chunk.empty()) chunks.push_back(chunk);
        else chunks.back() += '-';
        for (size_t q = chunks.size() - 1; q >= 1; --q)  // remove empty (reversed) ranges
          if (!chunks[q - 1].empty() && !chunks[q].empty() &&
              static_cast<unsigned char>(chunks[q - 1].back()) > static_cast<unsigned char>(chunks[q].front())) {
            chunks[q - 1] = chunks[q - 1].substr(0, chunks[q - 1].size() - 1) + chunks[q].substr(1);
            chunks.erase(chunks.begin() + static_cast<std::ptrdiff_t>(q));
          }
        stuff.clear();
        for (size_t q = 0; q < chunks.size(); ++q) {
          if (q) stuff += '-';
          stuff += replace_all(replace_all(chunks[q], "\\", "\\\\"), "-", "\\-");
        }
      }
      // set operations (&&, ~~, ||) escaped as Python does; and '[', '.', ':' and '=', which PCRE2 (not
      // Python) reads as POSIX classes and collating elements inside a class ("[...]" was refused)
      std::string escaped;
      for (char x : stuff) {
        const bool special = x == '&' || x == '~' || x == '|' || x == '[' || x == '.' || x == ':' || x == '=';
        escaped += special ? std::string("\\") + x : std::string(1, x);
      }
      stuff = escaped;
      i = j + 1;
      if (stuff.empty()) {
        out += "(?!)";
      } else if (stuff == "!") {
        out += '.';
      } else {
        // (in place: GCC 12 warns, wrongly, on "x" + std::string at -O3)
        if (stuff[0] == '!') stuff[0] = '^';
        else if (stuff[0] == '^' || stuff[0] == '[') stuff.insert(stuff.begin(), '\\');
        out += '[';
        out += stuff;
        out += ']';
      }
    } else {
      out += escape(c);
    }
  }
  return "(?s:" + out + ")\\z";
}

#ifdef UNISUB_HAVE_PCRE2
namespace {
std::shared_ptr<void> compile(const std::string& expr, uint32_t flags, const std::string& shown) {
  int err = 0;
  PCRE2_SIZE at = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(expr.data()), expr.size(),
                                   flags | PCRE2_UTF | PCRE2_UCP, &err, &at, nullptr);
  if (!code) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(err, buf, sizeof buf);
    throw std::invalid_argument("pattern '" + shown + "' is not a valid regular expression (" +
                                reinterpret_cast<const char*>(buf) + ")");
  }
  return std::shared_ptr<void>(code, [](void* c) { pcre2_code_free(static_cast<pcre2_code*>(c)); });
}
}  // namespace
#endif

Pattern Pattern::regex(const std::string& expression, bool anchored, const std::string& shown) {
  Pattern p;
  p.source_ = shown.empty() ? expression : shown;
#ifdef UNISUB_HAVE_PCRE2
  p.code_ = compile(expression, anchored ? PCRE2_ANCHORED : 0, p.source_);
#else
  (void)anchored;
  throw std::invalid_argument("regular expression '" + expression +
                              "' needs PCRE2, and this libunisub was built without it (apt-get install "
                              "libpcre2-dev, then rebuild)");
#endif
  return p;
}

Pattern Pattern::glob(const std::string& glob) {
  Pattern p;
  p.source_ = glob;
#ifdef UNISUB_HAVE_PCRE2
  p.code_ = compile(translate_glob(glob), PCRE2_ANCHORED, glob);
#else
  p.glob_fallback_ = true;
#endif
  return p;
}

Pattern Pattern::slot_pattern(const std::string& pattern) {
  return pattern.rfind("re:", 0) == 0 ? regex(pattern.substr(3)) : glob(pattern);
}

bool Pattern::matches(const std::string& subject) const {
  if (glob_fallback_) return fnmatch(source_.c_str(), subject.c_str(), FNM_NOESCAPE) == 0;
#ifdef UNISUB_HAVE_PCRE2
  auto* code = static_cast<pcre2_code*>(code_.get());
  std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data*)> md(pcre2_match_data_create_from_pattern(code, nullptr),
                                                                     pcre2_match_data_free);
  if (!md) throw std::bad_alloc();
  const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(subject.data()), subject.size(), 0, 0, md.get(), nullptr);
  if (rc >= 0) return true;
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(rc, buf, sizeof buf);
  throw std::runtime_error("matching '" + subject.substr(0, 200) + (subject.size() > 200 ? "..." : "") +
                           "' failed: " + reinterpret_cast<const char*>(buf));
#else
  return false;
#endif
}

}  // namespace unisub::analysis
