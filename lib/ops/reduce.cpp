// Reductions (sum, prod, amax, amin, argmax, argmin) and the ops composed from them: mean, var,
// std, norm, logsumexp, softmax, log_softmax.
#include <cmath>
#include <numeric>

#include "autograd/node.h"
#include "ops/ops_common.h"

namespace tg {
namespace {

// The permutation that puts the dims in `mask` last (in order), and how many they are.
Shape reduced_last(const std::vector<bool>& mask, int& nreduced) {
  Shape perm;
  nreduced = 0;
  for (size_t d = 0; d < mask.size(); ++d)
    if (!mask[d]) perm.push_back(static_cast<int64_t>(d));
  for (size_t d = 0; d < mask.size(); ++d)
    if (mask[d]) perm.push_back(static_cast<int64_t>(d)), ++nreduced;
  return perm;
}

// Reduces x over the dims in `mask`: permutes them last and calls the backend.
Tensor reduce_op(OpKind kind, const Tensor& x, const std::vector<bool>& mask, bool keepdim,
                 DType out_dtype) {
  const char* name = op_name(kind).data();
  int64_t nd = x.dim();
  int nreduced = 0;
  Shape perm = reduced_last(mask, nreduced);
  bool is_minmax = kind != OpKind::Sum && kind != OpKind::Prod;
  if (is_minmax) {
    for (int64_t d = 0; d < nd; ++d)
      TG_CHECK(!mask[d] || x.shape()[d] != 0,
               "{}: cannot reduce over dim {} of size 0 (shape {}): the result is undefined", name,
               d, x.shape());
    TG_CHECK(x.numel() != 0 || nd != 0, "{}: empty input", name);
  }
  Shape out_shape = reduced_shape(x.shape(), mask, false);
  Tensor out = make_tensor(out_shape, out_dtype, x.device());
  Tensor xp = x.permute(perm);
  backend_of(x).reduce(kind, impl_of(out), impl_of(xp), nreduced);
  if (keepdim) return out.reshape(reduced_shape(x.shape(), mask, true));
  return out;
}

// What a reduction's bprop needs: the reduced dims (wrapped) and keepdim.
NodeAttrs reduce_attrs(const std::vector<bool>& mask, bool keepdim) {
  NodeAttrs a;
  for (size_t d = 0; d < mask.size(); ++d)
    if (mask[d]) a.dims.push_back(static_cast<int64_t>(d));
  a.keepdim = keepdim;
  return a;
}

// Sum and prod of integers and bools accumulate in i64, as in PyTorch.
Tensor sum_like(OpKind kind, const Tensor& x, const Shape& dims, bool keepdim, Loc loc) {
  const char* name = op_name(kind).data();
  OpScope scope(name, loc);
  check_defined(x, name);
  RecordScope rec{&x};
  DType dt = is_floating(x.dtype()) ? x.dtype() : kI64;
  auto mask = reduced_mask(dims, x.dim(), name);
  Tensor out = reduce_op(kind, cast_if_needed(x, dt), mask, keepdim, dt);
  return rec.finish(kind, out, reduce_attrs(mask, keepdim));
}

Tensor minmax(OpKind kind, const Tensor& x, const Shape& dims, bool keepdim, Loc loc) {
  const char* name = op_name(kind).data();
  OpScope scope(name, loc);
  check_defined(x, name);
  RecordScope rec{&x};
  auto mask = reduced_mask(dims, x.dim(), name);
  Tensor out = reduce_op(kind, x, mask, keepdim, x.dtype());
  return rec.finish(kind, out, reduce_attrs(mask, keepdim));
}

Tensor arg(OpKind kind, const Tensor& x, std::optional<int64_t> dim, bool keepdim, Loc loc) {
  const char* name = op_name(kind).data();
  OpScope scope(name, loc);
  check_defined(x, name);
  if (!dim) {  // index into the flattened tensor
    Tensor out = reduce_op(kind, x, std::vector<bool>(x.dim(), true), false, kI64);
    return keepdim ? out.reshape(Shape(x.dim(), 1)) : out;
  }
  return reduce_op(kind, x, reduced_mask({*dim}, x.dim(), name), keepdim, kI64);
}

int64_t reduced_count(const Tensor& x, const Shape& dims, const char* op) {
  auto mask = reduced_mask(dims, x.dim(), op);
  int64_t n = 1;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (mask[d]) n *= x.shape()[d];
  return n;
}

Tensor to_float(const Tensor& x) { return is_floating(x.dtype()) ? x : x.to(kF32); }

}  // namespace

Tensor sum(const Tensor& x, const Shape& dims, bool keepdim, Loc loc) {
  return sum_like(OpKind::Sum, x, dims, keepdim, loc);
}
Tensor prod(const Tensor& x, const Shape& dims, bool keepdim, Loc loc) {
  return sum_like(OpKind::Prod, x, dims, keepdim, loc);
}
Tensor amax(const Tensor& x, const Shape& dims, bool keepdim, Loc loc) {
  return minmax(OpKind::Amax, x, dims, keepdim, loc);
}
Tensor amin(const Tensor& x, const Shape& dims, bool keepdim, Loc loc) {
  return minmax(OpKind::Amin, x, dims, keepdim, loc);
}
Tensor argmax(const Tensor& x, std::optional<int64_t> dim, bool keepdim, Loc loc) {
  return arg(OpKind::Argmax, x, dim, keepdim, loc);
}
Tensor argmin(const Tensor& x, std::optional<int64_t> dim, bool keepdim, Loc loc) {
  return arg(OpKind::Argmin, x, dim, keepdim, loc);
}

// --- composites ---------------------------------------------------------------------------------

Tensor mean(const Tensor& x, const Shape& dims, bool keepdim, Loc loc) {
  OpScope scope("mean", loc);
  check_defined(x, "mean");
  TG_CHECK(is_floating(x.dtype()), "mean: needs a floating dtype, got {} (use .to(kF32) first)",
           dtype_name(x.dtype()));
  int64_t n = reduced_count(x, dims, "mean");
  return sum(x, dims, keepdim) / static_cast<double>(n);  // 0/0 = NaN for empty, as PyTorch
}

Tensor var(const Tensor& x, const Shape& dims, int64_t correction, bool keepdim, Loc loc) {
  OpScope scope("var", loc);
  check_defined(x, "var");
  Tensor xf = to_float(x);
  int64_t n = reduced_count(xf, dims, "var");
  Tensor centered = xf - xf.mean(dims, true);
  return (centered * centered).sum(dims, keepdim) /
         static_cast<double>(std::max<int64_t>(n - correction, 0));
}

Tensor std(const Tensor& x, const Shape& dims, int64_t correction, bool keepdim, Loc loc) {
  OpScope scope("std", loc);
  return sqrt(var(x, dims, correction, keepdim));
}

Tensor norm(const Tensor& x, double p, const Shape& dims, bool keepdim, Loc loc) {
  OpScope scope("norm", loc);
  check_defined(x, "norm");
  Tensor a = abs(to_float(x));
  if (std::isinf(p)) return p > 0 ? a.amax(dims, keepdim) : a.amin(dims, keepdim);
  if (p == 0) return (a != 0).to(a.dtype()).sum(dims, keepdim);
  if (p == 1) return a.sum(dims, keepdim);
  if (p == 2) return sqrt((a * a).sum(dims, keepdim));
  return pow(pow(a, p).sum(dims, keepdim), 1.0 / p);
}

namespace {
// softmax, log_softmax (one dim) or logsumexp of floating x over the dims in `mask` as one
// backend call, where the device has one that takes this shape (Note [Softmax rows]); an
// undefined tensor where not, and the caller runs the composite. Softmax and log_softmax give
// x's shape; logsumexp the kept dims.
Tensor softmax_rows(OpKind kind, const Tensor& xf, const std::vector<bool>& mask) {
  Backend& be = backend_of(xf);
  if (!be.softmax_rows() || xf.numel() == 0) return {};
  // Contiguous: softmax's out shares x's element offsets, and the kernel then reads the rows in
  // the layout the composite sums exp(x - shift) in, which gives the composite's bits.
  Tensor x = xf.contiguous();
  int nreduced = 0;
  Shape perm = reduced_last(mask, nreduced);
  const bool rows = kind == OpKind::Logsumexp;
  Tensor out =
      make_tensor(rows ? reduced_shape(x.shape(), mask, false) : x.shape(), x.dtype(), x.device());
  Tensor xp = x.permute(perm);
  Tensor op = rows ? out : out.permute(perm);
  if (!be.softmax_rows(kind, impl_of(op), impl_of(xp), nreduced)) return {};
  return out;
}

Tensor softmax_rows_along(OpKind kind, const Tensor& xf, int64_t dim) {
  if (xf.dim() == 0) return {};
  std::vector<bool> mask(static_cast<size_t>(xf.dim()), false);
  mask[static_cast<size_t>(dim)] = true;
  return softmax_rows(kind, xf, mask);
}

// The max-shifted composite; recorded as one Logsumexp node by logsumexp().
Tensor logsumexp_forward(const Tensor& x, const Shape& dims, bool keepdim) {
  Tensor xf = to_float(x);
  auto mask = reduced_mask(dims, x.dim(), "logsumexp");
  if (Tensor out = softmax_rows(OpKind::Logsumexp, xf, mask); out.defined())
    return keepdim ? out.reshape(reduced_shape(x.shape(), mask, true)) : out;
  if (xf.numel() == 0) return log(exp(xf).sum(dims, keepdim));  // -inf, as ln 0
  Tensor m = xf.amax(dims, true);
  // Where the max is ±inf (all -inf, or an inf), shift by 0 so that inf - inf gives no NaN.
  Tensor shift = where(m.abs() == INFINITY, 0.0, m);
  Tensor out = log(exp(xf - shift).sum(dims, true)) + shift;
  return keepdim ? out : out.reshape(reduced_shape(x.shape(), mask, false));
}
}  // namespace

Tensor logsumexp(const Tensor& x, const Shape& dims, bool keepdim, Loc loc) {
  OpScope scope("logsumexp", loc);
  check_defined(x, "logsumexp");
  RecordScope rec{&x};  // one node with a stable bprop, not the composite's
  auto mask = reduced_mask(dims, x.dim(), "logsumexp");
  return rec.finish(OpKind::Logsumexp, logsumexp_forward(x, dims, keepdim),
                    reduce_attrs(mask, keepdim));
}

Tensor logsumexp(const Tensor& x, int64_t dim, bool keepdim, Loc loc) {
  return logsumexp(x, Shape{dim}, keepdim, loc);
}

Tensor softmax(const Tensor& x, int64_t dim, Loc loc) {
  OpScope scope("softmax", loc);
  check_defined(x, "softmax");
  RecordScope rec{&x};
  Tensor xf = to_float(x);
  int64_t d = wrap_dim(dim, x.dim(), "softmax");
  if (xf.numel() == 0) return rec.finish(OpKind::Softmax, xf.clone(), {.dim = d});
  if (Tensor out = softmax_rows_along(OpKind::Softmax, xf, d); out.defined())
    return rec.finish(OpKind::Softmax, out, {.dim = d});
  Tensor m = xf.amax({dim}, true);
  Tensor e = exp(xf - where(m.abs() == INFINITY, 0.0, m));
  return rec.finish(OpKind::Softmax, e / e.sum({dim}, true), {.dim = d});
}

Tensor log_softmax(const Tensor& x, int64_t dim, Loc loc) {
  OpScope scope("log_softmax", loc);
  check_defined(x, "log_softmax");
  RecordScope rec{&x};
  Tensor xf = to_float(x);
  int64_t d = wrap_dim(dim, x.dim(), "log_softmax");
  if (xf.numel() == 0) return rec.finish(OpKind::LogSoftmax, xf.clone(), {.dim = d});
  if (Tensor out = softmax_rows_along(OpKind::LogSoftmax, xf, d); out.defined())
    return rec.finish(OpKind::LogSoftmax, out, {.dim = d});
  return rec.finish(OpKind::LogSoftmax, xf - logsumexp(xf, {dim}, true), {.dim = d});
}

// --- bprops -------------------------------------------------------------------------------------

namespace {

// A reduction's output (or its gradient) with the reduced dims back as size 1.
Tensor keep_dims(const Tensor& t, const BpropCtx& ctx) {
  Shape keep = ctx.input_shape(0);
  for (int64_t d : ctx.attrs().dims) keep[d] = 1;
  return t.reshape(keep);
}

void sum_bprop(BpropCtx& ctx) {
  ctx.set(0, keep_dims(ctx.grad, ctx).expand(ctx.input_shape(0)));
}

// Π x: the product of the others, written so that zeros are exact: with no zero in the group it is
// Π/x; the single zero of a group gets the product of the rest; everything else gets 0.
void prod_bprop(BpropCtx& ctx) {
  Tensor x = ctx.input(0);
  Shape dims = ctx.attrs().dims;
  Tensor zero = x == 0;
  Tensor zeros_in_group = zero.to(x.dtype()).sum(dims, true);
  Tensor nonzero = where(zero, 1.0, x);
  Tensor prod_nonzero = nonzero.prod(dims, true);
  Tensor others = where(zero, where(zeros_in_group == 1, prod_nonzero, 0.0),
                        where(zeros_in_group == 0, prod_nonzero / nonzero, 0.0));
  ctx.set(0, keep_dims(ctx.grad, ctx) * others);
}

// The maximum's gradient is shared evenly by the elements that tie for it (PyTorch's amax rule).
void amax_amin_bprop(BpropCtx& ctx) {
  Tensor x = ctx.input(0);
  Tensor hit = (x == keep_dims(ctx.result(), ctx)).to(x.dtype());
  Tensor count = hit.sum(ctx.attrs().dims, true);
  ctx.set(0, keep_dims(ctx.grad, ctx) * hit / count);
}

void logsumexp_bprop(BpropCtx& ctx) {
  Tensor x = ctx.input(0);
  ctx.set(0, keep_dims(ctx.grad, ctx) * exp(x - keep_dims(ctx.result(), ctx)));
}

void softmax_bprop(BpropCtx& ctx) {
  Tensor y = ctx.result();
  int64_t d = ctx.attrs().dim;
  ctx.set(0, y * (ctx.grad - (ctx.grad * y).sum({d}, true)));
}

void log_softmax_bprop(BpropCtx& ctx) {
  int64_t d = ctx.attrs().dim;
  ctx.set(0, ctx.grad - exp(ctx.result()) * ctx.grad.sum({d}, true));
}

const bool registered = [] {
  register_bprop(OpKind::Sum, sum_bprop, kSaveNone);
  register_bprop(OpKind::Prod, prod_bprop, kSaveIn0);
  register_bprop(OpKind::Amax, amax_amin_bprop, kSaveIn0 | kSaveResult);
  register_bprop(OpKind::Amin, amax_amin_bprop, kSaveIn0 | kSaveResult);
  register_bprop(OpKind::Logsumexp, logsumexp_bprop, kSaveIn0 | kSaveResult);
  register_bprop(OpKind::Softmax, softmax_bprop, kSaveResult);
  register_bprop(OpKind::LogSoftmax, log_softmax_bprop, kSaveResult);
  return true;
}();

}  // namespace

}  // namespace tg
