// The CPU kernels themselves: every vectorized table this CPU can run against the scalar reference
// definitions, on lengths around the vector widths and on special values.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/scalar_math.h"
#include "backend/cpu/vec_kernels.h"
#include "ops/op_registry.h"

using namespace tg;

namespace {
std::vector<float> probe_values(double lo, double hi, size_t n) {
  std::vector<float> v;
  for (size_t i = 0; i < n; ++i) v.push_back(static_cast<float>(lo + (hi - lo) * i / (n - 1)));
  for (float s : {0.0f, -0.0f, 1e-30f, -1e-30f, 1e-40f, 88.7f, -88.7f, 89.0f, -104.0f, -120.0f, 0.6249f,
                  0.6251f, -0.625f, 20.0f, -20.0f, INFINITY, -INFINITY, NAN})
    v.push_back(s);
  return v;
}

bool close(float got, double want, double rtol, double atol) {
  if (std::isnan(want)) return std::isnan(got);
  if (std::isinf(want)) return got == want;
  return std::abs(got - want) <= atol + rtol * std::abs(want);
}
}  // namespace

TEST_CASE("vectorized unary kernels match the scalar definitions on every ISA") {
  auto tables = cpu::available_vec_kernels();
  CHECK(tables.size() >= 1);
  MESSAGE("vector ISAs available here: " << tables.size() << ", best " << tables.back()->isa);
  for (OpKind kind : {OpKind::Exp, OpKind::Log, OpKind::Tanh, OpKind::Sigmoid, OpKind::Neg,
                      OpKind::Abs, OpKind::Sqrt, OpKind::Rsqrt, OpKind::Relu, OpKind::Erf,
                      OpKind::Gelu, OpKind::Log1p, OpKind::Softplus, OpKind::LogSigmoid,
                      OpKind::Sign}) {
    for (const auto* table : tables) {
      auto fn = table->unary_f32(kind);
      REQUIRE(static_cast<bool>(fn));
      for (size_t n : {1, 7, 15, 16, 17, 33, 1000}) {
        auto x = probe_values(kind == OpKind::Log ? 1e-6 : -30, 30, n);
        std::vector<float> out(x.size());
        fn(out.data(), x.data(), static_cast<int64_t>(x.size()), {});
        for (size_t i = 0; i < x.size(); ++i) {
          // The f64 definition rounded to f32 (so exp(89) is inf, as in f32).
          double want = static_cast<float>(cpu::scalar_unary<double>(kind, x[i], {}));
          CAPTURE(table->isa);
          CAPTURE(op_name(kind));
          CAPTURE(x[i]);
          CHECK_MESSAGE(close(out[i], want, 4e-7, 1e-37), "got " << out[i] << ", want " << want);
        }
      }
    }
  }
}

TEST_CASE("vectorized erf and gelu keep their relative precision deep in the tails") {
  // gelu(-12) is about -1e-32: computed as 1 + erf(x/√2) it would be 0 or garbage.
  std::vector<float> x;
  for (double v = -13.5; v <= 6; v += 0.0137) x.push_back(static_cast<float>(v));
  for (const auto* table : cpu::available_vec_kernels()) {
    for (OpKind kind : {OpKind::Erf, OpKind::Gelu}) {
      std::vector<float> out(x.size());
      table->unary_f32(kind)(out.data(), x.data(), static_cast<int64_t>(x.size()), {});
      for (size_t i = 0; i < x.size(); ++i) {
        double want = static_cast<float>(cpu::scalar_unary<double>(kind, x[i], {}));
        if (std::abs(want) < 1e-37) continue;  // f32 denormals: only absolute precision left
        CAPTURE(table->isa);
        CAPTURE(op_name(kind));
        CAPTURE(x[i]);
        CHECK_MESSAGE(close(out[i], want, 4e-7, 0), "got " << out[i] << ", want " << want);
      }
    }
  }
}

