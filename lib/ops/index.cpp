// Indexing ops: index_select, gather, scatter_add (backend kernels), and masked_fill, one_hot,
// tril, triu (composed from comparisons and where).
#include "autograd/node.h"
#include "ops/ops_common.h"

namespace tg {
namespace {

void check_index(const Tensor& index, const char* op) {
  check_defined(index, op, "index");
  TG_CHECK(index.dtype() == kI64, "{}: index must be i64, got {} (shape {})", op,
           dtype_name(index.dtype()), index.shape());
}

}  // namespace

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index, Loc loc) {
  OpScope scope("index_select", loc);
  check_defined(x, "index_select");
  check_index(index, "index_select");
  check_same_device(x, index, "index_select");
  TG_CHECK(index.dim() <= 1, "index_select: index must be 0-d or 1-D, got shape {}", index.shape());
  int64_t w = wrap_dim(dim, x.dim(), "index_select");
  RecordScope rec{&x, &index};
  Shape shape = x.shape();
  if (x.dim() > 0) shape[w] = index.numel();
  Tensor out = make_tensor(shape, x.dtype(), x.device());
  Tensor idx = index.reshape({index.numel()});
  TG_CHECK(x.dim() > 0 || index.numel() == 1, "index_select: a 0-d input takes one index");
  if (x.dim() == 0) {
    backend_of(x).index(OpKind::Gather, impl_of(out), impl_of(x), 0, impl_of(index.reshape({})));
    return rec.finish(OpKind::IndexSelect, out, {.dim = w});
  }
  backend_of(x).index(OpKind::IndexSelect, impl_of(out), impl_of(x), static_cast<int>(w),
                      impl_of(idx));
  return rec.finish(OpKind::IndexSelect, out, {.dim = w});
}

Tensor gather(const Tensor& x, int64_t dim, const Tensor& index, Loc loc) {
  OpScope scope("gather", loc);
  check_defined(x, "gather");
  check_index(index, "gather");
  check_same_device(x, index, "gather");
  TG_CHECK(index.dim() == x.dim() || (x.dim() == 0 && index.dim() <= 1),
           "gather: index has {} dims (shape {}), the input has {} (shape {}); they must match",
           index.dim(), index.shape(), x.dim(), x.shape());
  int64_t w = wrap_dim(dim, x.dim(), "gather");
  RecordScope rec{&x, &index};
  for (int64_t d = 0; d < x.dim(); ++d)
    TG_CHECK(d == w || index.shape()[d] <= x.shape()[d],
             "gather: index shape {} exceeds input shape {} at dim {}", index.shape(), x.shape(), d);
  Tensor out = make_tensor(index.shape(), x.dtype(), x.device());
  if (out.numel() > 0)
    backend_of(x).index(OpKind::Gather, impl_of(out), impl_of(x), static_cast<int>(w),
                        impl_of(index));
  return rec.finish(OpKind::Gather, out, {.dim = w});
}

Tensor scatter_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src, Loc loc) {
  OpScope scope("scatter_add", loc);
  check_defined(x, "scatter_add");
  check_defined(src, "scatter_add", "src");
  check_index(index, "scatter_add");
  check_same_device(x, index, "scatter_add");
  check_same_device(x, src, "scatter_add");
  TG_CHECK(index.dim() == x.dim() && src.dim() == x.dim(),
           "scatter_add: input {}, index {} and src {} must have the same number of dims",
           x.shape(), index.shape(), src.shape());
  int64_t w = wrap_dim(dim, x.dim(), "scatter_add");
  RecordScope rec{&x, &index, &src};
  for (int64_t d = 0; d < x.dim(); ++d) {
    TG_CHECK(index.shape()[d] <= src.shape()[d],
             "scatter_add: index shape {} exceeds src shape {} at dim {}", index.shape(),
             src.shape(), d);
    TG_CHECK(d == w || index.shape()[d] <= x.shape()[d],
             "scatter_add: index shape {} exceeds input shape {} at dim {}", index.shape(),
             x.shape(), d);
  }
  Tensor out = x.clone();
  if (index.numel() > 0) {
    // Only the part of src that index covers is scattered.
    Tensor s = cast_if_needed(src, x.dtype());
    for (int64_t d = 0; d < x.dim(); ++d) s = s.slice(d, 0, index.shape()[d]);
    backend_of(x).index(OpKind::ScatterAdd, impl_of(out), impl_of(s), static_cast<int>(w),
                        impl_of(index));
  }
  return rec.finish(OpKind::ScatterAdd, out, {.dim = w});
}

