// The autograd engine and API: the slides' checks, accumulation, retain_graph, allow_unused,
// hooks, no_grad, detach, in-place ops, higher-order transforms, debugging aids, and every error.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <cmath>
#include <sstream>
#include <thread>

using namespace tg;

namespace {
std::vector<double> values(const Tensor& t) { return t.to(kF64).to_vector<double>(); }

void check_close(const Tensor& got, const std::vector<double>& want, double tol = 1e-9) {
  auto v = values(got);
  REQUIRE(v.size() == want.size());
  for (size_t i = 0; i < v.size(); ++i) CHECK(v[i] == doctest::Approx(want[i]).epsilon(tol));
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("slides: the gradient of x**2 is 2x") {
  for (double at : {4.0, 94.2}) {
    auto x = tensor(at).requires_grad_();
    auto y = x.pow(2);
    auto g = grad({y}, {x});
    CHECK(g[0].item<double>() == doctest::Approx(2 * at));
  }
  auto x = tensor(4.0).requires_grad_();
  (x * x).backward();
  CHECK(x.grad().item<double>() == 8.0);
}

TEST_CASE("slides: Jacobian of x**2 at [4, 4] and Hessian of sum(x**2)") {
  auto j = jacobian([](const Tensor& x) { return x.pow(2); }, tensor({4.0, 4.0}));
  CHECK(j.shape() == Shape{2, 2});
  check_close(j, {8, 0, 0, 8});
  auto h = hessian([](const Tensor& x) { return (x * x).sum(); }, tensor({4.0, 4.0}));
  check_close(h, {2, 0, 0, 2});
}

TEST_CASE("vjp, jvp and hvp agree with the Jacobian and Hessian") {
  auto f = [](const Tensor& x) {
    return tanh(x.matmul(tensor({{1.0, 2.0}, {-1.0, 0.5}, {0.3, 0.2}})));
  };
  auto x = tensor({0.1, -0.4, 0.7});
  auto j = jacobian(f, x);  // [2, 3]
  auto v_out = tensor({0.5, -1.5});
  auto v_in = tensor({1.0, 2.0, -0.5});
  check_close(vjp(f, x, v_out), values(v_out.matmul(j)), 1e-12);
  check_close(jvp(f, x, v_in), values(j.matmul(v_in)), 1e-12);
  auto scalar = [](const Tensor& x) { return (x.sin() * x).sum() + x.prod(); };
  auto h = hessian(scalar, x);
  check_close(hvp(scalar, x, v_in), values(h.matmul(v_in)), 1e-12);
  // The Hessian is symmetric and matches d/dx of the gradient by differences.
  check_close(h, values(h.t()), 1e-12);
}

TEST_CASE("grad of grad: third derivative of x^4 and of exp") {
  auto x = tensor(1.5).requires_grad_();
  auto y = x.pow(4);
  auto g1 = grad({y}, {x}, {.create_graph = true})[0];
  auto g2 = grad({g1}, {x}, {.create_graph = true})[0];
  auto g3 = grad({g2}, {x})[0];
  CHECK(g1.item<double>() == doctest::Approx(4 * std::pow(1.5, 3)));
  CHECK(g2.item<double>() == doctest::Approx(12 * 1.5 * 1.5));
  CHECK(g3.item<double>() == doctest::Approx(24 * 1.5));
  auto z = tensor(0.3).requires_grad_();
  auto e = exp(z);  // saves its output: the second derivative flows through it
  auto d1 = grad({e}, {z}, {.create_graph = true})[0];
  auto d2 = grad({d1}, {z})[0];
  CHECK(d2.item<double>() == doctest::Approx(std::exp(0.3)));
}

TEST_CASE("engine: shared subexpressions, accumulation into leaves, retain_graph") {
  auto x = tensor({1.0, 2.0}).requires_grad_();
  auto y = x * x;              // used twice below
  auto z = (y + y * 3).sum();  // dz/dx = 4 * 2x
  z.backward({}, /*retain_graph=*/true);
  check_close(x.grad(), {8, 16});
  z.backward();  // accumulates
  check_close(x.grad(), {16, 32});
  x.grad().zero_();
  check_close(x.grad(), {0, 0});
  // The graph was freed by the last backward.
  std::string err = error_of([&] { z.backward(); });
  CHECK(err.find("second time") != std::string::npos);
  CHECK(err.find("retain_graph") != std::string::npos);
}

TEST_CASE("grad() leaves .grad() alone; allow_unused; undefined grad before backward") {
  auto a = tensor({1.0, 2.0}).requires_grad_();
  auto b = tensor({3.0}).requires_grad_();
  CHECK_FALSE(a.grad().defined());
  auto y = (a * 2).sum();
  auto g = grad({y}, {a, b}, {.allow_unused = true});
  check_close(g[0], {2, 2});
  CHECK_FALSE(g[1].defined());
  CHECK_FALSE(a.grad().defined());
  auto y2 = (a * 2).sum();
  std::string err = error_of([&] { grad({y2}, {a, b}); });
  CHECK(err.find("input 1 (shape [1]) was not used") != std::string::npos);
  CHECK(err.find("allow_unused") != std::string::npos);
}

TEST_CASE("non-leaf gradients: grad() of an intermediate, retain_grad, hooks") {
  auto x = tensor({1.0, -2.0}).requires_grad_();
  auto h = x * 3;
  h.retain_grad();
  auto y = (h * h).sum();
  auto g = grad({y}, {h}, {.retain_graph = true});
  check_close(g[0], {6, -12});
  int calls = 0;
  x.register_hook([&](const Tensor& gx) {
    ++calls;
    return gx * 10;
  });                                                // replaces the gradient
  h.register_hook([&](const Tensor&) { ++calls; });  // observes only
  y.backward();
  CHECK(calls == 2);
  check_close(h.grad(), {6, -12});
  check_close(x.grad(), {180, -360});
}

TEST_CASE("no_grad, enable_grad, detach, requires_grad flags") {
  auto x = tensor({1.0}).requires_grad_();
  CHECK(x.is_leaf());
  CHECK(is_grad_enabled());
  {
    NoGradGuard no_grad;
    CHECK_FALSE(is_grad_enabled());
    auto y = x * 2;
    CHECK_FALSE(y.requires_grad());
    CHECK(y.grad_fn() == nullptr);
    {
      EnableGradGuard on;
      CHECK((x * 2).requires_grad());
    }
  }
  auto y = x * 2;
  CHECK(y.requires_grad());
  CHECK_FALSE(y.is_leaf());
  REQUIRE(y.grad_fn() != nullptr);
  CHECK(y.grad_fn()->name() == "MulBackward");
  CHECK(y.grad_fn()->op() == "mul");
  CHECK(std::string(y.grad_fn()->where().file_name()).find("test_autograd.cpp") !=
        std::string::npos);
  auto d = y.detach();
  CHECK_FALSE(d.requires_grad());
  CHECK(d.is_alias_of(y));
  // Non-differentiable outputs never record.
  CHECK_FALSE((x > 0).requires_grad());
  CHECK_FALSE(x.argmax().requires_grad());
  CHECK(error_of([&] {
          tensor({1, 2}).requires_grad_();
        }).find("only floating") != std::string::npos);
  CHECK(error_of([&] { y.requires_grad_(false); }).find("only leaf") != std::string::npos);
}

TEST_CASE("casts, clones and broadcasting send gradients back in the input's dtype and shape") {
  auto x = tensor({1.0f, 2.0f}).requires_grad_();
  auto y = (x.to(kF64) * tensor({{1.0}, {3.0}})).sum();  // f32 -> f64, broadcast to [2, 2]
  y.backward();
  CHECK(x.grad().dtype() == kF32);
  check_close(x.grad(), {4, 4});
  auto z = tensor({2.0}).requires_grad_();
  auto w = (z.clone() * z.expand({3})).sum();
  w.backward();
  check_close(z.grad(), {12});
}

TEST_CASE("in-place ops are recorded: y = x * 2; y.add_(1); y.mul_(y)") {
  auto x = tensor({1.0, 2.0}).requires_grad_();
  auto y = x * 2;
  y.add_(1);
  y.mul_(x);  // (2x + 1)·x: d/dx = 4x + 1
  CHECK(y.grad_fn()->name() == "MulBackward");
  y.sum().backward();
  check_close(x.grad(), {5, 9});
  auto a = tensor({3.0}).requires_grad_();
  auto b = a * 1;
  b.mul_(b);  // b² = a²
  b.backward();
  check_close(a.grad(), {6});
  auto c = zeros({2});
  c.add_(x);  // a tensor that did not require grad starts to
  CHECK(c.requires_grad());
}

TEST_CASE("errors: in-place on saved tensors, leaves, views") {
  auto x = tensor({1.0, 2.0}).requires_grad_();
  auto h = x * 1;
  auto y = h * h;  // saves h
  h.add_(1);
  std::string err = error_of([&] { y.sum().backward(); });
  CHECK(err.find("modified by an in-place op") != std::string::npos);
  CHECK(err.find("MulBackward") != std::string::npos);
  CHECK(err.find("shape [2]") != std::string::npos);
  CHECK(err.find("version 1; expected version 0") != std::string::npos);
  CHECK(err.find("test_autograd.cpp") != std::string::npos);

  err = error_of([&] { x.add_(1); });
  CHECK(err.find("leaf tensor that requires grad") != std::string::npos);
  CHECK(err.find("NoGradGuard") != std::string::npos);
  {
    NoGradGuard no_grad;
    x.sub_(1);  // allowed: an optimizer step
  }
  check_close(x.detach(), {0, 1});
  auto v = (x * 2).reshape({2, 1});
  err = error_of([&] { v.mul_(2); });
  CHECK(err.find("view") != std::string::npos);
}

TEST_CASE("errors: backward and grad misuse") {
  auto x = tensor({1.0, 2.0}).requires_grad_();
  auto y = x * 2;
  std::string err = error_of([&] { y.backward(); });
  CHECK(err.find("one-element outputs") != std::string::npos);
  CHECK(err.find("shape [2]") != std::string::npos);
  err = error_of([&] { tensor({1.0}).backward(); });
  CHECK(err.find("does not require grad") != std::string::npos);
  err = error_of([&] { y.backward(ones({3})); });
  CHECK(err.find("has shape [3]; expected [2]") != std::string::npos);
  err = error_of([&] { grad({y.sum()}, {tensor({1.0})}); });
  CHECK(err.find("input 0 (shape [1]) does not require grad") != std::string::npos);
  err = error_of([&] { jacobian([](const Tensor& t) { return t; }, tensor({1, 2})); });
  CHECK(err.find("must be floating") != std::string::npos);
  err = error_of([&] {
    hvp([](const Tensor& t) { return t * 2; }, tensor({1.0, 2.0}), tensor({1.0, 1.0}));
  });
  CHECK(err.find("one element") != std::string::npos);
}

TEST_CASE("a chain of 1,000,000 ops backpropagates and is freed without recursion") {
  // Ops that save nothing, so the test measures the engine, not a gigabyte of saved tensors.
  auto x = tensor({1.0}).requires_grad_();
  Tensor y = x;
  for (int i = 0; i < 1000000; ++i) y = i % 2 ? -y : y + 0.5;
  y.backward();
  CHECK(x.grad().item<double>() == 1.0);  // an even number of negations
  CHECK(y.item<double>() == 1.0);         // x, then +0.5 and negated 500,000 times
  // Freeing a long tape that was never walked.
  Tensor z = x;
  for (int i = 0; i < 1000000; ++i) z = -z;
  z = Tensor();
  CHECK(x.grad().defined());
}

TEST_CASE("anomaly mode names the op, the phase and the user's line") {
  auto x = tensor({-1.0, 4.0}).requires_grad_();
  {
    AnomalyModeGuard anomaly;
    std::string err = error_of([&] { auto y = sqrt(x); });
    CHECK(err.find("anomaly: the forward of sqrt produced NaN") != std::string::npos);
    CHECK(err.find("test_autograd.cpp") != std::string::npos);
    auto z = tensor({0.0, 4.0}).requires_grad_();
    auto s = sqrt(z).sum();  // finite forward, infinite gradient at 0
    err = error_of([&] { s.backward(); });
    CHECK(err.find("anomaly: the backward of SqrtBackward produced Inf") != std::string::npos);
  }
  auto y = sqrt(x);  // off again: NaN flows silently, as in PyTorch
  CHECK(std::isnan(values(y)[0]));
}

TEST_CASE("print_graph and to_dot show the tape with ops, shapes and source lines") {
  auto w = randn({3, 2}).requires_grad_().set_name("w");
  auto x = randn({4, 3});
  auto loss = relu(x.matmul(w)).sum();
  std::string text = graph_string(loss);
  CHECK(text.find("tape of tensor [] f32 (4 nodes)") != std::string::npos);
  CHECK(text.find("SumBackward") != std::string::npos);
  CHECK(text.find("ReluBackward") != std::string::npos);
  CHECK(text.find("MatmulBackward           [4, 2]") != std::string::npos);
  CHECK(text.find("AccumulateGrad 'w'") != std::string::npos);
  CHECK(text.find("test_autograd.cpp:") != std::string::npos);
  std::ostringstream os;
  print_graph(loss, os);
  CHECK(os.str() == text);
  std::string dot = to_dot(loss);
  CHECK(dot.rfind("digraph tape {", 0) == 0);
  CHECK(dot.find("n3 -> n2;") != std::string::npos);  // w's accumulator feeds the matmul
  CHECK(graph_string(w).find("is a leaf that requires grad") != std::string::npos);
}

TEST_CASE("sum_to undoes broadcasting") {
  auto g = ones({2, 3, 4});
  check_close(sum_to(g, {3, 1}), {8, 8, 8});  // summed over the leading 2 and the 4
  CHECK(sum_to(g, {}).item<double>() == 24);
  CHECK(error_of([&] { sum_to(g, {2, 4}); }).find("sum_to") != std::string::npos);
}

TEST_CASE("grad mode is per thread") {
  NoGradGuard no_grad;
  bool other = false;
  std::thread t([&] { other = is_grad_enabled(); });
  t.join();
  CHECK(other);
  CHECK_FALSE(is_grad_enabled());
}

TEST_CASE("backward with create_graph leaves a differentiable .grad()") {
  auto x = tensor({2.0}).requires_grad_();
  (x * x * x).backward({}, false, /*create_graph=*/true);  // grad = 3x² = 12
  REQUIRE(x.grad().requires_grad());
  CHECK(x.grad().item<double>() == 12);
  auto g2 = grad({x.grad()}, {x})[0];  // d(3x²)/dx = 6x
  CHECK(g2.item<double>() == 12);
  x.set_grad({});  // x.grad()'s tape ends in x itself: a cycle until cleared (as in PyTorch)
}

TEST_CASE("printing shows requires_grad and the grad_fn") {
  auto x = tensor({1.0}).requires_grad_();
  CHECK(x.str().find(", requires_grad=true)") != std::string::npos);
  CHECK((x * 2).str().find(", grad_fn=<MulBackward>)") != std::string::npos);
  CHECK(x.detach().str().find("grad") == std::string::npos);
}
