// Common subexpression elimination: a node computing what an earlier node already computed is
// dropped and its readers read the earlier result.
#include <unordered_map>

#include "trace/passes.h"

namespace tg::trace_detail {

namespace {

void put_view(std::string& key, const View& v) {
  key += fmt::format("{}:{}:{}:{};", v.sizes, v.strides, v.offset, static_cast<int>(v.dtype));
}

// Everything the node's result depends on: the call and its attributes, the device it lands on
// (a fill, or a transfer of one CPU tensor, on two GPUs is two values), and each input as a
// buffer at a version (the number of writes to it so far) through a view.
std::string key_of(const Node& n, const std::vector<int>& version, Device device) {
  std::string key = fmt::format("{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|", static_cast<int>(n.call),
                                static_cast<int>(n.op), n.attrs.a, n.attrs.b,
                                n.value.to_double(), static_cast<int>(n.value.kind()), n.start,
                                n.step, n.nreduced, n.dim, n.window.kh, n.window.kw);
  key += fmt::format("{},{},{},{},{},{}|", n.window.sh, n.window.sw, n.window.ph, n.window.pw,
                     n.window.dh, n.window.dw);
  key.append(n.bytes.begin(), n.bytes.end());
  key += '|';
  key += device.str();
  put_view(key, n.out.view);
  for (const Operand& o : n.in) {
    key += fmt::format("b{}v{}:", o.buf, version[o.buf]);
    put_view(key, o.view);
  }
  return key;
}

}  // namespace

// Note [Common subexpressions]
// Only values take part: nodes that write a whole temp, written by no other node, that is not
// kept or returned. Two such nodes with the same key compute the same bytes (inputs at the same
// versions, the same call, the same layout), so the later one's readers can read the earlier
// one's buffer. Random draws never merge.
std::string eliminate_common_subexpressions(Program& p) {
  std::vector<int> writes = write_counts(p);
  std::vector<int> version(p.buffers.size(), 0);
  std::unordered_map<std::string, int32_t> seen;
  std::vector<char> drop(p.nodes.size(), 0);
  size_t removed = 0;
  for (size_t i = 0; i < p.nodes.size(); ++i) {
    Node& n = p.nodes[i];
    bool value = n.call != Call::Random && n.out2.buf < 0 && writes[n.out.buf] == 1 &&
                 !p.buffers[n.out.buf].persistent() && p.full_write(n);
    if (value) {
      auto [it, fresh] = seen.emplace(key_of(n, version, p.buffers[n.out.buf].device), n.out.buf);
      if (!fresh) {
        replace_reads(p, n.out.buf, it->second, i + 1);
        drop[i] = 1;
        ++removed;
        continue;
      }
    }
    ++version[n.out.buf];
    if (n.out2.buf >= 0) ++version[n.out2.buf];
  }
  std::vector<Node> kept;
  for (size_t i = 0; i < p.nodes.size(); ++i)
    if (!drop[i]) kept.push_back(std::move(p.nodes[i]));
  p.nodes = std::move(kept);
  return fmt::format("cse: merged {} nodes", removed);
}

}  // namespace tg::trace_detail
