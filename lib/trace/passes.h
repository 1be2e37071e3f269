// The graph passes, one file each (pass_*.cpp). Each rewrites a Program in place and returns a
// line for f.pass_summary() saying what it changed.
#pragma once

#include "core/check.h"
#include "trace/program.h"

namespace tg::trace_detail {

std::string eliminate_dead_code(Program& p);              // pass_dce.cpp: "dce"
std::string eliminate_common_subexpressions(Program& p);  // pass_cse.cpp: "cse"
std::string rewrite_for_stability(Program& p);           // pass_stability.cpp: "stability"
std::string simplify_algebra(Program& p);                // pass_algebra.cpp: "algebra"
std::string fold_constants(Program& p);                  // pass_fold.cpp: "fold"
// The lowering steps after the passes (f.save() writes the graph before them).
std::string fold_matmul_updates(Program& p);  // pass_matmul_update.cpp: "matmul_update"
std::string fuse_elementwise(Program& p);     // pass_fuse.cpp: "fuse"
std::string tile_rows(Program& p);            // pass_tile.cpp: "tile"
// All three, as `options` asks, appending to p.summary.
void lower(Program& p, const TraceOptions& options);

inline constexpr std::string_view kPassNames[] = {
    "dce", "cse", "stability", "algebra", "fold", "matmul_update", "fuse", "tile", "memory"};
bool pass_enabled(const TraceOptions& options, std::string_view name);
// Runs the passes `options` asks for, in order, and fills p.summary.
void optimize(Program& p, const TraceOptions& options);

// Tests only: applied to every optimized program, to check that Mode::Debug catches a bad rewrite.
inline std::function<void(Program&)> g_test_corrupt_pass;

// Helpers the passes share.
std::vector<int> write_counts(const Program& p);  // nodes writing each buffer
// Replaces every read of buffer `from` (nodes from `first` on, and the outputs) by `to`.
void replace_reads(Program& p, int32_t from, int32_t to, size_t first);

}  // namespace tg::trace_detail
