// A strict JSON reader (RFC 8259), the one dialect of every file unisub reads: safetensors headers,
// Hugging Face shard indexes and PEFT adapter configs. Strict as the safetensors reference
// implementation (serde_json) parses headers: no byte-order mark, no NaN / Infinity literals, no
// trailing commas or comments, no control characters in strings, invalid UTF-8 and lone surrogates
// (also in \u escapes) refused. Beyond serde: duplicate object keys are refused (two readers could
// otherwise keep different ones) and nesting is limited (deep input must not exhaust the stack).
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

namespace unisub::analysis::json {

// What went wrong and where: `offset` is the byte offset in the parsed text.
struct ParseError : std::runtime_error {
  ParseError(const std::string& what, size_t offset);
  size_t offset;
};

struct Member;

struct Value {
  enum class Type { Null, Bool, Number, String, Array, Object };
  Type type = Type::Null;
  bool boolean = false;
  double number = 0;         // every number, as the nearest double (±inf when out of range)
  bool integer = false;      // written without fraction or exponent, and fits in int64
  int64_t int_value = 0;     // valid when `integer`
  std::string text;          // a string's value; a number as written
  std::vector<Value> items;  // Array
  std::vector<Member> members;  // Object, in file order (keys are unique)

  bool is_null() const { return type == Type::Null; }
  bool is_object() const { return type == Type::Object; }
  bool is_array() const { return type == Type::Array; }
  bool is_string() const { return type == Type::String; }
  bool is_number() const { return type == Type::Number; }
  bool is_bool() const { return type == Type::Bool; }
  // The member named `key` of an object, or nullptr (also for non-objects).
  const Value* find(std::string_view key) const;
  // The value reached by following `keys` member by member, or nullptr where one is missing.
  const Value* find_path(std::initializer_list<std::string_view> keys) const;
  // That value as a number, or `otherwise` where it is missing or not a number.
  double number_at(std::initializer_list<std::string_view> keys, double otherwise = 0.0) const;
  // "object", "array", "string", "number", "boolean" or "null".
  const char* type_name() const;
  // Compact JSON text of the value (strings quoted, escapes re-encoded), cut at `max_chars` with
  // "...": for quoting a wrong value in an error message.
  std::string dump(size_t max_chars = 80) const;
};

struct Member {
  std::string key;
  Value value;
};

constexpr int kMaxDepth = 64;

// Parses the whole of `text` as one JSON value (whitespace around it allowed, nothing else).
Value parse(std::string_view text, int max_depth = kMaxDepth);

// The same checks over the whole text, but only the members on `paths` are built (each path a list
// of member names from the top, "*" matching any name; a path's last member is built whole, arrays
// included): the report's summary and tables read a few numbers of entries that hold ~150,000
// (a 500-model delta slot's scores and null spectra), and converting and storing those cost most of
// a full parse.
Value parse_paths(std::string_view text, const std::vector<std::vector<std::string>>& paths,
                  int max_depth = kMaxDepth);

}  // namespace unisub::analysis::json
