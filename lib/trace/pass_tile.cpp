// Row tiles: runs of row-local nodes (elementwise groups, reductions over trailing dims) execute
// tile by tile over their shared leading dims, so the values between them stay in cache
// (Note [Row tiles]).
#include <algorithm>
#include <optional>

#include "trace/passes.h"

namespace tg::trace_detail {

// Note [Row tiles]
// Fusion stops at reductions: LayerNorm is a fused group, a sum, a group, a sum, a group, and
// every group's 1M-element output goes to memory and comes back. But each of these nodes is
// *row-local*: row r of its output (the leading dims the nodes share, flattened) depends only on
// row r of its operands. A run of such nodes can therefore execute a tile of rows at a time
// through every node before the next tile starts, and a value written and read only inside the
// run (a *local* value) never exists whole: each tile's rows live in a scratch area of a tile's
// size, which stays in L2. Only the run's inputs and its stored results cross memory.
//
// A node joins a run when
//   - it is elementwise (unary, binary, where, copy, fused) or a reduction over trailing dims,
//     on the CPU, writing all of a temp no other node writes (an SSA value);
//   - its rows are the run's: the leading L dims of every node's output are the same, and every
//     operand view can see them as one dim (the view's strides over them are one stride);
//   - it reads a value the run produces only row by row: through a view whose row stride is the
//     producer's and which stays within a row, so tile t of the reader needs tile t of the
//     producer and nothing else. (A transposed read, or a broadcast of one row to all, ends the
//     run: it needs rows that later tiles write.)
//   - it writes no buffer the run has already read.
// L is the largest number of leading dims for which all that holds. The tile height is chosen
// so the rows a tile touches (every stored or local operand's row, once) fit kTileBytes; a run
// needs two nodes, two tiles, and a value that passes from one node to another inside it.
// Tiles are independent, so on more than one thread they run in parallel, each thread with its
// own scratch, and the nodes inside one tile run single-threaded. The results are those of the
// untiled nodes (a reduction over a tile's rows sums each row in the same order).
//
// Like fusion this is lowering (f.save() writes the graph before it). The memory plan keeps the
// stored values a run touches alive over the whole run (any two of them can be live at once in
// different tiles), runs no node of a run in place, and gives local values no arena bytes.

namespace {

constexpr int64_t kTileBytes = 256 << 10;  // what a tile's rows may touch: well inside L2
constexpr size_t kMaxRunNodes = 64;

bool row_local(const Node& n) {
  if (n.out2.buf >= 0 || n.reads_out()) return false;
  switch (n.call) {
    case Call::Unary:
    case Call::Binary:
    case Call::Where:
    case Call::Copy:
    case Call::Fused:
      if (n.nreduced == 0) return true;
      [[fallthrough]];  // a fused sum (Note [Fused sums]) is row-local like a sum
    case Call::Reduce:
      return n.nreduced >= 1 && n.in[0].view.sizes.size() > static_cast<size_t>(n.nreduced);
    default:
      return false;
  }
}

// `v` with its leading L dims (sizes `rows`) as one, or nothing when no stride does that.
std::optional<View> merge_rows(const View& v, size_t L, const Shape& rows) {
  if (v.sizes.size() < L) return std::nullopt;
  for (size_t d = 0; d < L; ++d)
    if (v.sizes[d] != rows[d]) return std::nullopt;
  int64_t count = 1, stride = 0;
  bool found = false;
  // Walk from the innermost leading dim out: each dim of size > 1 must step by the stride of
  // the merged dim times the rows inside it.
  for (size_t d = L; d-- > 0;) {
    if (v.sizes[d] == 1) continue;
    if (!found) {
      stride = v.strides[d];
      found = true;
    } else if (v.strides[d] != stride * count) {
      return std::nullopt;
    }
    count *= v.sizes[d];
  }
  View m;
  m.dtype = v.dtype;
  m.offset = v.offset;
  m.sizes.push_back(count);
  m.strides.push_back(stride);
  m.sizes.insert(m.sizes.end(), v.sizes.begin() + static_cast<ptrdiff_t>(L), v.sizes.end());
  m.strides.insert(m.strides.end(), v.strides.begin() + static_cast<ptrdiff_t>(L), v.strides.end());
  return m;
}

// Elements of one merged row: the product of the dims after the first.
int64_t row_elements(const View& m) {
  int64_t n = 1;
  for (size_t d = 1; d < m.sizes.size(); ++d) n *= m.sizes[d];
  return n;
}

class Tiler {
 public:
  explicit Tiler(Program& p) : p_(p), writes_(write_counts(p)) {
    readers_.assign(p.buffers.size(), {});
    for (size_t i = 0; i < p.nodes.size(); ++i)
      for (const Operand& o : p.nodes[i].in) readers_[o.buf].push_back(i);
    for (const Operand& o : p.outputs) returned_.push_back(o.buf);
  }

  std::string run() {
    size_t n = p_.nodes.size(), i = 0;
    while (i < n) {
      if (!candidate(i)) {
        ++i;
        continue;
      }
      // Grow the run while the nodes so far still tile together.
      size_t end = i + 1;
      std::optional<TileRun> best;
      while (end < n && end - i < kMaxRunNodes && candidate(end)) {
        std::optional<TileRun> r = plan(i, end + 1);
        if (!r) break;
        best = std::move(r);
        ++end;
      }
      if (best && finish(*best)) {
        i = best->end;
        p_.tiles.push_back(std::move(*best));
      } else {
        i = std::max(i + 1, best ? best->end : i + 1);
      }
    }
    int64_t nodes = 0, local = 0, saved = 0;
    for (const TileRun& r : p_.tiles) {
      nodes += static_cast<int64_t>(r.end - r.first);
      local += static_cast<int64_t>(r.local.size());
      for (int32_t b : r.local) saved += static_cast<int64_t>(p_.buffers[b].nbytes);
    }
    return fmt::format(
        "tile: {} runs of {} row-local nodes, {} values kept to one tile ({} bytes "
        "never stored whole)",
        p_.tiles.size(), nodes, local, saved);
  }

