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
