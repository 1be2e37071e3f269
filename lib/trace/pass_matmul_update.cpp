// Matmul updates: `w -= lr * (a·b)` run as one product that accumulates into w.
#include "trace/passes.h"
#include "trace/rewrite.h"

namespace tg::trace_detail {

// Note [Matmul updates]
// A training step ends in updates like `w.sub_(g * lr)`, where g = xᵀ·δ is a weight gradient
// that nothing else reads. Run as recorded, the step writes g (as big as w), reads it back to
// scale it, and reads and writes w: several passes over w-sized memory where one does, and at
// small batches those passes are most of the step. This lowering step (after the passes, like
// fusion; f.save() writes the graph before it) matches
//     g = matmul(a, b)                           batch 1
//     t = mul(g, s) | mul(s, g)                  s one element, broadcast: a constant, or state
//                                                such as an optimizer's learning rate
//     w = sub(w, t) | add(w, t) | add(t, w)      w written in place, through one view
// (t may be g itself) and an in-place `w = mul(w, c)` right before an add (SGD's momentum
// buffer: buf.mul_(m).add_(g)), and puts one node where the update was:
//     w = ±s·(a·b) + c·w                         Backend::matmul_update (BLAS's alpha and beta)
// Conditions: g and t are values (written once, whole, neither kept nor returned) read by the
// next line only; g is read whole in w's element order; w's columns are contiguous; no node
// between the product and the update writes a, b or s, which are now read later; a, b and s do
// not read w's buffer; between `w = mul(w, c)` and the add nothing reads or writes w. Results
// change by rounding only (the scaled product is added to w with one rounding less).

namespace {

bool is(const Node& n, Call c, OpKind op) { return n.call == c && n.op == op; }

bool broadcast_one(const View& v) {
  for (int64_t s : v.strides)
    if (s != 0) return false;
  return true;
}

struct Folder {
  Rewriter r;
  const Program& p;
  std::vector<int> readers;   // reads of each buffer, outputs included
  std::vector<char> removed;  // nodes folded into a later one
  int folded = 0, with_beta = 0;
  size_t bytes = 0;

  explicit Folder(Program& prog) : r(prog), p(prog) {
    readers.assign(p.buffers.size(), 0);
    for (const Node& n : p.nodes) {
      for (const Operand& o : n.in) ++readers[o.buf];
      if (n.reads_out()) ++readers[n.out.buf];
    }
    for (const Operand& o : p.outputs) ++readers[o.buf];
    removed.assign(p.nodes.size(), 0);
  }

  // The node that wrote the value o reads (through any view), when o is its only reader.
  int64_t single_use(const Operand& o) const {
    int64_t w = r.value_writer(o.buf);
    return w >= 0 && readers[o.buf] == 1 && !removed[static_cast<size_t>(w)] ? w : -1;
  }

  // The one value o broadcasts, when it is known now: a fill, or a constant folded at compile
  // time (kept on the CPU).
  std::optional<double> scalar(const Operand& o) const {
    if (!broadcast_one(o.view)) return std::nullopt;
    if (auto c = r.constant(o)) return c;
    const Buffer& b = p.buffers[o.buf];
    if (!b.constant || !b.kept || !b.device.is_cpu() || !is_floating(o.view.dtype))
      return std::nullopt;
    const char* at = static_cast<const char*>(b.kept->data) + o.view.offset * esize(o.view.dtype);
    if (o.view.dtype == kF64) return *reinterpret_cast<const double*>(at);
    return static_cast<double>(*reinterpret_cast<const float*>(at));
  }