Tensor masked_fill(const Tensor& x, const Tensor& mask, Scalar value, Loc loc) {
  OpScope scope("masked_fill", loc);
  check_defined(x, "masked_fill");
  check_defined(mask, "masked_fill", "mask");
  TG_CHECK(mask.dtype() == kBool, "masked_fill: mask must be bool, got {}", dtype_name(mask.dtype()));
  Shape shape = broadcast_shapes(x.shape(), mask.shape(), "masked_fill");
  TG_CHECK(shape == x.shape(), "masked_fill: mask of shape {} does not broadcast to the input's {}",
           mask.shape(), x.shape());
  return where(mask, scalar_tensor(value, x.dtype(), x.device()), x);
}

Tensor one_hot(const Tensor& labels, int64_t num_classes, Loc loc) {
  OpScope scope("one_hot", loc);
  check_defined(labels, "one_hot");
  TG_CHECK(labels.dtype() == kI64, "one_hot: labels must be i64, got {}", dtype_name(labels.dtype()));
  if (labels.numel() > 0) {
    int64_t lo = labels.amin().item<int64_t>(), hi = labels.amax().item<int64_t>();
    TG_CHECK(lo >= 0, "one_hot: labels must be non-negative, found {}", lo);
    if (num_classes < 0) num_classes = hi + 1;
    TG_CHECK(hi < num_classes, "one_hot: label {} is out of range for {} classes", hi, num_classes);
  }
  TG_CHECK(num_classes >= 0, "one_hot: cannot infer num_classes from an empty tensor");
  Tensor classes = arange(num_classes, {.device = labels.device()});
  return (labels.unsqueeze(-1) == classes).to(kI64);
}

namespace {
// Mask of the matrix positions (i, j) with j - i compared against `diagonal`.
Tensor band(const Tensor& x, int64_t diagonal, bool lower, const char* op) {
  check_defined(x, op);
  TG_CHECK(x.dim() >= 2, "{}: needs at least 2 dims, got shape {}", op, x.shape());
  int64_t rows = x.shape()[x.dim() - 2], cols = x.shape()[x.dim() - 1];
  Tensor i = arange(rows, {.device = x.device()}).unsqueeze(1);
  Tensor j = arange(cols, {.device = x.device()}).unsqueeze(0);
  Tensor keep = lower ? (j - i <= diagonal) : (j - i >= diagonal);
  return where(keep, x, scalar_tensor(0, x.dtype(), x.device()));
}
}  // namespace

Tensor tril(const Tensor& x, int64_t diagonal, Loc loc) {
  OpScope scope("tril", loc);
  return band(x, diagonal, true, "tril");
}
Tensor triu(const Tensor& x, int64_t diagonal, Loc loc) {
  OpScope scope("triu", loc);
  return band(x, diagonal, false, "triu");
}

// --- bprops (the index is input 1; it gets no gradient) ------------------------------------------

namespace {

// Gathering's adjoint: g added into zeros of the input's shape at the gathered positions.
void gather_bprop(BpropCtx& ctx) {
  const Shape& in = ctx.input_shape(0);
  Tensor g = ctx.grad;
  if (in.empty()) return ctx.set(0, g.sum());
  TensorOptions opts{.dtype = g.dtype(), .device = g.device()};
  ctx.set(0, zeros(in, opts).scatter_add(ctx.attrs().dim, ctx.input(1), g));
}

void index_select_bprop(BpropCtx& ctx) {
  const Shape& in = ctx.input_shape(0);
  Tensor g = ctx.grad;
  if (in.empty()) return ctx.set(0, g.reshape({}));
  int64_t dim = ctx.attrs().dim;
  Tensor index = ctx.input(1).reshape({-1});
  index = where(index < 0, index + in[dim], index);
  Shape along(g.dim(), 1);
  along[dim] = index.numel();
  Tensor full_index = index.reshape(along).expand(g.shape()).contiguous();
  TensorOptions opts{.dtype = g.dtype(), .device = g.device()};
  ctx.set(0, zeros(in, opts).scatter_add(dim, full_index, g));
}

// Inputs x, index, src: x's gradient passes through; src's is gathered back (zero for the part of
// src that index does not cover).
void scatter_add_bprop(BpropCtx& ctx) {
  ctx.set(0, ctx.grad);
  if (!ctx.needs(2)) return;
  Tensor g = gather(ctx.grad, ctx.attrs().dim, ctx.input(1));
  const Shape& want = ctx.input_shape(2);
  TensorOptions opts{.dtype = g.dtype(), .device = g.device()};
  for (int64_t d = 0; d < g.dim(); ++d) {
    if (g.shape()[d] == want[d]) continue;
    Shape pad = g.shape();
    pad[d] = want[d] - g.shape()[d];
    g = cat({g, zeros(pad, opts)}, d);
  }
  ctx.set(2, g);
}

const bool registered = [] {
  register_bprop(OpKind::IndexSelect, index_select_bprop, kSaveIn1);
  register_bprop(OpKind::Gather, gather_bprop, kSaveIn1);
  register_bprop(OpKind::ScatterAdd, scatter_add_bprop, kSaveIn1);
  return true;
}();

}  // namespace

}  // namespace tg
