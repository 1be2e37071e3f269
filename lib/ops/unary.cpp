// Unary elementwise ops. Per op: the dtype rule (integers go to f32 for transcendental ops, as in
// PyTorch), the forward (a backend call), and the bprop slot (filled by the autograd layer).
#include <cmath>

#include "ops/ops_common.h"

namespace tg {
namespace {

enum class IntRule {
  ToFloat,  // integer and bool inputs compute in f32 (exp, log, ...)
  Keep,     // integers stay integers (neg, abs, relu, ...); bool is refused
  Bool,     // computed on bool (logical_not)
};

IntRule int_rule(OpKind kind) {
  switch (kind) {
    case OpKind::Neg: case OpKind::Abs: case OpKind::Sign: case OpKind::Relu:
    case OpKind::Clamp: case OpKind::PowScalar:
      return IntRule::Keep;
    case OpKind::LogicalNot: return IntRule::Bool;
    default: return IntRule::ToFloat;
  }
}

Tensor unary_op(OpKind kind, const Tensor& x, const OpAttrs& attrs, Loc loc) {
  std::string_view name = op_name(kind);
  OpScope scope(name.data(), loc);
  check_defined(x, name.data());
  DType dtype = x.dtype();
  switch (int_rule(kind)) {
    case IntRule::ToFloat: if (!is_floating(dtype)) dtype = kF32; break;
    case IntRule::Keep:
      TG_CHECK(dtype != kBool, "{}: not defined for bool tensors (shape {})", name, x.shape());
      break;
    case IntRule::Bool: dtype = kBool; break;
  }
  Tensor in = cast_if_needed(x, dtype);
  Tensor out = make_tensor(x.shape(), dtype, x.device());
  backend_of(x).unary(kind, impl_of(out), impl_of(in), attrs);
  return out;
}

Tensor simple(OpKind kind, const Tensor& x, Loc loc) { return unary_op(kind, x, {}, loc); }

}  // namespace

Tensor neg(const Tensor& x, Loc loc) { return simple(OpKind::Neg, x, loc); }
Tensor exp(const Tensor& x, Loc loc) { return simple(OpKind::Exp, x, loc); }
Tensor log(const Tensor& x, Loc loc) { return simple(OpKind::Log, x, loc); }
Tensor log1p(const Tensor& x, Loc loc) { return simple(OpKind::Log1p, x, loc); }
Tensor expm1(const Tensor& x, Loc loc) { return simple(OpKind::Expm1, x, loc); }
Tensor sqrt(const Tensor& x, Loc loc) { return simple(OpKind::Sqrt, x, loc); }
Tensor rsqrt(const Tensor& x, Loc loc) { return simple(OpKind::Rsqrt, x, loc); }
Tensor abs(const Tensor& x, Loc loc) { return simple(OpKind::Abs, x, loc); }
Tensor sign(const Tensor& x, Loc loc) { return simple(OpKind::Sign, x, loc); }
Tensor sin(const Tensor& x, Loc loc) { return simple(OpKind::Sin, x, loc); }
Tensor cos(const Tensor& x, Loc loc) { return simple(OpKind::Cos, x, loc); }
Tensor tanh(const Tensor& x, Loc loc) { return simple(OpKind::Tanh, x, loc); }
Tensor sigmoid(const Tensor& x, Loc loc) { return simple(OpKind::Sigmoid, x, loc); }
Tensor relu(const Tensor& x, Loc loc) { return simple(OpKind::Relu, x, loc); }
Tensor gelu(const Tensor& x, Loc loc) { return simple(OpKind::Gelu, x, loc); }
Tensor softplus(const Tensor& x, Loc loc) { return simple(OpKind::Softplus, x, loc); }
Tensor log_sigmoid(const Tensor& x, Loc loc) { return simple(OpKind::LogSigmoid, x, loc); }
Tensor logical_not(const Tensor& x, Loc loc) { return simple(OpKind::LogicalNot, x, loc); }

Tensor pow(const Tensor& x, Scalar exponent, Loc loc) {
  OpScope scope("pow", loc);
  check_defined(x, "pow");
  // An integer tensor to a float power computes in f32, as in PyTorch.
  if (exponent.is_floating() && !is_floating(x.dtype()))
    return unary_op(OpKind::PowScalar, x.to(kF32), {exponent.to_double(), 0}, loc);
  if (x.dtype() == kBool) return unary_op(OpKind::PowScalar, x.to(kI64), {exponent.to_double(), 0}, loc);
  return unary_op(OpKind::PowScalar, x, {exponent.to_double(), 0}, loc);
}

Tensor clamp(const Tensor& x, std::optional<Scalar> min, std::optional<Scalar> max, Loc loc) {
  OpScope scope("clamp", loc);
  check_defined(x, "clamp");
  TG_CHECK(min || max, "clamp: at least one of min and max must be given");
  bool float_bound = (min && min->is_floating()) || (max && max->is_floating());
  Tensor in = float_bound && !is_floating(x.dtype()) ? x.to(kF32) : x;
  OpAttrs attrs{min ? min->to_double() : -INFINITY, max ? max->to_double() : INFINITY};
  return unary_op(OpKind::Clamp, in, attrs, loc);
}

// --- bprop slots: the autograd layer registers one rule per op here (next issue). ---------------

}  // namespace tg