 private:
  bool candidate(size_t i) const {
    const Node& n = p_.nodes[i];
    if (!row_local(n) || !p_.buffers[n.out.buf].device.is_cpu()) return false;
    const Buffer& out = p_.buffers[n.out.buf];
    return out.kind == BufKind::Temp && !out.constant && writes_[n.out.buf] == 1 &&
           p_.full_write(n) && !n.out.view.sizes.empty();
  }

  // The run of nodes [first, end) with the most leading dims they can share, or nothing.
  std::optional<TileRun> plan(size_t first, size_t end) const {
    size_t L = SIZE_MAX;
    for (size_t i = first; i < end; ++i) L = std::min(L, p_.nodes[i].out.view.sizes.size());
    const Shape& lead = p_.nodes[first].out.view.sizes;
    for (; L >= 1; --L) {
      Shape rows(lead.begin(), lead.begin() + static_cast<ptrdiff_t>(L));
      if (auto r = plan_with(first, end, L, rows)) return r;
    }
    return std::nullopt;
  }

  std::optional<TileRun> plan_with(size_t first, size_t end, size_t L, const Shape& rows) const {
    TileRun r;
    r.first = first;
    r.end = end;
    r.rows = 1;
    for (int64_t s : rows) r.rows *= s;
    std::vector<int64_t> produced(p_.buffers.size(), -1);  // row elements of run-written values
    std::vector<char> read(p_.buffers.size(), 0);
    for (size_t i = first; i < end; ++i) {
      const Node& n = p_.nodes[i];
      std::vector<View> views;
      auto out = merge_rows(n.out.view, L, rows);
      if (!out || read[n.out.buf]) return std::nullopt;
      views.push_back(*out);
      for (const Operand& o : n.in) {
        auto m = merge_rows(o.view, L, rows);
        if (!m) return std::nullopt;
        if (produced[o.buf] >= 0) {
          // Within one row of the producer, stepping by its rows.
          int64_t rs = produced[o.buf], extent = m->offset;
          if (m->dtype != p_.nodes[writer(o.buf, first, i)].out.view.dtype) return std::nullopt;
          for (size_t d = 1; d < m->sizes.size(); ++d) {
            if (m->strides[d] < 0) return std::nullopt;
            extent += (m->sizes[d] - 1) * m->strides[d];
          }
          if (m->strides[0] != rs || m->offset < 0 || extent >= std::max<int64_t>(rs, 1))
            return std::nullopt;
        }
        read[o.buf] = 1;
        views.push_back(*m);
      }
      produced[n.out.buf] = row_elements(*out);
      r.views.push_back(std::move(views));
    }
    return r;
  }

  size_t writer(int32_t buf, size_t first, size_t before) const {
    for (size_t i = before; i-- > first;)
      if (p_.nodes[i].out.buf == buf) return i;
    return first;
  }

  // Picks local values and the tile height; false when the run is not worth it.
  bool finish(TileRun& r) const {
    if (r.end - r.first < 2 || r.rows < 2) return false;
    bool passes = false;  // some value goes from one node of the run to another
    int64_t row_bytes = 0;
    std::vector<char> counted(p_.buffers.size(), 0);
    for (size_t i = r.first; i < r.end; ++i) {
      const Node& n = p_.nodes[i];
      const auto& views = r.views[i - r.first];
      for (size_t k = 0; k < views.size(); ++k) {
        int32_t b = k == 0 ? n.out.buf : n.in[k - 1].buf;
        const View& v = views[k];
        if (k > 0 && inside(b, r)) passes = true;
        if (counted[b] || v.strides[0] == 0) continue;
        counted[b] = 1;
        row_bytes += row_elements(v) * esize(v.dtype);
      }
    }
    if (!passes || row_bytes <= 0 || row_bytes > kTileBytes) return false;
    r.tile = std::clamp<int64_t>(kTileBytes / row_bytes, 1, r.rows);
    if (r.tile * 2 > r.rows) r.tile = (r.rows + 1) / 2;  // at least two tiles
    // Local values: written in the run, read only there, neither kept nor returned.
    for (size_t i = r.first; i < r.end; ++i) {
      int32_t b = p_.nodes[i].out.buf;
      if (p_.buffers[b].persistent() ||
          std::find(returned_.begin(), returned_.end(), b) != returned_.end())
        continue;
      bool only_here = true;
      for (size_t j : readers_[b]) only_here &= j > i && j < r.end;
      if (!only_here) continue;
      const View& v = r.views[i - r.first][0];
      r.local.push_back(b);
      r.local_offset.push_back(static_cast<int64_t>(r.scratch_bytes));
      size_t bytes = static_cast<size_t>(r.tile * row_elements(v) * esize(v.dtype));
      r.scratch_bytes += (bytes + 63) / 64 * 64;
    }
    return true;
  }

  bool inside(int32_t buf, const TileRun& r) const {
    for (size_t i = r.first; i < r.end; ++i)
      if (p_.nodes[i].out.buf == buf) return true;
    return false;
  }

  Program& p_;
  std::vector<int> writes_;
  std::vector<std::vector<size_t>> readers_;
  std::vector<int32_t> returned_;
};

}  // namespace

std::string tile_rows(Program& p) {
  p.tiles.clear();
  return Tiler(p).run();
}

}  // namespace tg::trace_detail
