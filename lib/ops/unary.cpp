// Unary elementwise ops. Per op: the dtype rule (integers go to f32 for transcendental ops, as in
// PyTorch), the forward (a backend call), and the bprop (in public ops, so it records itself).
#include <cmath>

#include "autograd/node.h"
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
  RecordScope rec{&x};
  Tensor in = cast_if_needed(x, dtype);
  Tensor out = make_tensor(x.shape(), dtype, x.device());
  backend_of(x).unary(kind, impl_of(out), impl_of(in), attrs);
  return rec.finish(kind, out, {.scalars = attrs});
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
Tensor erf(const Tensor& x, Loc loc) { return simple(OpKind::Erf, x, loc); }
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

// --- bprops: d(loss)/dx from grad = d(loss)/d(result) -------------------------------------------

namespace {
constexpr double kTwoOverSqrtPi = 1.1283791670955126;    // 2/√π
constexpr double kInvSqrt2Pi = 0.3989422804014327;       // 1/√(2π)

#define TG_BPROP(name, expr) \
  void name(BpropCtx& ctx) { ctx.set(0, expr); }

TG_BPROP(neg_bprop, -ctx.grad)
TG_BPROP(exp_bprop, ctx.grad * ctx.result())
TG_BPROP(log_bprop, ctx.grad / ctx.input(0))
TG_BPROP(log1p_bprop, ctx.grad / (ctx.input(0) + 1))
TG_BPROP(expm1_bprop, ctx.grad * (ctx.result() + 1))
TG_BPROP(sqrt_bprop, ctx.grad / (2 * ctx.result()))
TG_BPROP(rsqrt_bprop, ctx.grad * pow(ctx.result(), 3) * -0.5)
TG_BPROP(abs_bprop, ctx.grad * sign(ctx.input(0)))
TG_BPROP(sign_bprop, zeros_like(ctx.grad))
TG_BPROP(sin_bprop, ctx.grad * cos(ctx.input(0)))
TG_BPROP(cos_bprop, -ctx.grad * sin(ctx.input(0)))
TG_BPROP(tanh_bprop, ctx.grad * (1 - ctx.result() * ctx.result()))
TG_BPROP(sigmoid_bprop, ctx.grad * ctx.result() * (1 - ctx.result()))
TG_BPROP(relu_bprop, where(ctx.result() > 0, ctx.grad, 0.0))
TG_BPROP(erf_bprop, ctx.grad * kTwoOverSqrtPi * exp(-ctx.input(0) * ctx.input(0)))
TG_BPROP(softplus_bprop, ctx.grad * sigmoid(ctx.input(0)))
TG_BPROP(log_sigmoid_bprop, ctx.grad * sigmoid(-ctx.input(0)))
#undef TG_BPROP

// gelu(x) = x·Φ(x): d/dx = Φ(x) + x·φ(x).
void gelu_bprop(BpropCtx& ctx) {
  Tensor x = ctx.input(0);
  Tensor cdf = 0.5 * (1 + erf(x * M_SQRT1_2));
  Tensor pdf = kInvSqrt2Pi * exp(-0.5 * x * x);
  ctx.set(0, ctx.grad * (cdf + x * pdf));
}

// x^p: p·x^(p-1), and 0 for p = 0 (PyTorch's rule, so that 0^0 has gradient 0, not NaN).
void pow_scalar_bprop(BpropCtx& ctx) {
  double p = ctx.attrs().scalars.a;
  if (p == 0) return ctx.set(0, zeros_like(ctx.grad));
  ctx.set(0, ctx.grad * p * pow(ctx.input(0), p - 1));
}

// Passes the gradient where lo <= x <= hi (at a bound too, as PyTorch does).
void clamp_bprop(BpropCtx& ctx) {
  Tensor x = ctx.input(0);
  const OpAttrs& b = ctx.attrs().scalars;
  ctx.set(0, where(logical_and(x >= b.a, x <= b.b), ctx.grad, 0.0));
}

const bool registered = [] {
  register_bprop(OpKind::Neg, neg_bprop, kSaveNone);
  register_bprop(OpKind::Exp, exp_bprop, kSaveResult);
  register_bprop(OpKind::Log, log_bprop, kSaveIn0);
  register_bprop(OpKind::Log1p, log1p_bprop, kSaveIn0);
  register_bprop(OpKind::Expm1, expm1_bprop, kSaveResult);
  register_bprop(OpKind::Sqrt, sqrt_bprop, kSaveResult);
  register_bprop(OpKind::Rsqrt, rsqrt_bprop, kSaveResult);
  register_bprop(OpKind::Abs, abs_bprop, kSaveIn0);
  register_bprop(OpKind::Sign, sign_bprop, kSaveNone);
  register_bprop(OpKind::Sin, sin_bprop, kSaveIn0);
  register_bprop(OpKind::Cos, cos_bprop, kSaveIn0);
  register_bprop(OpKind::Tanh, tanh_bprop, kSaveResult);
  register_bprop(OpKind::Sigmoid, sigmoid_bprop, kSaveResult);
  register_bprop(OpKind::Relu, relu_bprop, kSaveResult);
  register_bprop(OpKind::Gelu, gelu_bprop, kSaveIn0);
  register_bprop(OpKind::Erf, erf_bprop, kSaveIn0);
  register_bprop(OpKind::Softplus, softplus_bprop, kSaveIn0);
  register_bprop(OpKind::LogSigmoid, log_sigmoid_bprop, kSaveIn0);
  register_bprop(OpKind::PowScalar, pow_scalar_bprop, kSaveIn0);
  register_bprop(OpKind::Clamp, clamp_bprop, kSaveIn0);
  return true;
}();
}  // namespace

}  // namespace tg
