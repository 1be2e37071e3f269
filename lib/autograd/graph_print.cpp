// Looking at the tape: graph_string / print_graph (one line per node) and to_dot (Graphviz).
#include <iostream>
#include <map>

#include "autograd/node.h"
#include "core/check.h"

namespace tg {
namespace {

// The nodes that produced t, root first, each once (iterative: tapes can be long).
std::vector<const NodeImpl*> collect(const Tensor& t, std::map<const NodeImpl*, size_t>& ids) {
  std::vector<const NodeImpl*> order;
  if (!t.defined() || !t.impl()->grad_fn) return order;
  std::vector<const NodeImpl*> stack{t.impl()->grad_fn.get()};
  while (!stack.empty()) {
    const NodeImpl* n = stack.back();
    stack.pop_back();
    if (ids.count(n)) continue;
    ids[n] = order.size();
    order.push_back(n);
    for (auto it = n->inputs.rbegin(); it != n->inputs.rend(); ++it)
      if (it->fn && !ids.count(it->fn.get())) stack.push_back(it->fn.get());
  }
  return order;
}

std::string describe(const NodeImpl& n) {
  std::string label = n.backward_name();
  if (n.is_accumulator && n.leaf && n.leaf->meta && !n.leaf->meta->name.empty())
    label += fmt::format(" '{}'", n.leaf->meta->name);
  return label;
}

}  // namespace

std::string graph_string(const Tensor& t) {
  TG_CHECK(t.defined(), "print_graph: the tensor is undefined");
  std::map<const NodeImpl*, size_t> ids;
  auto order = collect(t, ids);
  if (order.empty())
    return fmt::format("tensor {} {} is a leaf{}: no tape\n", t.shape(), dtype_name(t.dtype()),
                       t.requires_grad() ? " that requires grad" : "");
  std::string out = fmt::format("tape of tensor {} {} ({} nodes):\n", t.shape(),
                                dtype_name(t.dtype()), order.size());
  for (const NodeImpl* n : order) {
    std::string inputs;
    for (const auto& in : n->inputs) {
      if (!inputs.empty()) inputs += ", ";
      inputs += in.fn ? fmt::format("#{}", ids[in.fn.get()]) : std::string("-");
    }
    std::string where = n->is_accumulator ? std::string("leaf")
                                          : fmt::format("{}:{}", n->loc.file_name(), n->loc.line());
    out += fmt::format("  #{:<3} {:<24} {:<16} {:<5} {}{}\n", ids[n], describe(*n),
                       fmt::format("{}", n->out_shape), dtype_name(n->out_dtype), where,
                       inputs.empty() ? "" : "  <- " + inputs);
  }
  return out;
}

void print_graph(const Tensor& t, std::ostream& os) { os << graph_string(t); }
void print_graph(const Tensor& t) { print_graph(t, std::cout); }

std::string to_dot(const Tensor& t) {
  TG_CHECK(t.defined(), "to_dot: the tensor is undefined");
  std::map<const NodeImpl*, size_t> ids;
  auto order = collect(t, ids);
  std::string out = "digraph tape {\n  rankdir=BT;\n  node [shape=box, fontname=\"monospace\"];\n";
  for (const NodeImpl* n : order) {
    std::string file = n->loc.file_name();
    if (auto slash = file.rfind('/'); slash != std::string::npos) file = file.substr(slash + 1);
    std::string where = n->is_accumulator ? "leaf" : fmt::format("{}:{}", file, n->loc.line());
    out += fmt::format("  n{} [label=\"{}\\n{} {}\\n{}\"{}];\n", ids[n], describe(*n), n->out_shape,
                       dtype_name(n->out_dtype), where,
                       n->is_accumulator ? ", style=filled, fillcolor=lightblue" : "");
  }
  for (const NodeImpl* n : order)
    for (const auto& in : n->inputs)
      if (in.fn) out += fmt::format("  n{} -> n{};\n", ids[in.fn.get()], ids[n]);
  return out + "}\n";
}

}  // namespace tg
