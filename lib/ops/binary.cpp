// Binary and ternary elementwise ops with broadcasting and type promotion, the operators, and
// their bprops.
#include "autograd/node.h"
#include "ops/ops_common.h"

namespace tg {
namespace {

bool is_compare(OpKind k) {
  return k == OpKind::Eq || k == OpKind::Ne || k == OpKind::Lt || k == OpKind::Le ||
         k == OpKind::Gt || k == OpKind::Ge;
}

// The dtype a binary op computes in, given the promoted dtype of its operands.
DType compute_dtype(OpKind kind, DType promoted) {
  if (kind == OpKind::LogicalAnd || kind == OpKind::LogicalOr) return kBool;
  if (kind == OpKind::Div && !is_floating(promoted)) return kF32;  // true division
  return promoted;
}

Tensor binary_impl(OpKind kind, const Tensor& a, const Tensor& b, DType promoted) {
  const char* name = op_name(kind).data();
  check_same_device(a, b, name);
  DType compute = compute_dtype(kind, promoted);
  TG_CHECK(!(compute == kBool && (kind == OpKind::Sub)),
           "sub: not defined for bool tensors (shapes {} and {}); use logical_xor or ne", a.shape(),
           b.shape());
  DType out_dtype = is_compare(kind) ? kBool : compute;
  RecordScope rec{&a, &b};
  if (a.shape() == b.shape() && a.dtype() == compute && b.dtype() == compute) {
    // The common case, without broadcasting or casts: no temporaries.
    Tensor out = make_tensor(a.shape(), out_dtype, a.device());
    backend_of(a).binary(kind, impl_of(out), impl_of(a), impl_of(b));
    return rec.finish(kind, out);
  }
  Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  Tensor ac = expand_to(cast_if_needed(a, compute), shape);
  Tensor bc = expand_to(cast_if_needed(b, compute), shape);
  Tensor out = make_tensor(shape, out_dtype, a.device());
  backend_of(a).binary(kind, impl_of(out), impl_of(ac), impl_of(bc));
  return rec.finish(kind, out);
}

}  // namespace

Tensor binary_op(OpKind kind, const Tensor& a, const Tensor& b, Loc loc) {
  const char* name = op_name(kind).data();
  OpScope scope(name, loc);
  check_defined(a, name, "first operand");
  check_defined(b, name, "second operand");
  const DType promoted = result_type({operand(a), operand(b)});
  // A 0-d CPU tensor beside a GPU tensor joins it there, as PyTorch takes CPU scalars: a copy
  // that does not wait (Note [Pinned staging]), differentiable like any to().
  if (a.device() != b.device()) {
    if (a.dim() == 0 && a.device().is_cpu())
      return binary_impl(kind, a.to(b.device()), b, promoted);
    if (b.dim() == 0 && b.device().is_cpu())
      return binary_impl(kind, a, b.to(a.device()), promoted);
  }
  return binary_impl(kind, a, b, promoted);
}

Tensor binary_op(OpKind kind, const Tensor& a, Scalar b, Loc loc) {
  const char* name = op_name(kind).data();
  OpScope scope(name, loc);
  check_defined(a, name);
  DType promoted = result_type({operand(a), operand(b)});
  return binary_impl(kind, a, scalar_tensor(b, promoted, a.device()), promoted);
}

Tensor binary_op(OpKind kind, Scalar a, const Tensor& b, Loc loc) {
  const char* name = op_name(kind).data();
  OpScope scope(name, loc);
  check_defined(b, name);
  DType promoted = result_type({operand(a), operand(b)});
  return binary_impl(kind, scalar_tensor(a, promoted, b.device()), b, promoted);
}

#define TG_BINARY_FN(fn, Kind)                                                                   \
  Tensor fn(const Tensor& a, const Tensor& b, Loc loc) { return binary_op(OpKind::Kind, a, b, loc); }
TG_BINARY_FN(add, Add)
TG_BINARY_FN(sub, Sub)
TG_BINARY_FN(mul, Mul)
TG_BINARY_FN(div, Div)
TG_BINARY_FN(pow, Pow)
TG_BINARY_FN(maximum, Maximum)
TG_BINARY_FN(minimum, Minimum)
TG_BINARY_FN(eq, Eq)
TG_BINARY_FN(ne, Ne)
TG_BINARY_FN(lt, Lt)
TG_BINARY_FN(le, Le)
TG_BINARY_FN(gt, Gt)
TG_BINARY_FN(ge, Ge)
TG_BINARY_FN(logical_and, LogicalAnd)
TG_BINARY_FN(logical_or, LogicalOr)
#undef TG_BINARY_FN

Tensor add(const Tensor& a, Scalar b, Loc loc) { return binary_op(OpKind::Add, a, b, loc); }
Tensor sub(const Tensor& a, Scalar b, Loc loc) { return binary_op(OpKind::Sub, a, b, loc); }
Tensor mul(const Tensor& a, Scalar b, Loc loc) { return binary_op(OpKind::Mul, a, b, loc); }
Tensor div(const Tensor& a, Scalar b, Loc loc) { return binary_op(OpKind::Div, a, b, loc); }
Tensor pow(Scalar a, const Tensor& b, Loc loc) { return binary_op(OpKind::Pow, a, b, loc); }

#define TG_OPERATOR(op, Kind)                                                                    \
  Tensor operator op(At a, const Tensor& b) { return binary_op(OpKind::Kind, a.t, b, a.loc); }   \
  Tensor operator op(At a, Scalar b) { return binary_op(OpKind::Kind, a.t, b, a.loc); }          \
  Tensor operator op(Scalar a, At b) { return binary_op(OpKind::Kind, a, b.t, b.loc); }
TG_OPERATOR(+, Add)
TG_OPERATOR(-, Sub)
TG_OPERATOR(*, Mul)
TG_OPERATOR(/, Div)
TG_OPERATOR(==, Eq)
TG_OPERATOR(!=, Ne)
TG_OPERATOR(<, Lt)
TG_OPERATOR(<=, Le)
TG_OPERATOR(>, Gt)
TG_OPERATOR(>=, Ge)
TG_OPERATOR(&, LogicalAnd)
TG_OPERATOR(|, LogicalOr)
#undef TG_OPERATOR
Tensor operator-(At x) { return neg(x.t, x.loc); }
Tensor operator~(At x) { return logical_not(x.t, x.loc); }

// --- where --------------------------------------------------------------------------------------

namespace {
// A 0-d CPU operand beside GPU ones joins them there, as in binary_op.
Tensor joined(const Tensor& t, const Tensor& x, const Tensor& y) {
  if (t.dim() != 0 || !t.device().is_cpu()) return t;
  for (const Tensor* o : {&x, &y})
    if (!o->device().is_cpu() && o->dim() > 0) return t.to(o->device());
  for (const Tensor* o : {&x, &y})
    if (!o->device().is_cpu()) return t.to(o->device());
  return t;
}
Tensor where_impl(const Tensor& cond_in, const Tensor& a_in, const Tensor& b_in, DType dtype) {
  Tensor cond = joined(cond_in, a_in, b_in), a = joined(a_in, cond_in, b_in),
         b = joined(b_in, cond_in, a_in);
  check_same_device(cond, a, "where");
  check_same_device(a, b, "where");
  Shape shape = broadcast_shapes(broadcast_shapes(cond.shape(), a.shape(), "where"), b.shape(),
                                 "where");
  RecordScope rec{&cond, &a, &b};
  Tensor c = expand_to(cast_if_needed(cond, kBool), shape);
  Tensor ac = expand_to(cast_if_needed(a, dtype), shape);
  Tensor bc = expand_to(cast_if_needed(b, dtype), shape);
  Tensor out = make_tensor(shape, dtype, a.device());
  backend_of(a).where(impl_of(out), impl_of(c), impl_of(ac), impl_of(bc));
  return rec.finish(OpKind::Where, out);
}
void check_cond(const Tensor& cond) {
  check_defined(cond, "where", "condition");
  TG_CHECK(cond.dtype() == kBool, "where: condition must be bool, got {} (shape {})",
           dtype_name(cond.dtype()), cond.shape());
}
}  // namespace

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b, Loc loc) {
  OpScope scope("where", loc);
  check_cond(cond);
  check_defined(a, "where", "first value");
  check_defined(b, "where", "second value");
  return where_impl(cond, a, b, result_type({operand(a), operand(b)}));
}
Tensor where(const Tensor& cond, const Tensor& a, Scalar b, Loc loc) {
  OpScope scope("where", loc);
  check_cond(cond);
  check_defined(a, "where", "first value");
  DType dt = result_type({operand(a), operand(b)});
  return where_impl(cond, a, scalar_tensor(b, dt, a.device()), dt);
}
Tensor where(const Tensor& cond, Scalar a, const Tensor& b, Loc loc) {
  OpScope scope("where", loc);
  check_cond(cond);
  check_defined(b, "where", "second value");
  DType dt = result_type({operand(a), operand(b)});
  return where_impl(cond, scalar_tensor(a, dt, b.device()), b, dt);
}

