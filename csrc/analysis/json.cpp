#include "analysis/json.h"

#include <locale.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <unordered_set>

namespace unisub::analysis::json {

ParseError::ParseError(const std::string& what, size_t offset)
    : std::runtime_error(what + " at byte " + std::to_string(offset)), offset(offset) {}

namespace {

// strtod in the "C" locale whatever the process's locale is (a host program may set a decimal comma).
double c_strtod(const std::string& s) {
  static locale_t c_locale = newlocale(LC_ALL_MASK, "C", static_cast<locale_t>(nullptr));
  return strtod_l(s.c_str(), nullptr, c_locale);
}

std::string byte_name(unsigned char c) {
  char buf[40];
  if (c >= 0x21 && c < 0x7f) std::snprintf(buf, sizeof buf, "'%c'", c);
  else std::snprintf(buf, sizeof buf, "byte 0x%02X", c);
  return buf;
}

// The members a selective parse builds: a member named in `members` (or matching "*") is built as far
// as its own node says (a node without members: all of it); every other member is read and checked
// but not stored.
struct PathFilter {
  bool whole = false;  // a path ends here: build all of the value
  std::map<std::string, PathFilter, std::less<>> members;
};

// dst ∪ src
void merge_filter(PathFilter& dst, const PathFilter& src) {
  if (dst.whole) return;
  if (src.whole) {
    dst.whole = true, dst.members.clear();
    return;
  }
  for (const auto& [k, child] : src.members) merge_filter(dst.members[k], child);
}

// Every named member also gets what "*" asks for at its level, recursively.
void spread_wildcards(PathFilter& f) {
  if (auto star = f.members.find("*"); star != f.members.end())
    for (auto& [k, child] : f.members)
      if (k != "*") merge_filter(child, star->second);
  for (auto& [k, child] : f.members) spread_wildcards(child);
}
const PathFilter kSkip;  // the node that builds nothing

class Parser {
 public:
  Parser(std::string_view text, int max_depth) : s_(text), max_depth_(max_depth) {}

  // `keep`: the members to build (nullptr: all of them); the rest is checked as strictly and not
  // stored (no number converted, no array or object filled).
  Value document(const PathFilter* keep = nullptr) {
    if (s_.size() >= 3 && s_.substr(0, 3) == "\xEF\xBB\xBF") fail("a byte-order mark is not JSON", 0);
    skip_ws();
    Value v = value(0, keep);
    skip_ws();
    if (i_ != s_.size()) fail("unexpected " + byte_name(s_[i_]) + " after the JSON value", i_);
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& msg, size_t at) const { throw ParseError(msg, at); }

  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }

  void expect_word(std::string_view w) {
    if (s_.substr(i_, w.size()) != w) fail("unexpected " + byte_name(s_[i_]), i_);
    i_ += w.size();
  }

  // keep: nullptr builds the whole value, &kSkip builds none of it, a filter node the members it names
  Value value(int depth, const PathFilter* keep = nullptr) {
    if (i_ >= s_.size()) fail("unexpected end of text", i_);
    Value v;
    const char c = s_[i_];
    if (c == '{' || c == '[') {
      if (depth >= max_depth_) fail("nesting deeper than " + std::to_string(max_depth_) + " levels", i_);
      if (c == '{') object(v, depth + 1, keep);
      else array(v, depth + 1, keep == &kSkip ? keep : nullptr);
    } else if (c == '"') {
      v.type = Value::Type::String;
      v.text = string();
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      number(v, keep == &kSkip);
    } else if (c == 't') {
      expect_word("true"), v.type = Value::Type::Bool, v.boolean = true;
    } else if (c == 'f') {
      expect_word("false"), v.type = Value::Type::Bool;
    } else if (c == 'n') {
      expect_word("null");
    } else if (c == 'N' || c == 'I') {
      fail("NaN and Infinity are not JSON numbers", i_);
    } else {
      fail("unexpected " + byte_name(c), i_);
    }
    return v;
  }

