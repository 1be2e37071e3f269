// Numerical-stability rewrites: formulas that overflow or lose everything to rounding, replaced by
// their stable forms (Note [Stability rewrites]).
#include <algorithm>
#include <cmath>

#include "trace/passes.h"
#include "trace/rewrite.h"

namespace tg::trace_detail {

// Note [Stability rewrites]
// The patterns are matched on values (temps written once, whole; see Rewriter): the graph sees
// softmax or logsumexp as the backend calls they are made of, and a user's naive formula the same
// way, so one set of patterns covers both. The matched root node is replaced by new nodes that
// write its result; the nodes it read stay (dce drops them when nothing else reads them).
//   1/(1 + exp(-t))            -> sigmoid(t)   (so the two below also catch the slides' form)
//   log(exp(z) / s)            -> z - log(s)   (log(softmax(x)) -> log_softmax)
//   log(sum(exp(a)))           -> m + log(sum(exp(a - m))), m the max over the group
//   exp(a) / sum(exp(a))       -> exp(a - m) / sum(exp(a - m))
//   log(sigmoid(x))            -> log_sigmoid(x)
//   log(1 - sigmoid(x))        -> log_sigmoid(-x)
//   log(1 + x)                 -> log1p(x)
// m is 0 where the group's max is ±inf, as in eager logsumexp, so a group of -inf still gives
// -inf. An already shifted exp (its input is a - m with m a max: softmax, logsumexp) is left
// alone. The results differ from the naive ones by rounding where those are finite, and are
// finite and right where those overflowed to inf or NaN.

namespace {

bool is(const Node& n, Call c, OpKind op) { return n.call == c && n.op == op; }

// Is `v` a permutation of a contiguous layout over `numel` elements from offset 0?
bool covers_once(const View& v, int64_t numel) {
  if (v.offset != 0 || v.numel() != numel || numel == 0) return false;
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size)
  for (size_t d = 0; d < v.sizes.size(); ++d)
    if (v.sizes[d] != 1) dims.push_back({v.strides[d], v.sizes[d]});
  std::sort(dims.begin(), dims.end());
  int64_t expect = 1;
  for (auto [stride, size] : dims) {
    if (stride != expect) return false;
    expect *= size;
  }
  return true;
}

// Calls fn(linear index, offset) for every element of a view, in row-major order.
template <class Fn>
void for_each_offset(const View& v, Fn fn) {
  size_t nd = v.sizes.size();
  std::vector<int64_t> idx(nd, 0);
  int64_t numel = v.numel();
  int64_t off = v.offset;
  for (int64_t lin = 0; lin < numel; ++lin) {
    fn(lin, off);
    for (size_t d = nd; d-- > 0;) {
      if (++idx[d] < v.sizes[d]) {
        off += v.strides[d];
        break;
      }
      off -= (v.sizes[d] - 1) * v.strides[d];
      idx[d] = 0;
    }
  }
}

// Does `bcast` (over the exp's contiguous layout) read, for each element, the sum of the group
// the sum's view puts that element in? Then the division is a softmax over those groups.
bool same_groups(const View& sum_view, int nreduced, const View& bcast) {
  int64_t numel = sum_view.numel();
  if (numel > (int64_t{1} << 24) || bcast.numel() != numel) return false;
  int64_t group_size = 1;
  for (size_t d = sum_view.sizes.size() - static_cast<size_t>(nreduced); d < sum_view.sizes.size(); ++d)
    group_size *= sum_view.sizes[d];
  std::vector<int64_t> group(static_cast<size_t>(numel), -1);
  for_each_offset(sum_view, [&](int64_t lin, int64_t off) {
    group[static_cast<size_t>(off)] = lin / group_size;
  });
  bool same = true;
  for_each_offset(bcast, [&](int64_t lin, int64_t off) {
    same = same && group[static_cast<size_t>(lin)] == off;
  });
  return same;
}

// Is `a` already a - m with m a max (what softmax and logsumexp feed exp)?
bool already_shifted(const Rewriter& r, const Operand& a) {
  int64_t s = r.value_writer(a.buf);
  if (s < 0 || !is(r.node(s), Call::Binary, OpKind::Sub)) return false;
  int64_t m = r.value_writer(r.node(s).in[1].buf);
  if (m >= 0 && r.node(m).call == Call::Where) m = r.value_writer(r.node(m).in[2].buf);
  return m >= 0 && is(r.node(m), Call::Reduce, OpKind::Amax);
}

// sum(exp(a)) over some of a's dims, found from the sum's node.
struct ExpSum {
  int64_t exp_at = -1;
  const Node* sum = nullptr;
  Operand a;    // exp's input
  View over_a;  // the sum's view of exp's result, moved onto a's buffer
};

std::optional<ExpSum> exp_sum(const Rewriter& r, int64_t sum_at) {
  if (sum_at < 0 || !is(r.node(sum_at), Call::Reduce, OpKind::Sum)) return std::nullopt;
  const Node& s = r.node(sum_at);
  int64_t e = r.value_writer(s.in[0].buf);
  if (e < 0 || !is(r.node(e), Call::Unary, OpKind::Exp)) return std::nullopt;
  const Node& en = r.node(e);
  const Operand& a = en.in[0];
  if (!covers_once(s.in[0].view, en.out.view.numel()) || a.view.strides != en.out.view.strides ||
      already_shifted(r, a))
    return std::nullopt;
  ExpSum x{e, &s, a, s.in[0].view};
  x.over_a.offset += a.view.offset;
  return x;
}

// Emits m (the group max, 0 where ±inf), z = a - m, e = exp(z), s = sum(e) for a matched
// sum(exp(a)); e has exp's layout, m and s the sum's.
struct Shifted {
  int32_t m, e, s;
};

Shifted emit_shifted(Rewriter& r, const ExpSum& x, const Node& root) {
  const Node& sum = *x.sum;
  DType dt = x.a.view.dtype;
  const View sv = sum.out.view;
  const View over_e = sum.in[0].view;
  auto sbytes = static_cast<size_t>(sv.numel() * esize(dt));
  auto ebytes = static_cast<size_t>(over_e.numel() * esize(dt));
  View scalar_b{sv.sizes, Shape(sv.sizes.size(), 0), 0, dt};  // a 0-d value at every element

  int32_t m = r.temp(sbytes, root);
  Node amax;
  amax.call = Call::Reduce;
  amax.op = OpKind::Amax;
  amax.out = {m, sv};
  amax.in = {{x.a.buf, x.over_a}};
  amax.nreduced = sum.nreduced;
  r.emit(amax, root);
  auto fill = [&](double v) {
    int32_t b = r.temp(static_cast<size_t>(esize(dt)), root);
    Node f;
    f.call = Call::Fill;
    f.out = {b, contiguous_view({}, dt)};
    f.value = v;
    r.emit(f, root);
    return b;
  };
  int32_t abs_m = r.temp(sbytes, root);
  r.emit(unary_node(OpKind::Abs, {abs_m, sv}, {m, sv}), root);
  int32_t inf = fill(INFINITY);
  View bool_v = contiguous_view(sv.sizes, kBool);
  int32_t is_inf = r.temp(static_cast<size_t>(sv.numel()), root);
  r.emit(binary_node(OpKind::Eq, {is_inf, bool_v}, {abs_m, sv}, {inf, scalar_b}), root);
  int32_t zero = fill(0);
  int32_t shift = r.temp(sbytes, root);
  Node where;
  where.call = Call::Where;
  where.op = OpKind::Where;
  where.out = {shift, sv};
  where.in = {{is_inf, bool_v}, {zero, scalar_b}, {m, sv}};
  r.emit(where, root);

  // z = a - shift, laid out as the sum reads it, so the shift broadcasts over the group.
  View shift_b{over_e.sizes, Shape(over_e.sizes.size(), 0), 0, dt};
  Shape sstrides = contiguous_strides(sv.sizes);
  for (size_t d = 0; d < sv.sizes.size(); ++d) shift_b.strides[d] = sstrides[d];
  int32_t z = r.temp(ebytes, root);
  r.emit(binary_node(OpKind::Sub, {z, over_e}, {x.a.buf, x.over_a}, {shift, shift_b}), root);
  int32_t e = r.temp(ebytes, root);
  View whole = contiguous_view({over_e.numel()}, dt);
  r.emit(unary_node(OpKind::Exp, {e, whole}, {z, whole}), root);
  int32_t s = r.temp(sbytes, root);
  Node total;
  total.call = Call::Reduce;
  total.op = OpKind::Sum;
  total.out = {s, sv};
  total.in = {{e, over_e}};
  total.nreduced = sum.nreduced;
  r.emit(total, root);
  return {shift, e, s};
}

struct Counts {
  int sigmoid = 0, log_softmax = 0, logsumexp = 0, softmax = 0, log_sigmoid = 0, log1p = 0;
};

// 1/(1 + exp(-t)) -> sigmoid(t)
bool rewrite_sigmoid(Rewriter& r, size_t i) {
  const Node& n = r.node(static_cast<int64_t>(i));
  if (!is(n, Call::Binary, OpKind::Div) || r.constant(n.in[0]) != 1.0) return false;
  int64_t add = r.producer(n.in[1]);
  if (add < 0 || !is(r.node(add), Call::Binary, OpKind::Add)) return false;
  const Node& an = r.node(add);
  int k = r.constant(an.in[0]) == 1.0 ? 1 : r.constant(an.in[1]) == 1.0 ? 0 : -1;
  if (k < 0) return false;
  int64_t ex = r.producer(an.in[static_cast<size_t>(k)]);
  if (ex < 0 || !is(r.node(ex), Call::Unary, OpKind::Exp)) return false;
  int64_t neg = r.producer(r.node(ex).in[0]);
  if (neg < 0 || !is(r.node(neg), Call::Unary, OpKind::Neg)) return false;
  const Operand& t = r.node(neg).in[0];
  if (!r.unchanged(t.buf, neg, static_cast<int64_t>(i))) return false;
  r.emit(unary_node(OpKind::Sigmoid, n.out, t), n);
  return true;
}

// The rewrites rooted at a log.
bool rewrite_log(Rewriter& r, size_t i, Counts& c) {
  const Node& n = r.node(static_cast<int64_t>(i));
  if (!is(n, Call::Unary, OpKind::Log)) return false;
  auto at = static_cast<int64_t>(i);
  int64_t p = r.producer(n.in[0]);
  if (p < 0) return false;
  const Node& pn = r.node(p);
  // log(exp(z) / s) -> z - log(s)
  if (is(pn, Call::Binary, OpKind::Div)) {
    int64_t e = r.producer(pn.in[0]);
    if (e >= 0 && is(r.node(e), Call::Unary, OpKind::Exp)) {
      const Operand& z = r.node(e).in[0];
      const Operand& s = pn.in[1];
      DType dt = n.out.view.dtype;
      int64_t sw = r.value_writer(s.buf);
      View sv = sw >= 0 ? r.node(sw).out.view : whole_view(r.program(), s.buf, dt);
      if (r.unchanged(z.buf, e, at) && r.unchanged(s.buf, p, at) && sv.numel() <= n.out.view.numel()) {
        int32_t log_s = r.temp(r.program().buffers[s.buf].nbytes, n);
        r.emit(unary_node(OpKind::Log, {log_s, sv}, {s.buf, sv}), n);
        r.emit(binary_node(OpKind::Sub, n.out, z, {log_s, s.view}), n);
        ++c.log_softmax;
        return true;
      }
    }
  }
  // log(sum(exp(a))) -> m + log(sum(exp(a - m)))
  if (auto x = exp_sum(r, p); x && r.unchanged(x->a.buf, x->exp_at, at)) {
    Shifted sh = emit_shifted(r, *x, n);
    const View& sv = pn.out.view;
    int32_t log_s = r.temp(r.program().buffers[pn.out.buf].nbytes, n);
    r.emit(unary_node(OpKind::Log, {log_s, sv}, {sh.s, sv}), n);
    r.emit(binary_node(OpKind::Add, n.out, {log_s, sv}, {sh.m, sv}), n);
    ++c.logsumexp;
    return true;
  }
  // log(sigmoid(x)) -> log_sigmoid(x)
  if (is(pn, Call::Unary, OpKind::Sigmoid) && r.unchanged(pn.in[0].buf, p, at)) {
    r.emit(unary_node(OpKind::LogSigmoid, n.out, pn.in[0]), n);
    ++c.log_sigmoid;
    return true;
  }
  // log(1 - sigmoid(x)) -> log_sigmoid(-x)
  if (is(pn, Call::Binary, OpKind::Sub) && r.constant(pn.in[0]) == 1.0) {
    int64_t s = r.producer(pn.in[1]);
    if (s >= 0 && is(r.node(s), Call::Unary, OpKind::Sigmoid) &&
        r.unchanged(r.node(s).in[0].buf, s, at)) {
      const Node& sn = r.node(s);
      int32_t neg = r.temp(r.program().buffers[sn.out.buf].nbytes, n);
      r.emit(unary_node(OpKind::Neg, {neg, sn.out.view}, sn.in[0]), n);
      r.emit(unary_node(OpKind::LogSigmoid, n.out, {neg, sn.out.view}), n);
      ++c.log_sigmoid;
      return true;
    }
  }
  // log(1 + x) -> log1p(x)
  if (is(pn, Call::Binary, OpKind::Add)) {
    int k = r.constant(pn.in[0]) == 1.0 ? 1 : r.constant(pn.in[1]) == 1.0 ? 0 : -1;
    if (k >= 0) {
      const Operand& x = pn.in[static_cast<size_t>(k)];
      if (r.unchanged(x.buf, p, at)) {
        r.emit(unary_node(OpKind::Log1p, n.out, x), n);
        ++c.log1p;
        return true;
      }
    }
  }
  return false;
}

// exp(a) / sum(exp(a)) -> exp(a - m) / sum(exp(a - m))
bool rewrite_softmax(Rewriter& r, size_t i) {
  const Node& n = r.node(static_cast<int64_t>(i));
  if (!is(n, Call::Binary, OpKind::Div)) return false;
  int64_t e = r.producer(n.in[0]);
  auto x = exp_sum(r, r.value_writer(n.in[1].buf));
  if (e < 0 || !x || x->exp_at != e || !r.unchanged(x->a.buf, e, static_cast<int64_t>(i)) ||
      !same_groups(x->sum->in[0].view, x->sum->nreduced, n.in[1].view))
    return false;
  Shifted sh = emit_shifted(r, *x, n);
  r.emit(binary_node(OpKind::Div, n.out, {sh.e, n.in[0].view}, {sh.s, n.in[1].view}), n);
  return true;
}

// One sweep over the nodes with `rule`; returns how many roots it rewrote.
template <class Rule>
int sweep(Program& p, Rule rule) {
  Rewriter r(p);
  int count = 0;
  for (size_t i = 0; i < r.size(); ++i) {
    if (rule(r, i)) {
      ++count;
    } else {
      r.keep(i);
    }
  }
  r.finish();
  return count;
}

}  // namespace

std::string rewrite_for_stability(Program& p) {
  Counts c;
  c.sigmoid = sweep(p, rewrite_sigmoid);
  sweep(p, [&](Rewriter& r, size_t i) { return rewrite_log(r, i, c); });
  // Twice: log(exp(z) / s) leaves a log(s) that may be a log(sum(exp)).
  sweep(p, [&](Rewriter& r, size_t i) { return rewrite_log(r, i, c); });
  c.softmax = sweep(p, rewrite_softmax);
  return fmt::format(
      "stability: {} sigmoid, {} log_softmax, {} logsumexp, {} softmax, {} log_sigmoid, {} log1p",
      c.sigmoid, c.log_softmax, c.logsumexp, c.softmax, c.log_sigmoid, c.log1p);
}

}  // namespace tg::trace_detail