// --- bprops (inputs a, b; the gradient of each is summed back to its shape) ----------------------

namespace {

void add_bprop(BpropCtx& ctx) {
  ctx.set(0, sum_to(ctx.grad, ctx.input_shape(0)));
  ctx.set(1, sum_to(ctx.grad, ctx.input_shape(1)));
}

void sub_bprop(BpropCtx& ctx) {
  ctx.set(0, sum_to(ctx.grad, ctx.input_shape(0)));
  if (ctx.needs(1)) ctx.set(1, sum_to(-ctx.grad, ctx.input_shape(1)));
}

void mul_bprop(BpropCtx& ctx) {
  if (ctx.needs(0)) ctx.set(0, sum_to(ctx.grad * ctx.input(1), ctx.input_shape(0)));
  if (ctx.needs(1)) ctx.set(1, sum_to(ctx.grad * ctx.input(0), ctx.input_shape(1)));
}

void div_bprop(BpropCtx& ctx) {
  Tensor b = ctx.input(1);
  if (ctx.needs(0)) ctx.set(0, sum_to(ctx.grad / b, ctx.input_shape(0)));
  if (ctx.needs(1)) ctx.set(1, sum_to(-ctx.grad * ctx.input(0) / (b * b), ctx.input_shape(1)));
}

// a^b: b·a^(b-1) (0 where b = 0), and a^b·ln a (0 where a = 0 and b >= 0), as PyTorch.
void pow_bprop(BpropCtx& ctx) {
  Tensor a = ctx.input(0), b = ctx.input(1);
  if (ctx.needs(0)) {
    Tensor g = where(b == 0, 0.0, ctx.grad * b * pow(a, b - 1));
    ctx.set(0, sum_to(g, ctx.input_shape(0)));
  }
  if (ctx.needs(1)) {
    Tensor g = where(logical_and(a == 0, b >= 0), 0.0, ctx.grad * pow(a, b) * log(a));
    ctx.set(1, sum_to(g, ctx.input_shape(1)));
  }
}

// The larger operand gets the gradient; a tie splits it in half (PyTorch's rule).
void max_min_bprop(BpropCtx& ctx, bool is_max) {
  Tensor a = ctx.input(0), b = ctx.input(1);
  DType dt = ctx.grad.dtype();
  Tensor share = (is_max ? a > b : a < b).to(dt) + (a == b).to(dt) * 0.5;
  if (ctx.needs(0)) ctx.set(0, sum_to(ctx.grad * share, ctx.input_shape(0)));
  if (ctx.needs(1)) ctx.set(1, sum_to(ctx.grad * (1 - share), ctx.input_shape(1)));
}
void maximum_bprop(BpropCtx& ctx) { max_min_bprop(ctx, true); }
void minimum_bprop(BpropCtx& ctx) { max_min_bprop(ctx, false); }

// Inputs cond, a, b: each value input gets the gradient where it was chosen.
void where_bprop(BpropCtx& ctx) {
  Tensor cond = ctx.input(0);
  if (ctx.needs(1)) ctx.set(1, sum_to(where(cond, ctx.grad, 0.0), ctx.input_shape(1)));
  if (ctx.needs(2)) ctx.set(2, sum_to(where(cond, 0.0, ctx.grad), ctx.input_shape(2)));
}

const bool registered = [] {
  register_bprop(OpKind::Add, add_bprop, kSaveNone);
  register_bprop(OpKind::Sub, sub_bprop, kSaveNone);
  register_bprop(OpKind::Mul, mul_bprop, kSaveIn0 | kSaveIn1);
  register_bprop(OpKind::Div, div_bprop, kSaveIn0 | kSaveIn1);
  register_bprop(OpKind::Pow, pow_bprop, kSaveIn0 | kSaveIn1);
  register_bprop(OpKind::Maximum, maximum_bprop, kSaveIn0 | kSaveIn1);
  register_bprop(OpKind::Minimum, minimum_bprop, kSaveIn0 | kSaveIn1);
  register_bprop(OpKind::Where, where_bprop, kSaveIn0);
  return true;
}();

}  // namespace

}  // namespace tg
