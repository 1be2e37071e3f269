// Algebraic simplification: identities that hold exactly in floating point.
#include <unordered_map>

#include "trace/passes.h"
#include "trace/rewrite.h"

namespace tg::trace_detail {

// Note [Algebraic simplification]
// Only rewrites that give the same bits (up to the sign of a zero for x + 0):
//   x * 1, 1 * x, x / 1, x + 0, 0 + x, x - 0, pow(x, 1), neg(neg(x)), a copy of x  -> x
//   copy(copy(x) seen through a permutation or slice)                               -> one copy
// "-> x" means readers of the result read x instead, and the node goes; that needs x read whole
// through the result's own layout and never written later. Otherwise the node stays. A copy of a
// copy reads the first copy's source through the composed view (transposing twice is no copy at
// all). Views themselves (reshape, transpose, expand) are no nodes, so chains of them cost
// nothing already. Refused because they are not exact: exp(log(x)) (NaN for x < 0), log(exp(x)),
// x * 0 (NaN * 0), x / x (Theano's rule; 0 / 0 is NaN).

namespace {

bool is(const Node& n, Call c, OpKind op) { return n.call == c && n.op == op; }

// The view of `src` that reads what `v` reads from the contiguous `copied` (= src, copied whole),
// when it is strided: each dim of v must walk one dim of the copy, within its range.
std::optional<View> compose(const View& v, const View& copied, const View& src) {
  const Shape& ts = copied.sizes;
  const Shape& cs = copied.strides;
  if (copied.numel() == 0 || v.numel() == 0) return std::nullopt;
  std::vector<int64_t> u0(ts.size(), 0);
  int64_t rem = v.offset;
  for (size_t e = 0; e < ts.size(); ++e) {
    u0[e] = rem / cs[e];
    rem %= cs[e];
  }
  View out{v.sizes, contiguous_strides(v.sizes), src.offset, src.dtype};
  for (size_t e = 0; e < ts.size(); ++e) out.offset += u0[e] * src.strides[e];
  std::vector<char> used(ts.size(), 0);
  for (size_t d = 0; d < v.sizes.size(); ++d) {
    if (v.sizes[d] == 1) continue;
    bool found = false;
    for (size_t e = 0; e < ts.size() && !found; ++e) {
      if (ts[e] == 1 || used[e] || cs[e] != v.strides[d]) continue;
      if (u0[e] + v.sizes[d] > ts[e]) return std::nullopt;
      used[e] = 1;
      out.strides[d] = src.strides[e];
      found = true;
    }
    if (!found) return std::nullopt;
  }
  return out;
}

struct Simplifier {
  Rewriter r;
  std::unordered_map<int32_t, int32_t> alias;  // result buffer -> the buffer readers read instead
  int identities = 0, composed = 0;

  explicit Simplifier(Program& p) : r(p) {}

  // Readers of node i's result read x instead, when that is the same value.
  bool identity(size_t i, const Operand& x) {
    const Node& n = r.node(static_cast<int64_t>(i));
    const Program& p = r.program();
    if (r.value_writer(n.out.buf) != static_cast<int64_t>(i) || x.buf == n.out.buf ||
        !(x.view == n.out.view) || p.buffers[x.buf].nbytes != p.buffers[n.out.buf].nbytes ||
        !r.final_after(x.buf, static_cast<int64_t>(i)))
      return false;
    alias[n.out.buf] = x.buf;
    ++identities;
    return true;
  }

  bool visit(size_t i) {
    const Node& n = r.node(static_cast<int64_t>(i));
    auto at = static_cast<int64_t>(i);
    if (n.call == Call::Binary) {
      auto c0 = r.constant(n.in[0]), c1 = r.constant(n.in[1]);
      switch (n.op) {
        case OpKind::Mul:
          return (c1 == 1.0 && identity(i, n.in[0])) || (c0 == 1.0 && identity(i, n.in[1]));
        case OpKind::Add:
          return (c1 == 0.0 && identity(i, n.in[0])) || (c0 == 0.0 && identity(i, n.in[1]));
        case OpKind::Div: return c1 == 1.0 && identity(i, n.in[0]);
        case OpKind::Sub: return c1 == 0.0 && identity(i, n.in[0]);
        default: return false;
      }
    }
    if (is(n, Call::Unary, OpKind::PowScalar) && n.attrs.a == 1.0) return identity(i, n.in[0]);
    if (is(n, Call::Unary, OpKind::Neg)) {
      int64_t p = r.producer(n.in[0]);
      return p >= 0 && is(r.node(p), Call::Unary, OpKind::Neg) &&
             r.unchanged(r.node(p).in[0].buf, p, at) && identity(i, r.node(p).in[0]);
    }
    if (n.call == Call::Copy) {
      bool cast = n.in[0].view.dtype != n.out.view.dtype;
      if (!cast && identity(i, n.in[0])) return true;
      int64_t p = r.value_writer(n.in[0].buf);
      if (p < 0 || r.node(p).call != Call::Copy) return false;
      const Node& first = r.node(p);
      if (first.in[0].view.dtype != first.out.view.dtype ||
          !r.unchanged(first.in[0].buf, p, at))
        return false;
      auto v = compose(n.in[0].view, first.out.view, first.in[0].view);
      if (!v) return false;
      Operand src{first.in[0].buf, *v};
      if (!cast && identity(i, src)) return true;
      Node copy = n;
      copy.in = {src};
      r.emit(std::move(copy), n);
      ++composed;
      return true;
    }
    return false;
  }
};

}  // namespace

std::string simplify_algebra(Program& p) {
  Simplifier s(p);
  for (size_t i = 0; i < s.r.size(); ++i)
    if (!s.visit(i)) s.r.keep(i);
  s.r.finish();
  auto resolve = [&](int32_t b) {
    for (auto it = s.alias.find(b); it != s.alias.end(); it = s.alias.find(b)) b = it->second;
    return b;
  };
  if (!s.alias.empty()) {
    for (Node& n : p.nodes)
      for (Operand& o : n.in) o.buf = resolve(o.buf);
    for (Operand& o : p.outputs) o.buf = resolve(o.buf);
  }
  return fmt::format("algebra: {} identities removed, {} copies of copies made one", s.identities,
                     s.composed);
}

}  // namespace tg::trace_detail
