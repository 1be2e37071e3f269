// The rewriting passes' shared helpers (trace/rewrite.h).
#include "trace/rewrite.h"

#include "core/check.h"

namespace tg::trace_detail {

Rewriter::Rewriter(Program& p) : p_(p), writers_(p.buffers.size()) {
  for (size_t i = 0; i < p.nodes.size(); ++i) {
    const Node& n = p.nodes[i];
    writers_[n.out.buf].push_back(static_cast<int64_t>(i));
    if (n.out2.buf >= 0) writers_[n.out2.buf].push_back(static_cast<int64_t>(i));
  }
  out_.reserve(p.nodes.size());
}

int64_t Rewriter::value_writer(int32_t buf) const {
  if (buf < 0 || p_.buffers[buf].persistent() || writers_[buf].size() != 1) return -1;
  int64_t w = writers_[buf][0];
  const Node& n = node(w);
  if (n.out.buf != buf || n.out2.buf >= 0 || !p_.full_write(n)) return -1;
  return w;
}

int64_t Rewriter::producer(const Operand& o) const {
  int64_t w = value_writer(o.buf);
  return w >= 0 && node(w).out.view == o.view ? w : -1;
}

bool Rewriter::unchanged(int32_t buf, int64_t from, int64_t to) const {
  for (int64_t w : writers_[buf])
    if (w > from && w < to) return false;
  return true;
}

bool Rewriter::final_after(int32_t buf, int64_t at) const {
  for (int64_t w : writers_[buf])
    if (w > at) return false;
  return true;
}

std::optional<double> Rewriter::constant(const Operand& o) const {
  int64_t w = value_writer(o.buf);
  if (w >= 0 && node(w).call == Call::Fill) return node(w).value.to_double();
  return std::nullopt;
}

void Rewriter::emit(Node n, const Node& like) {
  n.user_op = like.user_op;
  n.file = like.file;
  n.line = like.line;
  out_.push_back(std::move(n));
}

int32_t Rewriter::temp(size_t nbytes, const Node& like) {
  Buffer b;
  b.kind = BufKind::Temp;
  b.nbytes = nbytes;
  b.device = p_.buffers[like.out.buf].device;
  b.first_op = like.user_op;
  p_.buffers.push_back(std::move(b));
  writers_.emplace_back();
  return static_cast<int32_t>(p_.buffers.size() - 1);
}

View whole_view(const Program& p, int32_t buf, DType dtype) {
  return contiguous_view({static_cast<int64_t>(p.buffers[buf].nbytes) / esize(dtype)}, dtype);
}

Node unary_node(OpKind op, Operand out, Operand in, OpAttrs attrs) {
  Node n;
  n.call = Call::Unary;
  n.op = op;
  n.out = std::move(out);
  n.in = {std::move(in)};
  n.attrs = attrs;
  return n;
}

Node binary_node(OpKind op, Operand out, Operand a, Operand b) {
  Node n;
  n.call = Call::Binary;
  n.op = op;
  n.out = std::move(out);
  n.in = {std::move(a), std::move(b)};
  return n;
}

}  // namespace tg::trace_detail
