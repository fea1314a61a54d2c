#pragma once
// A small strict-JSON (RFC 8259) value and writer for the analysis report entries: objects keep
// insertion order, a non-finite double is written as `null`, and a finite one in the shortest form
// that parses back to the same double, laid out as Python's repr(float) (so "0.9", "1.0", "1e-05":
// a float key such as rank_at_tau's reads the same from either front end).
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace unisub::analysis {

class Json {
 public:
  enum class Kind { Null, Bool, Int, Double, String, Array, Object, Raw };

  Json() = default;
  Json(std::nullptr_t) {}
  Json(bool b) : kind_(Kind::Bool), int_(b) {}
  template <typename T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int> = 0>
  Json(T i) : kind_(Kind::Int), int_(static_cast<int64_t>(i)) {}
  Json(double d) : kind_(Kind::Double), double_(d) {}
  Json(const char* s) : kind_(Kind::String), string_(s) {}
  Json(std::string s) : kind_(Kind::String), string_(std::move(s)) {}
  template <typename T>
  Json(const std::vector<T>& items) : kind_(Kind::Array) {
    for (const auto& x : items) items_.emplace_back(x);
  }

  static Json array() { Json j; j.kind_ = Kind::Array; return j; }
  static Json object() { Json j; j.kind_ = Kind::Object; return j; }
  // JSON text written as it is (the caller has checked it parses: e.g. metadata a user passed).
  static Json raw(std::string text) { Json j; j.kind_ = Kind::Raw; j.string_ = std::move(text); return j; }

  // Objects: the member `key`, appended (as null) when absent. A null value becomes an object.
  Json& operator[](const std::string& key);
  // Arrays: appends. A null value becomes an array.
  void push_back(Json value);
  Kind kind() const { return kind_; }

  std::string dump() const;

 private:
  void write(std::string& out) const;
  Kind kind_ = Kind::Null;
  int64_t int_ = 0;
  double double_ = 0.0;
  std::string string_;
  std::vector<Json> items_;
  std::vector<std::pair<std::string, Json>> members_;
};

// A JSON object's text with one more member `key` (value: JSON text) appended at its end.
std::string with_member(const std::string& object_text, const std::string& key, const std::string& value_json);

// `s` as a JSON string (quoted, escaped as RFC 8259 requires, UTF-8 kept), appended to `out`.
void append_json_string(std::string& out, const std::string& s);

// The text of a finite double as Python's repr writes it (shortest round-trip digits); "null" for
// NaN and ±inf.
std::string format_double(double value);

}  // namespace unisub::analysis
