// Saving a compiled graph to a file and loading it back (Note [Traced file format]).
#pragma once

#include "trace/program.h"

namespace tg::trace_detail {

// Writes p (with the current values of its state) to path.
void save_program(const Program& p, const std::string& path, Loc loc);

// A graph read from a file, with the storages its state and constants live in.
struct LoadedProgram {
  std::shared_ptr<const Program> program;
  std::vector<std::shared_ptr<Storage>> owned;  // state buffers: the loaded function owns them
};
LoadedProgram load_program(const std::string& path, Loc loc);

// Throws tg::Error (prefixed by `what`) unless every view fits its buffer and every node its
// kernel's contract (validate.cpp).
void check_view(const View& v, size_t buffer_bytes, const std::string& what);
void validate(const Program& p, const std::string& what);

}  // namespace tg::trace_detail