TEST_CASE("vectorized clamp and pow follow their attributes") {
  auto x = probe_values(-4, 4, 101);
  for (const auto* table : cpu::available_vec_kernels()) {
    for (OpAttrs attrs : {OpAttrs{-1, 2.5}, OpAttrs{0, INFINITY}, OpAttrs{-INFINITY, -0.5}}) {
      std::vector<float> out(x.size());
      table->unary_f32(OpKind::Clamp)(out.data(), x.data(), static_cast<int64_t>(x.size()), attrs);
      for (size_t i = 0; i < x.size(); ++i) {
        float want = cpu::scalar_unary<float>(OpKind::Clamp, x[i], attrs);
        CAPTURE(x[i]);
        CHECK((out[i] == want || (std::isnan(out[i]) && std::isnan(want))));
      }
    }
    for (double e : {2.0, 3.0, 1.0, 0.5, -1.0, 0.0, 2.5}) {
      std::vector<float> out(x.size());
      table->unary_f32(OpKind::PowScalar)(out.data(), x.data(), static_cast<int64_t>(x.size()),
                                          {e, 0});
      for (size_t i = 0; i < x.size(); ++i) {
        double want = static_cast<float>(cpu::scalar_unary<double>(OpKind::PowScalar, x[i], {e, 0}));
        CAPTURE(e);
        CAPTURE(x[i]);
        CHECK_MESSAGE(close(out[i], want, 4e-7, 1e-37), "got " << out[i] << ", want " << want);
      }
    }
  }
}

TEST_CASE("vectorized binary kernels match the scalar definitions, with broadcast operands") {
  for (const auto* table : cpu::available_vec_kernels()) {
    for (OpKind kind : {OpKind::Add, OpKind::Sub, OpKind::Mul, OpKind::Div, OpKind::Maximum, OpKind::Minimum}) {
      auto fn = table->binary_f32(kind);
      REQUIRE(static_cast<bool>(fn));
      auto a = probe_values(-5, 5, 40), b = probe_values(-3, 7, 40);
      std::reverse(b.begin(), b.end());
      std::vector<float> out(a.size());
      for (int mode = 0; mode < 3; ++mode) {
        bool av = mode != 1, bv = mode != 2;
        fn(out.data(), a.data(), av, b.data(), bv, static_cast<int64_t>(a.size()));
        for (size_t i = 0; i < a.size(); ++i) {
          float want = cpu::scalar_binary<float>(kind, av ? a[i] : a[0], bv ? b[i] : b[0]);
          CAPTURE(table->isa);
          CAPTURE(op_name(kind));
          CHECK(close(out[i], want, 0, 0));
        }
      }
    }
  }
}

TEST_CASE("in-place kernels may alias their input") {
  auto x = linspace(-3, 3, 1001);
  auto want = tanh(x).to_vector<float>();
  auto view = x.slice(0, 0, 1001);
  // A unary op writes a fresh tensor; check a vectorized in-place binary too.
  x.mul_(x);
  auto sq = x.to_vector<float>();
  auto ref = linspace(-3, 3, 1001).to_vector<float>();
  for (size_t i = 0; i < ref.size(); ++i) CHECK(sq[i] == ref[i] * ref[i]);
  CHECK(view.is_alias_of(x));
  CHECK(want.size() == 1001);
}

TEST_CASE("large elementwise and reduction runs split across threads give the same result") {
  int before = get_num_threads();
  auto x = randn({1 << 18});
  set_num_threads(1);
  auto a = (exp(x) * 2 + x).sum({0}).item<float>();
  auto m1 = x.reshape({512, 512}).amax({1}).to_vector<float>();
  set_num_threads(2);
  auto b = (exp(x) * 2 + x).sum({0}).item<float>();
  auto m2 = x.reshape({512, 512}).amax({1}).to_vector<float>();
  set_num_threads(before);
  CHECK(a == b);
  CHECK(m1 == m2);
}

TEST_CASE("op registry: names are unique and kinds index the table") {
  for (const auto& info : all_ops()) {
    CHECK(op_info(info.kind).name == info.name);
  }
}

TEST_CASE("reductions and elementwise ops over empty tensors of several dims") {
  // A dim of size 0 inside (4, 0), (0, 3, 2), (2, 0, 5): nothing to visit, and no position to
  // compute (a division by that size once stopped the program).
  for (const Shape& shape : {Shape{4, 0}, Shape{0, 3, 2}, Shape{2, 0, 5}}) {
    CAPTURE(shape.size());
    Tensor x = zeros(shape, {.dtype = kF64});
    CHECK(x.sum().item<double>() == 0);
    CHECK(x.prod().item<double>() == 1);
    CHECK(std::isnan(x.mean().item<double>()));
    CHECK((x.transpose(0, -1) * 2 + 1).numel() == 0);
    Shape kept(shape.size() - 1);
    for (size_t d = 0; d + 1 < shape.size(); ++d) kept[d] = shape[d];
    Tensor partial = x.sum({-1});
    CHECK(partial.shape() == kept);
    CHECK(partial.abs().sum().item<double>() == 0);
    Tensor g = x.clone().requires_grad_();
    (g * g).sum().backward();
    CHECK(g.grad().shape() == shape);
  }
}