  void object(Value& v, int depth, const PathFilter* keep) {
    v.type = Value::Type::Object;
    std::unordered_set<std::string_view> seen;  // views into `s_` (keys without escapes) or `escaped`
    std::deque<std::string> escaped;  // stable addresses for the views
    ++i_;
    skip_ws();
    if (i_ < s_.size() && s_[i_] == '}') return void(++i_);
    while (true) {
      skip_ws();
      const size_t at = i_;
      if (i_ >= s_.size() || s_[i_] != '"') fail(i_ >= s_.size() ? "unexpected end of text" : "expected a string key", i_);
      std::string key = string();
      // small objects (tensor entries): a linear scan; large ones (the header itself): a hash set.
      // Over every key read, kept or skipped (`escaped` holds them all).
      bool dup = false;
      if (escaped.size() < 16) {
        for (const auto& k : escaped) dup = dup || k == key;
        escaped.push_back(key);
      } else {
        if (seen.empty())
          for (const auto& k : escaped) seen.insert(k);
        escaped.push_back(key);
        dup = !seen.insert(escaped.back()).second;
      }
      if (dup) fail("duplicate key \"" + key + "\"", at);
      const PathFilter* child = nullptr;  // what of this member's value to build
      if (keep == &kSkip) {
        child = &kSkip;
      } else if (keep) {
        auto it = keep->members.find(key);
        if (it == keep->members.end()) it = keep->members.find("*");
        child = it == keep->members.end() ? &kSkip : it->second.whole ? nullptr : &it->second;
      }
      skip_ws();
      if (i_ >= s_.size() || s_[i_] != ':') fail("expected ':'", i_);
      ++i_;
      skip_ws();
      if (child == &kSkip) {
        value(depth, child);
      } else {
        v.members.push_back({std::move(key), value(depth, child)});
      }
      skip_ws();
      if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
      if (i_ < s_.size() && s_[i_] == '}') return void(++i_);
      fail(i_ >= s_.size() ? "unexpected end of text" : "expected ',' or '}'", i_);
    }
  }

  void array(Value& v, int depth, const PathFilter* keep) {
    v.type = Value::Type::Array;
    ++i_;
    skip_ws();
    if (i_ < s_.size() && s_[i_] == ']') return void(++i_);
    while (true) {
      skip_ws();
      if (keep == &kSkip) value(depth, keep);
      else v.items.push_back(value(depth));
      skip_ws();
      if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
      if (i_ < s_.size() && s_[i_] == ']') return void(++i_);
      fail(i_ >= s_.size() ? "unexpected end of text" : "expected ',' or ']'", i_);
    }
  }

  void number(Value& v, bool skip = false) {
    const size_t start = i_;
    auto digits = [&] {
      const size_t d = i_;
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
      if (i_ == d) fail("expected a digit", i_);
    };
    if (s_[i_] == '-') ++i_;
    if (i_ < s_.size() && (s_[i_] == 'I' || s_[i_] == 'N')) fail("NaN and Infinity are not JSON numbers", start);
    if (i_ < s_.size() && s_[i_] == '0') {
      ++i_;
      if (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') fail("leading zeros are not JSON", start);
    } else {
      digits();
    }
    bool plain = true;
    if (i_ < s_.size() && s_[i_] == '.') ++i_, digits(), plain = false;
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      ++i_, plain = false;
      if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
      digits();
    }
    v.type = Value::Type::Number;
    if (skip) return;
    v.text.assign(s_.substr(start, i_ - start));
    // from_chars is locale-independent and several times faster than strtod (a 500-model delta
    // entry holds ~150,000 numbers, and every report is parsed back for its summary); it leaves
    // out-of-range values to strtod, which gives ±inf or the underflow the text means.
    const char* const end = v.text.data() + v.text.size();
    if (auto [p, ec] = std::from_chars(v.text.data(), end, v.number); ec != std::errc() || p != end)
      v.number = c_strtod(v.text);
    if (plain) {
      auto [p, ec] = std::from_chars(v.text.data(), v.text.data() + v.text.size(), v.int_value);
      v.integer = ec == std::errc() && p == v.text.data() + v.text.size();
    }
  }

  unsigned hex4() {
    if (i_ + 4 > s_.size()) fail("unexpected end of text in a \\u escape", i_);
    unsigned u = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = s_[i_ + k];
      u <<= 4;
      if (c >= '0' && c <= '9') u |= c - '0';
      else if (c >= 'a' && c <= 'f') u |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') u |= c - 'A' + 10;
      else fail("invalid \\u escape", i_ - 2);
    }
    i_ += 4;
    return u;
  }

