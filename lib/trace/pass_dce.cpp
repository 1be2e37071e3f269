// Dead code elimination: drops nodes whose results nothing live reads.
#include "trace/passes.h"

namespace tg::trace_detail {

// Note [Dead code]
// Walking backwards, a buffer is needed when a live node after this point reads it. A node is
// live when it writes a needed buffer, a persistent one (an input, state, an escaped temp, an
// output: these are the function's effects), or draws random numbers (dropping it would shift
// every later draw, so replays would no longer match eager runs). A node that writes a whole
// temp ends that temp's need: earlier writes to it are invisible after it.
std::string eliminate_dead_code(Program& p) {
  std::vector<char> needed(p.buffers.size(), 0);
  std::vector<char> keep(p.nodes.size(), 0);
  for (size_t i = p.nodes.size(); i-- > 0;) {
    const Node& n = p.nodes[i];
    const Buffer& out = p.buffers[n.out.buf];
    bool live = needed[n.out.buf] || out.persistent() || n.call == Call::Random ||
                (n.out2.buf >= 0 && (needed[n.out2.buf] || p.buffers[n.out2.buf].persistent()));
    if (!live) continue;
    keep[i] = 1;
    if (p.full_write(n) && !out.persistent()) needed[n.out.buf] = 0;
    for (const Operand& o : n.in) needed[o.buf] = 1;
    if (n.reads_out()) needed[n.out.buf] = 1;
  }
  std::vector<Node> kept;
  kept.reserve(p.nodes.size());
  for (size_t i = 0; i < p.nodes.size(); ++i)
    if (keep[i]) kept.push_back(std::move(p.nodes[i]));
  size_t removed = p.nodes.size() - kept.size();
  p.nodes = std::move(kept);
  return fmt::format("dce: removed {} nodes", removed);
}

std::vector<int> write_counts(const Program& p) {
  std::vector<int> count(p.buffers.size(), 0);
  for (const Node& n : p.nodes) {
    ++count[n.out.buf];
    if (n.out2.buf >= 0) ++count[n.out2.buf];
  }
  return count;
}

void replace_reads(Program& p, int32_t from, int32_t to, size_t first) {
  for (size_t i = first; i < p.nodes.size(); ++i)
    for (Operand& o : p.nodes[i].in)
      if (o.buf == from) o.buf = to;
  for (Operand& o : p.outputs)
    if (o.buf == from) o.buf = to;
}

}  // namespace tg::trace_detail
