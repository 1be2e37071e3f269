// What the rewriting passes (stability, algebra, fold) share: who writes each buffer, matching a
// read to the node that produced its value, and emitting new nodes into new temps.
#pragma once

#include <optional>

#include "trace/program.h"

namespace tg::trace_detail {

class Rewriter {
 public:
  explicit Rewriter(Program& p);

  // The index of the node that produced the value `o` reads: the only writer of a temp that is
  // not kept or returned, writing all of it, with the same view as `o` reads. Else -1.
  int64_t producer(const Operand& o) const;
  // Like producer(), but the reader may see the value through any view (a permutation, a
  // broadcast): only the buffer has to be a value.
  int64_t value_writer(int32_t buf) const;
  // No node in (from, to) writes `buf`.
  bool unchanged(int32_t buf, int64_t from, int64_t to) const;
  // No node after `at` writes `buf`.
  bool final_after(int32_t buf, int64_t at) const;
  // The value every element of `o`'s buffer holds, when a fill wrote all of it.
  std::optional<double> constant(const Operand& o) const;

  const Node& node(int64_t i) const { return p_.nodes[static_cast<size_t>(i)]; }
  size_t size() const { return p_.nodes.size(); }

  // Building the new node list: keep a node, or emit new ones in its place.
  void keep(size_t i) { out_.push_back(p_.nodes[i]); }
  void emit(Node n, const Node& like);
  // A new temp like `like`'s result (for errors), of nbytes on like's device.
  int32_t temp(size_t nbytes, const Node& like);
  // Replaces p.nodes by what was kept and emitted.
  void finish() { p_.nodes = std::move(out_); }

  Program& program() { return p_; }

 private:
  Program& p_;
  std::vector<std::vector<int64_t>> writers_;  // per buffer, in order
  std::vector<Node> out_;
};

// A 1-D view over the whole of a buffer.
View whole_view(const Program& p, int32_t buf, DType dtype);

// Helpers to make nodes.
Node unary_node(OpKind op, Operand out, Operand in, OpAttrs attrs = {});
Node binary_node(OpKind op, Operand out, Operand a, Operand b);

}  // namespace tg::trace_detail