  static void put_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6)), out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12)), out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18)), out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F)), out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  // Length of the valid UTF-8 sequence starting at i_ (a non-ASCII lead byte), or 0.
  size_t utf8_length() const {
    auto b = [&](size_t k) -> unsigned { return i_ + k < s_.size() ? static_cast<unsigned char>(s_[i_ + k]) : 0x100; };
    auto cont = [&](size_t k, unsigned lo = 0x80, unsigned hi = 0xBF) { return b(k) >= lo && b(k) <= hi; };
    const unsigned c = b(0);
    if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
    if (c == 0xE0) return cont(1, 0xA0) && cont(2) ? 3 : 0;
    if (c == 0xED) return cont(1, 0x80, 0x9F) && cont(2) ? 3 : 0;  // no UTF-8-encoded surrogates
    if (c >= 0xE1 && c <= 0xEF) return cont(1) && cont(2) ? 3 : 0;
    if (c == 0xF0) return cont(1, 0x90) && cont(2) && cont(3) ? 4 : 0;
    if (c >= 0xF1 && c <= 0xF3) return cont(1) && cont(2) && cont(3) ? 4 : 0;
    if (c == 0xF4) return cont(1, 0x80, 0x8F) && cont(2) && cont(3) ? 4 : 0;
    return 0;
  }

  std::string string() {
    ++i_;  // the opening quote
    std::string out;
    while (true) {
      if (i_ >= s_.size()) fail("unterminated string", i_);
      const unsigned char c = s_[i_];
      if (c == '"') return ++i_, out;
      if (c < 0x20) fail("control character " + byte_name(c) + " in a string (it must be escaped)", i_);
      if (c >= 0x80) {
        const size_t n = utf8_length();
        if (n == 0) fail("invalid UTF-8 (" + byte_name(c) + ")", i_);
        out.append(s_.substr(i_, n));
        i_ += n;
        continue;
      }
      if (c != '\\') {  // a run of plain ASCII characters, appended at once
        size_t j = i_ + 1;
        while (j < s_.size()) {
          const unsigned char d = s_[j];
          if (d == '"' || d == '\\' || d < 0x20 || d >= 0x80) break;
          ++j;
        }
        out.append(s_.substr(i_, j - i_));
        i_ = j;
        continue;
      }
      const size_t at = i_;
      if (++i_ >= s_.size()) fail("unterminated string", i_);
      const char e = s_[i_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xDC00 && cp <= 0xDFFF) fail("lone surrogate in a \\u escape", at);
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (s_.substr(i_, 2) != "\\u") fail("lone surrogate in a \\u escape", at);
            i_ += 2;
            const unsigned lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) fail("lone surrogate in a \\u escape", at);
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          put_utf8(out, cp);
          break;
        }
        default: fail("invalid escape \\" + std::string(1, e), at);
      }
    }
  }

  std::string_view s_;
  size_t i_ = 0;
  int max_depth_;
};

void dump_to(const Value& v, std::string& out, size_t max_chars) {
  if (out.size() > max_chars) return;
  switch (v.type) {
    case Value::Type::Null: out += "null"; break;
    case Value::Type::Bool: out += v.boolean ? "true" : "false"; break;
    case Value::Type::Number: out += v.text; break;
    case Value::Type::String:
      out += '"';
      for (const char c : v.text) {
        if (c == '"' || c == '\\') out += '\\', out += c;
        else if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned char>(c));
          out += buf;
        } else out += c;
      }
      out += '"';
      break;
    case Value::Type::Array:
      out += '[';
      for (size_t k = 0; k < v.items.size() && out.size() <= max_chars; ++k) {
        if (k) out += ", ";
        dump_to(v.items[k], out, max_chars);
      }
      out += ']';
      break;
    case Value::Type::Object:
      out += '{';
      for (size_t k = 0; k < v.members.size() && out.size() <= max_chars; ++k) {
        if (k) out += ", ";
        Value key;
        key.type = Value::Type::String;
        key.text = v.members[k].key;
        dump_to(key, out, max_chars);
        out += ": ";
        dump_to(v.members[k].value, out, max_chars);
      }
      out += '}';
      break;
  }
}

}  // namespace

const Value* Value::find(std::string_view key) const {
  for (const auto& m : members)
    if (m.key == key) return &m.value;
  return nullptr;
}

const Value* Value::find_path(std::initializer_list<std::string_view> keys) const {
  const Value* cur = this;
  for (auto k : keys)
    if (!(cur = cur->find(k))) return nullptr;
  return cur;
}

double Value::number_at(std::initializer_list<std::string_view> keys, double otherwise) const {
  const Value* v = find_path(keys);
  return v && v->is_number() ? v->number : otherwise;
}

const char* Value::type_name() const {
  switch (type) {
    case Type::Null: return "null";
    case Type::Bool: return "boolean";
    case Type::Number: return "number";
    case Type::String: return "string";
    case Type::Array: return "array";
    case Type::Object: return "object";
  }
  return "?";
}

std::string Value::dump(size_t max_chars) const {
  std::string out;
  dump_to(*this, out, max_chars);
  if (out.size() > max_chars) {
    // cut on a UTF-8 character boundary
    size_t cut = max_chars;
    while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xC0) == 0x80) --cut;
    out = out.substr(0, cut) + "...";
  }
  return out;
}

Value parse(std::string_view text, int max_depth) { return Parser(text, max_depth).document(); }

Value parse_paths(std::string_view text, const std::vector<std::vector<std::string>>& paths, int max_depth) {
  PathFilter keep;
  for (const auto& path : paths) {
    PathFilter* node = &keep;
    for (const auto& k : path) node = &node->members[k];
    node->whole = true, node->members.clear();
  }
  spread_wildcards(keep);
  if (keep.whole) return parse(text, max_depth);
  return Parser(text, max_depth).document(paths.empty() ? &kSkip : &keep);
}

}  // namespace unisub::analysis::json
