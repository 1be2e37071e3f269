// tg::Error, the one exception type for user errors, and Loc, the caller's source line.
#pragma once

#include <source_location>
#include <stdexcept>
#include <string>

namespace tg {

// Public ops take `Loc loc = Loc::current()` so an error (and later the tape) can name the user's
// line. Library code calling public ops need not pass it on: the outermost op's location wins.
using Loc = std::source_location;

// Thrown for every user error: bad shapes, dtypes or devices, out-of-range indices, misuse of the
// API, corrupt files. what() names the op, the values involved and the user's file:line.
class Error : public std::runtime_error {
 public:
  Error(const std::string& message, std::string op, Loc where)
      : std::runtime_error(message), op_(std::move(op)), where_(where) {}
  const std::string& op() const { return op_; }   // the public op the user called, "" if none
  const Loc& where() const { return where_; }     // the user's line that called it
 private:
  std::string op_;
  Loc where_;
};

}  // namespace tg
