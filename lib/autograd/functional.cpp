// Transforms of a function from Tensor to Tensor built on grad(): jacobian, hessian, vjp, jvp, hvp.
#include "autograd/node.h"
#include "core/check.h"
#include "ops/ops_common.h"

namespace tg {
namespace {

// A fresh leaf with x's values, so f's tape starts at the point and nothing reaches x's history.
Tensor point(const Tensor& x, const char* op) {
  check_defined(x, op, "point");
  TG_CHECK(is_floating(x.dtype()), "{}: the point must be floating, got {} (shape {})", op,
           dtype_name(x.dtype()), x.shape());
  return x.detach().requires_grad_();
}

Tensor call(const TensorFn& f, const Tensor& x, const char* op) {
  TG_CHECK(static_cast<bool>(f), "{}: the function is empty", op);
  Tensor y = f(x);
  TG_CHECK(y.defined(), "{}: the function returned an undefined tensor", op);
  TG_CHECK(is_floating(y.dtype()), "{}: the function must return a floating tensor, got {}", op,
           dtype_name(y.dtype()));
  return y;
}

// d(y·v)/dx, zeros when y does not depend on x.
Tensor vjp_at(const Tensor& y, const Tensor& x, const Tensor& v, bool create_graph, bool retain) {
  if (!y.requires_grad()) return zeros_like(x);
  Tensor g = grad({y}, {x},
                  {.grad_outputs = {v},
                   .retain_graph = retain,
                   .create_graph = create_graph,
                   .allow_unused = true})[0];
  return g.defined() ? g : zeros_like(x);
}

Tensor jacobian_impl(const TensorFn& f, const Tensor& x, const char* op) {
  EnableGradGuard grad_mode;
  Tensor xi = point(x, op);
  Tensor y = call(f, xi, op);
  Shape shape = y.shape();
  for (int64_t s : x.shape()) shape.push_back(s);
  int64_t m = y.numel();
  if (m == 0 || x.numel() == 0 || !y.requires_grad())
    return zeros(shape, {.dtype = x.dtype(), .device = x.device()});
  std::vector<Tensor> rows;
  Tensor basis = eye(m, std::nullopt, {.dtype = y.dtype(), .device = y.device()});
  for (int64_t i = 0; i < m; ++i) {
    NoGradGuard no_grad;
    Tensor e = basis.select(0, i).reshape(y.shape());
    EnableGradGuard on;
    rows.push_back(vjp_at(y, xi, e, false, i + 1 < m).detach());
  }
  return stack(rows).reshape(shape);
}

Tensor scalar_output(const TensorFn& f, const Tensor& x, const char* op) {
  Tensor y = call(f, x, op);
  TG_CHECK(y.numel() == 1, "{}: the function must return one element, got shape {}", op, y.shape());
  return y;
}

}  // namespace

Tensor jacobian(const TensorFn& f, const Tensor& x, Loc loc) {
  OpScope scope("jacobian", loc);
  return jacobian_impl(f, x, "jacobian");
}

Tensor hessian(const TensorFn& f, const Tensor& x, Loc loc) {
  OpScope scope("hessian", loc);
  auto gradient = [&](const Tensor& z) {
    Tensor y = scalar_output(f, z, "hessian");
    return vjp_at(y, z, ones_like(y), true, true);
  };
  return jacobian_impl(gradient, x, "hessian");
}

Tensor vjp(const TensorFn& f, const Tensor& x, const Tensor& v, Loc loc) {
  OpScope scope("vjp", loc);
  EnableGradGuard grad_mode;
  Tensor xi = point(x, "vjp");
  Tensor y = call(f, xi, "vjp");
  check_defined(v, "vjp", "vector");
  TG_CHECK(v.shape() == y.shape(), "vjp: the vector has shape {}; f(x) has shape {}", v.shape(),
           y.shape());
  return vjp_at(y, xi, v, false, false).detach();
}

Tensor jvp(const TensorFn& f, const Tensor& x, const Tensor& v, Loc loc) {
  OpScope scope("jvp", loc);
  EnableGradGuard grad_mode;
  Tensor xi = point(x, "jvp");
  check_defined(v, "jvp", "vector");
  TG_CHECK(v.shape() == x.shape(), "jvp: the vector has shape {}; x has shape {}", v.shape(),
           x.shape());
  Tensor y = call(f, xi, "jvp");
  if (!y.requires_grad()) return zeros_like(y);
  // g(u) = Jᵀu is linear in u, so d(g·v)/du = J v: forward mode from two reverse passes.
  Tensor u = zeros_like(y).requires_grad_();
  Tensor g = vjp_at(y, xi, u, true, true);
  if (!g.requires_grad()) return zeros_like(y);
  return vjp_at(g, u, v, false, false).detach();
}

Tensor hvp(const TensorFn& f, const Tensor& x, const Tensor& v, Loc loc) {
  OpScope scope("hvp", loc);
  EnableGradGuard grad_mode;
  Tensor xi = point(x, "hvp");
  check_defined(v, "hvp", "vector");
  TG_CHECK(v.shape() == x.shape(), "hvp: the vector has shape {}; x has shape {}", v.shape(),
           x.shape());
  Tensor y = scalar_output(f, xi, "hvp");
  Tensor g = vjp_at(y, xi, ones_like(y), true, true);
  if (!g.requires_grad()) return zeros_like(x);
  return vjp_at(g, xi, v, false, false).detach();
}

}  // namespace tg
