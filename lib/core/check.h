// TG_CHECK and OpScope: how the library reports user errors (see Note [Error locations]).
#pragma once

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "tapegrad/error.h"
#include "tapegrad/tensor.h"

// Note [Error locations]
// Every public op opens an OpScope with its name and the caller's source_location. Scopes nest
// (a composite like softmax calls exp, sum, div...), and only the outermost one is recorded: that
// is the call the user wrote. TG_CHECK formats its message and throws tg::Error carrying the
// outermost op's name and line, so an error deep in a composite still points at the user's code.

namespace tg {

class OpScope {
 public:
  OpScope(const char* op, Loc loc);
  ~OpScope();
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;

  static const char* current_op();  // outermost op of this thread, or nullptr
  static Loc current_loc();

 private:
  bool outermost_;
};

[[noreturn]] void throw_error(std::string message);

// An index op's index out of bounds for its dim: tg::Error, with the value and the dim's size
// kept, so that a traced replay can word it as the op the user called does eagerly (Note [Traced
// targets], lib/nn/losses.cpp).
class IndexError : public Error {
 public:
  IndexError(const std::string& message, std::string op, Loc where, int64_t bad, int64_t size)
      : Error(message, std::move(op), where), bad_(bad), size_(size) {}
  int64_t bad() const { return bad_; }
  int64_t size() const { return size_; }

 private:
  int64_t bad_, size_;
};
[[noreturn]] void throw_index_error(std::string_view op, int64_t bad, int dim, int64_t size);

}  // namespace tg

#define TG_CHECK(cond, ...)                                  \
  do {                                                       \
    if (!(cond)) ::tg::throw_error(fmt::format(__VA_ARGS__)); \
  } while (0)

// An internal invariant broken: a tapegrad bug, still reported as tg::Error, never an abort.
#define TG_INTERNAL_ASSERT(cond)                                                          \
  do {                                                                                   \
    if (!(cond))                                                                         \
      ::tg::throw_error(fmt::format("internal error: {} failed at {}:{}; please report", \
                                    #cond, __FILE__, __LINE__));                         \
  } while (0)
