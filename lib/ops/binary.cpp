// Binary and ternary elementwise ops with broadcasting and type promotion, and the operators.
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
  if (a.shape() == b.shape() && a.dtype() == compute && b.dtype() == compute) {
    // The common case, without broadcasting or casts: no temporaries.
    Tensor out = make_tensor(a.shape(), out_dtype, a.device());
    backend_of(a).binary(kind, impl_of(out), impl_of(a), impl_of(b));
    return out;
  }
  Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  Tensor ac = expand_to(cast_if_needed(a, compute), shape);
  Tensor bc = expand_to(cast_if_needed(b, compute), shape);
  Tensor out = make_tensor(shape, out_dtype, a.device());
  backend_of(a).binary(kind, impl_of(out), impl_of(ac), impl_of(bc));
  return out;
}

}  // namespace

Tensor binary_op(OpKind kind, const Tensor& a, const Tensor& b, Loc loc) {
  const char* name = op_name(kind).data();
  OpScope scope(name, loc);
  check_defined(a, name, "first operand");
  check_defined(b, name, "second operand");
  return binary_impl(kind, a, b, result_type({operand(a), operand(b)}));
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
Tensor where_impl(const Tensor& cond, const Tensor& a, const Tensor& b, DType dtype) {
  check_same_device(cond, a, "where");
  check_same_device(a, b, "where");
  Shape shape = broadcast_shapes(broadcast_shapes(cond.shape(), a.shape(), "where"), b.shape(),
                                 "where");
  Tensor c = expand_to(cast_if_needed(cond, kBool), shape);
  Tensor ac = expand_to(cast_if_needed(a, dtype), shape);
  Tensor bc = expand_to(cast_if_needed(b, dtype), shape);
  Tensor out = make_tensor(shape, dtype, a.device());
  backend_of(a).where(impl_of(out), impl_of(c), impl_of(ac), impl_of(bc));
  return out;
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

}  // namespace tg
