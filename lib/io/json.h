// A small strict JSON reader for file headers (safetensors). Hostile input is expected: nesting
// depth is bounded, duplicate keys are refused, and every error says where it happened.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace tg::json {

struct Value {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  bool boolean = false;
  double number = 0;
  bool is_integer = false;  // written without fraction or exponent, and fits in int64
  int64_t integer = 0;
  std::string string;
  std::vector<Value> array;
  std::vector<std::pair<std::string, Value>> object;  // in file order, keys unique
};

// Throws tg::Error "<what>: invalid JSON at byte N: ..." on bad input.
Value parse(std::string_view text, const std::string& what);
// A JSON string literal for s (quotes and escapes).
std::string quote(std::string_view s);
// Compact JSON text: integers exactly, other numbers shortest round-trip (must be finite).
std::string dump(const Value& v);

}  // namespace tg::json