  // Node `at` updates w in place; returns the node that replaces it, or nothing.
  std::optional<Node> fold(size_t at) {
    const Node& upd = p.nodes[at];
    if (upd.call != Call::Binary || !is_floating(upd.out.view.dtype)) return std::nullopt;
    double sign = 1;
    int wi = -1;
    if (upd.op == OpKind::Sub)
      sign = -1, wi = 0;
    else if (upd.op == OpKind::Add)
      wi = upd.in[0] == upd.out ? 0 : 1;
    else
      return std::nullopt;
    if (!(upd.in[wi] == upd.out)) return std::nullopt;
    const Operand& t = upd.in[1 - wi];
    if (t.buf == upd.out.buf) return std::nullopt;
    int64_t ti = single_use(t);
    if (ti < 0) return std::nullopt;
    // t = g, or t = g·s.
    int64_t gi = -1, mi = -1;
    Operand g = t, scale;
    const Node& tn = p.nodes[static_cast<size_t>(ti)];
    if (tn.call == Call::Matmul) {
      gi = ti;
    } else if (is(tn, Call::Binary, OpKind::Mul)) {
      for (int k = 0; k < 2 && gi < 0; ++k) {
        int64_t c = single_use(tn.in[k]);
        if (c >= 0 && p.nodes[static_cast<size_t>(c)].call == Call::Matmul &&
            broadcast_one(tn.in[1 - k].view)) {
          gi = c, mi = ti, g = tn.in[k], scale = tn.in[1 - k];
        }
      }
    }
    if (gi < 0) return std::nullopt;
    const Node& mm = p.nodes[static_cast<size_t>(gi)];
    if (mm.matmul_update() || mm.out.view.sizes.size() != 3 || mm.out.view.sizes[0] != 1)
      return std::nullopt;
    int64_t m = mm.out.view.sizes[1], n = mm.out.view.sizes[2];
    // g read whole, contiguous, in the update's element order.
    const View& wv = upd.out.view;
    if (!g.view.contiguous() || g.view.offset != 0 || g.view.numel() != m * n ||
        g.view.sizes != (mi >= 0 ? p.nodes[static_cast<size_t>(mi)].out.view.sizes : wv.sizes) ||
        t.view.sizes != wv.sizes || !t.view.contiguous() || t.view.offset != 0)
      return std::nullopt;
    // w as an m×n matrix with contiguous columns.
    int64_t row_stride = n;
    if (!wv.contiguous()) {
      Shape sizes, strides;
      for (size_t d = 0; d < wv.sizes.size(); ++d)
        if (wv.sizes[d] != 1) sizes.push_back(wv.sizes[d]), strides.push_back(wv.strides[d]);
      if (sizes.size() != 2 || sizes[0] != m || sizes[1] != n || strides[1] != 1 || strides[0] < n)
        return std::nullopt;
      row_stride = strides[0];
    }
    // Operands now read at `at` instead of at gi: unchanged in between, and not w.
    std::vector<Operand> ins = {mm.in[0], mm.in[1]};
    if (scale.buf >= 0) {
      if (scale.view.dtype != wv.dtype) return std::nullopt;
      ins.push_back({scale.buf, View{Shape{}, Shape{}, scale.view.offset, scale.view.dtype}});
    }
    for (const Operand& o : ins)
      if (o.buf == upd.out.buf || !r.unchanged(o.buf, gi, static_cast<int64_t>(at)))
        return std::nullopt;
    Node out = mm;
    out.out = {upd.out.buf, View{{1, m, n}, {m * row_stride, row_stride, 1}, wv.offset, wv.dtype}};
    out.in = std::move(ins);
    out.alpha = sign;
    out.beta = 1;
    out.user_op = upd.user_op, out.file = upd.file, out.line = upd.line;
    removed[static_cast<size_t>(gi)] = 1;
    if (mi >= 0) removed[static_cast<size_t>(mi)] = 1;
    bytes += p.buffers[g.buf].nbytes + (mi >= 0 ? p.buffers[t.buf].nbytes : 0);
    ++folded;
    fold_beta(at, out);
    return out;
  }

  // w = mul(w, c) just before `at`, nothing reading w between: c becomes beta.
  void fold_beta(size_t at, Node& out) {
    const Node& upd = p.nodes[at];
    if (upd.op != OpKind::Add) return;
    int32_t w = upd.out.buf;
    for (size_t j = at; j-- > 0;) {
      const Node& n = p.nodes[j];
      if (removed[j]) continue;
      bool reads = n.reads_out() && n.out.buf == w;
      for (const Operand& o : n.in) reads = reads || o.buf == w;
      if (n.out.buf == w) {
        if (!is(n, Call::Binary, OpKind::Mul) || !(n.out == upd.out) || !(n.in[0] == n.out) ||
            n.in[1].buf == w)
          return;
        std::optional<double> c = scalar(n.in[1]);
        if (!c) return;
        out.beta = *c;
        removed[j] = 1;
        ++with_beta;
        return;
      }
      if (reads || n.out2.buf == w) return;
    }
  }
};

}  // namespace

std::string fold_matmul_updates(Program& p) {
  Folder f(p);
  std::vector<std::optional<Node>> replaced(p.nodes.size());
  for (size_t i = 0; i < p.nodes.size(); ++i) replaced[i] = f.fold(i);
  for (size_t i = 0; i < p.nodes.size(); ++i) {
    if (f.removed[i]) continue;
    if (replaced[i])
      f.r.emit(std::move(*replaced[i]), p.nodes[i]);
    else
      f.r.keep(i);
  }
  f.r.finish();
  return fmt::format(
      "matmul_update: {} updates folded into their products ({} with a scaled target), {} bytes "
      "never stored",
      f.folded, f.with_beta, f.bytes);
}

}  // namespace tg::trace_detail
