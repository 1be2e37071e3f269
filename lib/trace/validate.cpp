// Checking a loaded graph before anything runs: every operand inside its buffer, every node's
// shapes and dtypes as its kernel expects them (Note [Validating traced files]).
#include "trace/serialize.h"

#include <limits>

#include "core/check.h"

namespace tg::trace_detail {

// Note [Validating traced files]
// A traced file is data, and a hostile one must give tg::Error, never a kernel reading or
// writing out of bounds. So before a graph is run: each view has a known dtype, at most
// kMaxDims non-negative sizes whose product does not overflow, non-negative strides and offset,
// and its last element inside its buffer; each node has the operands its call takes, of the
// shapes and dtypes the backend's contract (backend.h) states, so no kernel indexes past what it
// was given. Index values are checked by the kernels at every call, as in eager mode.

namespace {

constexpr int64_t kMaxElements = int64_t{1} << 48;

OpFamily family(OpKind k) { return op_info(k).family; }

bool is_float(DType d) { return d == kF32 || d == kF64; }

bool comparison(OpKind k) {
  switch (k) {
    case OpKind::Eq: case OpKind::Ne: case OpKind::Lt: case OpKind::Le: case OpKind::Gt:
    case OpKind::Ge: case OpKind::LogicalAnd: case OpKind::LogicalOr:
      return true;
    default: return false;
  }
}

}  // namespace

void check_view(const View& v, size_t buffer_bytes, const std::string& what) {
  TG_CHECK(v.sizes.size() <= Shape::kMaxDims && v.strides.size() == v.sizes.size(),
           "{}: a view has {} sizes and {} strides (at most {} dims, one stride each)", what,
           v.sizes.size(), v.strides.size(), Shape::kMaxDims);
  TG_CHECK(v.offset >= 0, "{}: a view has the negative offset {}", what, v.offset);
  int64_t numel = 1, last = v.offset;
  for (size_t d = 0; d < v.sizes.size(); ++d) {
    TG_CHECK(v.sizes[d] >= 0 && v.strides[d] >= 0,
             "{}: a view has a negative size or stride (sizes {}, strides {})", what, v.sizes,
             v.strides);
    TG_CHECK(v.sizes[d] == 0 || numel <= kMaxElements / std::max<int64_t>(v.sizes[d], 1),
             "{}: a view of sizes {} has too many elements", what, v.sizes);
    numel *= v.sizes[d];
    if (v.sizes[d] > 0) {
      TG_CHECK(v.strides[d] <= kMaxElements && (v.sizes[d] - 1) <= kMaxElements / std::max<int64_t>(v.strides[d], 1),
               "{}: a view's strides {} are too large", what, v.strides);
      last += (v.sizes[d] - 1) * v.strides[d];
      TG_CHECK(last <= kMaxElements, "{}: a view's strides {} are too large", what, v.strides);
    }
  }
  if (numel == 0) return;
  auto end = static_cast<uint64_t>(last + 1) * element_size(v.dtype);
  TG_CHECK(end <= buffer_bytes,
           "{}: a view (sizes {}, strides {}, offset {}, {}) reaches byte {} of a {}-byte buffer",
           what, v.sizes, v.strides, v.offset, dtype_name(v.dtype), end, buffer_bytes);
}

void validate(const Program& p, const std::string& what) {
  auto nb = static_cast<int32_t>(p.buffers.size());
  auto operand = [&](const Operand& o, const std::string& where) {
    TG_CHECK(o.buf >= 0 && o.buf < nb, "{}: {} names buffer {}, and there are {}", what, where,
             o.buf, nb);
    check_view(o.view, p.buffers[o.buf].nbytes, fmt::format("{}: {}", what, where));
  };
  for (const Operand& o : p.outputs) operand(o, "an output");
  for (size_t i = 0; i < p.nodes.size(); ++i) {
    const Node& n = p.nodes[i];
    std::string at = fmt::format("node {} ({})", i, n.name());
    auto need = [&](bool ok, std::string_view rule) {
      TG_CHECK(ok, "{}: {}: {}", what, at, rule);
    };
    size_t arity = 0;
    switch (n.call) {
      case Call::Copy:
      case Call::Transfer:
      case Call::Unary:
      case Call::Reduce:
      case Call::Window:
        arity = 1;
        break;
      case Call::Binary: case Call::Matmul: case Call::Index: arity = 2; break;
      case Call::Where: arity = 3; break;
      case Call::Constant: case Call::Fill: case Call::Iota: case Call::Random: arity = 0; break;
      case Call::Fused: need(false, "fused nodes are not in this format version"); break;
    }
    need(n.in.size() == arity, fmt::format("takes {} inputs, has {}", arity, n.in.size()));
    operand(n.out, at + " output");
    for (size_t k = 0; k < n.in.size(); ++k) operand(n.in[k], fmt::format("{} input {}", at, k));
    if (n.out2.buf >= 0) operand(n.out2, at + " second output");
    const View& o = n.out.view;
    auto same_sizes = [&](const View& v) { return v.sizes == o.sizes; };
    switch (n.call) {
      case Call::Copy:
      case Call::Transfer:
        need(same_sizes(n.in[0].view), "input and output sizes differ");
        break;
      case Call::Constant:
        need(o.contiguous(), "output is not contiguous");
        need(n.bytes.size() == static_cast<size_t>(o.numel() * esize(o.dtype)),
             "its literal's bytes do not match its output");
        break;
      case Call::Fill: break;
      case Call::Iota: case Call::Random: need(o.contiguous(), "output is not contiguous"); break;
      case Call::Unary: {
        need(family(n.op) == OpFamily::Unary, "not a unary op");
        need(same_sizes(n.in[0].view) && n.in[0].view.dtype == o.dtype,
             "input and output differ in sizes or dtype");
        break;
      }
      case Call::Binary: {
        const View &a = n.in[0].view, &b = n.in[1].view;
        need(family(n.op) == OpFamily::Binary, "not a binary op");
        need(same_sizes(a) && same_sizes(b), "operand sizes differ");
        need(a.dtype == b.dtype && (o.dtype == a.dtype || (comparison(n.op) && o.dtype == kBool)),
             "operand dtypes do not fit the op");
        break;
      }
      case Call::Where:
        need(n.in[0].view.dtype == kBool, "the condition is not bool");
        need(same_sizes(n.in[0].view) && same_sizes(n.in[1].view) && same_sizes(n.in[2].view),
             "operand sizes differ");
        need(n.in[1].view.dtype == o.dtype && n.in[2].view.dtype == o.dtype, "operand dtypes differ");
        break;
      case Call::Reduce: {
        const View& x = n.in[0].view;
        need(family(n.op) == OpFamily::Reduce, "not a reduction");
        need(n.nreduced >= 0 && static_cast<size_t>(n.nreduced) <= x.sizes.size(),
             "reduces more dims than its input has");
        Shape lead(x.sizes.begin(), x.sizes.end() - n.nreduced);
        need(o.contiguous() && o.sizes == lead, "output is not the input's leading dims");
        bool arg = n.op == OpKind::Argmax || n.op == OpKind::Argmin;
        need(arg ? o.dtype == kI64 : o.dtype == x.dtype, "output dtype does not fit the op");
        break;
      }
      case Call::Matmul: {
        const View &a = n.in[0].view, &b = n.in[1].view;
        need(a.sizes.size() == 3 && b.sizes.size() == 3 && o.sizes.size() == 3 && o.contiguous(),
             "operands are not 3-D with a contiguous output");
        need(a.sizes[0] == o.sizes[0] && b.sizes[0] == o.sizes[0] && a.sizes[1] == o.sizes[1] &&
                 b.sizes[2] == o.sizes[2] && a.sizes[2] == b.sizes[1],
             "operand shapes do not multiply");
        need(is_float(o.dtype) && a.dtype == o.dtype && b.dtype == o.dtype, "dtypes differ");
        break;
      }
      case Call::Index: {
        const View &x = n.in[0].view, &idx = n.in[1].view;
        need(family(n.op) == OpFamily::Index && n.op != OpKind::Cat, "not an index op");
        need(idx.dtype == kI64 && x.dtype == o.dtype, "dtypes do not fit the op");
        size_t nd = x.sizes.size();
        need(o.sizes.size() == nd && n.dim >= 0 && (nd == 0 ? n.dim == 0 : static_cast<size_t>(n.dim) < nd),
             "dims do not fit the op");
        bool fits = true;
        for (size_t d = 0; d < nd; ++d) {
          if (static_cast<int>(d) == n.dim) continue;
          if (n.op == OpKind::IndexSelect) fits = fits && o.sizes[d] == x.sizes[d];
          if (n.op == OpKind::Gather) fits = fits && o.sizes[d] <= x.sizes[d];
          if (n.op == OpKind::ScatterAdd) fits = fits && x.sizes[d] <= o.sizes[d];
        }
        if (n.op == OpKind::IndexSelect)
          fits = fits && idx.sizes.size() <= 1 && (nd == 0 || idx.numel() == o.sizes[n.dim]);
        if (n.op == OpKind::Gather) fits = fits && idx.sizes == o.sizes;
        if (n.op == OpKind::ScatterAdd) fits = fits && idx.sizes == x.sizes;
        need(fits, "shapes do not fit the op");
        break;
      }
      case Call::Window: {
        const View& x = n.in[0].view;
        const Window2d& w = n.window;
        need(family(n.op) == OpFamily::Window && n.op != OpKind::Conv2d, "not a window op");
        need(w.kh >= 1 && w.kw >= 1 && w.sh >= 1 && w.sw >= 1 && w.dh >= 1 && w.dw >= 1 &&
                 w.ph >= 0 && w.pw >= 0 && w.kh <= 4096 && w.kw <= 4096 && w.dh <= 4096 &&
                 w.dw <= 4096 && w.ph <= 4096 && w.pw <= 4096,
             "window parameters out of range");
        need(is_float(o.dtype) && x.dtype == o.dtype, "dtypes do not fit the op");
        const View& image = n.op == OpKind::Col2im ? o : x;
        need(image.sizes.size() == 4 && image.contiguous(), "the image is not contiguous 4-D");
        int64_t N = image.sizes[0], C = image.sizes[1];
        int64_t oh = w.out_h(image.sizes[2]), ow = w.out_w(image.sizes[3]);
        need(oh >= 1 && ow >= 1, "the window does not fit the image");
        if (n.op == OpKind::Im2col || n.op == OpKind::Col2im) {
          const View& cols = n.op == OpKind::Im2col ? o : x;
          need(cols.sizes == Shape{N, C * w.kh * w.kw, oh * ow} && cols.strides.size() == 3 &&
                   cols.strides[2] == 1,
               "the columns do not fit the image");
        } else {
          need(o.sizes == Shape{N, C, oh, ow} && o.contiguous(), "output does not fit the window");
          if (n.out2.buf >= 0)
            need(n.out2.view.dtype == kI64 && n.out2.view.sizes == o.sizes && n.out2.view.contiguous(),
                 "indices do not fit the output");
        }
        break;
      }
      case Call::Fused: break;
    }
    need(n.out2.buf < 0 || (n.call == Call::Window && n.op == OpKind::MaxPool2d),
         "has a second output it does not make");
  }
}

}  // namespace tg::trace_detail
