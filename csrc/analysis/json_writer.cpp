#include "analysis/json_writer.h"

#include <c10/util/Exception.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace unisub::analysis {

Json& Json::operator[](const std::string& key) {
  if (kind_ == Kind::Null) kind_ = Kind::Object;
  TORCH_CHECK(kind_ == Kind::Object, "unisub: internal: JSON member '", key, "' of a non-object");
  for (auto& [k, v] : members_)
    if (k == key) return v;
  members_.emplace_back(key, Json());
  return members_.back().second;
}

void Json::push_back(Json value) {
  if (kind_ == Kind::Null) kind_ = Kind::Array;
  TORCH_CHECK(kind_ == Kind::Array, "unisub: internal: JSON push_back on a non-array");
  items_.push_back(std::move(value));
}

std::string format_double(double value) {
  if (!std::isfinite(value)) return "null";
  char buf[64];
#if defined(__cpp_lib_to_chars) && __cpp_lib_to_chars >= 201611L
  // the shortest digits that round-trip, in scientific form: "d.ddde±XX"
  auto res = std::to_chars(buf, buf + sizeof buf, value, std::chars_format::scientific);
  *res.ptr = '\0';
#else
  // no floating-point to_chars: the first precision that round-trips
  for (int prec = 1; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*e", prec - 1, value);
    if (std::strtod(buf, nullptr) == value) break;
  }
#endif
  std::string s(buf);
  std::string sign;
  if (s[0] == '-') sign = "-", s.erase(0, 1);
  const auto e = s.find('e');
  std::string digits = s.substr(0, e);
  if (digits.size() > 1) digits.erase(1, 1);  // drop the '.'
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  const int exp = std::atoi(s.c_str() + e + 1);
  const int n = static_cast<int>(digits.size());
  // (appended piece by piece: GCC 12 warns, wrongly, about `"0." + std::string(...)`)
  std::string out = sign;
  if (exp >= -4 && exp < 16) {  // Python's repr: positional notation in this range
    if (exp + 1 >= n) {
      out.append(digits).append(static_cast<size_t>(exp + 1 - n), '0').append(".0");
    } else if (exp < 0) {
      out.append("0.").append(static_cast<size_t>(-exp - 1), '0').append(digits);
    } else {
      out.append(digits, 0, static_cast<size_t>(exp + 1)).append(".").append(digits, static_cast<size_t>(exp + 1));
    }
  } else {
    out.append(digits, 0, 1);
    if (n > 1) out.append(".").append(digits, 1);
    char ebuf[16];
    std::snprintf(ebuf, sizeof ebuf, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    out.append(ebuf);
  }
  return out;
}

void append_json_string(std::string& out, const std::string& s) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);  // UTF-8 passes through
        }
    }
  }
  out += '"';
}

void Json::write(std::string& out) const {
  switch (kind_) {
    case Kind::Null: out += "null"; break;
    case Kind::Bool: out += int_ ? "true" : "false"; break;
    case Kind::Int: out += std::to_string(int_); break;
    case Kind::Double: out += format_double(double_); break;
    case Kind::String: append_json_string(out, string_); break;
    case Kind::Raw: out += string_; break;
    case Kind::Array: {
      out += '[';
      for (size_t i = 0; i < items_.size(); ++i) {
        if (i) out += ", ";
        items_[i].write(out);
      }
      out += ']';
      break;
    }
    case Kind::Object: {
      out += '{';
      for (size_t i = 0; i < members_.size(); ++i) {
        if (i) out += ", ";
        append_json_string(out, members_[i].first);
        out += ": ";
        members_[i].second.write(out);
      }
      out += '}';
      break;
    }
  }
}

std::string Json::dump() const {
  std::string out;
  write(out);
  return out;
}

std::string with_member(const std::string& object_text, const std::string& key, const std::string& value_json) {
  const auto close = object_text.find_last_of('}');
  TORCH_CHECK(close != std::string::npos && object_text.find_first_not_of(" \t\r\n") != std::string::npos &&
                  object_text[object_text.find_first_not_of(" \t\r\n")] == '{',
              "with_member: not a JSON object: ", object_text.substr(0, 80));
  const auto last = object_text.find_last_not_of(" \t\r\n", close - 1);
  std::string out = object_text.substr(0, close);
  if (object_text[last] != '{') out += ", ";
  append_json_string(out, key);
  out += ": " + value_json + object_text.substr(close);
  return out;
}

}  // namespace unisub::analysis
