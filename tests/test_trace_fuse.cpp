// Elementwise fusion: which nodes become one group, and that a fused graph computes exactly what
// eager code does (same kernels, same bits), through broadcasts, strided views, dtype changes,
// in-place updates, and writes that forbid moving a computation.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <cmath>
#include <random>

#include "backend/backend.h"
#include "fused_steps.h"
#include "ops/op_registry.h"

using namespace tg;
using tgtest::random_steps;
using tgtest::same;

namespace {

}  // namespace

TEST_CASE("fuse: a chain of elementwise ops becomes one node and gives eager's bits") {
  auto fn = [](const Tensor& x) { return tanh(x * 2 + 1) * x - 3; };
  auto f = trace(fn);
  Tensor x = randn({5, 7});
  CHECK(same(f(x), fn(x)));
  CHECK(f.graph().num_nodes() == 1);
  CHECK(f.graph().count("fused") == 1);
  CHECK(f.graph().count("mul") == 2);  // steps count as the ops they are
  CHECK(f.graph().count("tanh") == 1);
  CHECK(f.graph().to_string().find("s2=tanh(s1); s3=mul(s2, i0)") != std::string::npos);
  CHECK(f.pass_summary().find("fuse: 1 groups of 5 elementwise nodes, 4 values never stored") !=
        std::string::npos);
  auto g = trace(fn, {.disable = {"fuse"}});
  CHECK(same(g(x), fn(x)));
  CHECK(g.graph().num_nodes() == 5);
  CHECK(g.graph().count("fused") == 0);
}

TEST_CASE("fuse: broadcasts, strided inputs and outputs, rows short and long, many threads") {
  int threads = get_num_threads();
  for (int nt : {1, 2}) {
    set_num_threads(nt);
    for (Shape shape : {Shape{3, 5}, Shape{300, 10}, Shape{7, 1000}, Shape{40, 3000}}) {
      CAPTURE(shape);
      Tensor x = randn(shape), row = randn({shape[1]}), col = randn({shape[0], 1});
      Tensor xt = randn({shape[1], shape[0]}).t();  // strided: gathered block by block
      auto fn = [&](const Tensor& a, const Tensor& b) {
        return sigmoid(a * row - col) * b + relu(a - 0.5) / (abs(b) + 1);
      };
      auto f = trace(fn);
      CHECK(same(f(x, xt), fn(x, xt)));
      CHECK(f.graph().count("fused") == 1);
      // Everything broadcast: a group whose inputs are all one element per row.
      auto h = trace([&](const Tensor& c) { return exp(c * 2).expand(shape) + 1; });
      CHECK(same(h(col), exp(col * 2).expand(shape) + 1));
    }
  }
  set_num_threads(threads);
}

TEST_CASE("fuse: comparisons, where and dtype conversions inside a group") {
  Tensor x = randn({6, 50});
  auto fn = [](const Tensor& v) {
    Tensor leaky = where(v > 0, v, v * 0.1);
    Tensor as64 = (leaky * 3).to(kF64);
    Tensor counted = (v < -0.5).to(kI64) * 7 + 2;
    return std::vector<Tensor>{exp(as64) - 1, counted, logical_not(v >= 0.25)};
  };
  auto f = trace([&](const Tensor& v) { return fn(v); });
  auto got = f(x);
  auto want = fn(x);
  REQUIRE(got.size() == 3);
  for (size_t i = 0; i < 3; ++i) CHECK(same(got[i], want[i]));
  CHECK(got[0].dtype() == kF64);
  CHECK(got[1].dtype() == kI64);
  CHECK(got[2].dtype() == kBool);
  CHECK(f.graph().count("fused") == 3);
}

TEST_CASE("fuse: a cheap value read twice is recomputed, an expensive one stored once") {
  Tensor x = randn({4, 9}), m = randn({4, 1});
  // c = x - m feeds a reduction and another group: cheap, so each group computes it.
  auto layer = [&](const Tensor& v) {
    Tensor c = v - m;
    Tensor var = (c * c).mean({1}, true);
    return c * rsqrt(var + 1e-5);
  };
  auto f = trace(layer);
  CHECK(same(f(x), layer(x)));
  CHECK(f.graph().count("sub") == 2);
  // e = exp(v) read by two products: stored once, never computed twice.
  auto twice = [](const Tensor& v) {
    Tensor e = exp(v);
    return e * 2 + e * 3;
  };
  auto g = trace(twice);
  CHECK(same(g(x), twice(x)));
  CHECK(g.graph().count("exp") == 1);
  CHECK(g.graph().count("fused") == 1);
  CHECK(g.graph().num_nodes() == 2);
}

TEST_CASE("fuse: a write between a value and its reader keeps the value in memory") {
  Tensor w = tensor({1.0f, 2.0f, 3.0f});
  auto fn = [&](const Tensor& x) {
    Tensor t = w * 2;  // reads w before the update below
    w.add_(1);
    return t + x;
  };
  auto f = trace(fn);
  Tensor x = tensor({10.0f, 20.0f, 30.0f});
  CHECK(f(x).to_vector<float>() == std::vector<float>{12, 24, 36});
  CHECK(w.to_vector<float>() == std::vector<float>{2, 3, 4});
  CHECK(f(x).to_vector<float>() == std::vector<float>{14, 26, 38});
  CHECK(f.graph().count("fused") == 0);
  // An update that reads the parameter it writes, through the same view, fuses (SGD's step).
  Tensor p = randn({64, 32}), p_eager = p.clone();
  auto step = trace([&](const Tensor& g) {
    p.sub_(g * 0.1 + p * 0.01);
    return p.sum();
  });
  for (int i = 0; i < 3; ++i) {
    Tensor g = randn({64, 32});
    step(g);
    p_eager.sub_(g * 0.1 + p_eager * 0.01);
    CHECK(same(p, p_eager));
  }
  CHECK(step.graph().count("fused") == 1);
  // Writing through a transposed view of what the group reads: not fused, still right.
  Tensor s = randn({8, 8}), s_eager = s.clone();
  auto transposed = trace([&](const Tensor& g) {
    s.t().mul_(g + 1);
    return s.sum();
  });
  Tensor g = randn({8, 8});
  transposed(g);
  s_eager.t().mul_(g + 1);
  CHECK(same(s, s_eager));
}

TEST_CASE("fuse: the blocked CPU kernel agrees with running the steps one by one") {
  // Random step programs over inputs of several layouts, against Backend::fused's reference.
  std::mt19937 rng(5);
  Backend& cpu = cpu_backend();
  const std::vector<OpKind> unary = {OpKind::Neg, OpKind::Exp,  OpKind::Tanh, OpKind::Sigmoid,
                                     OpKind::Abs, OpKind::Relu, OpKind::Gelu, OpKind::Sign};
  const std::vector<OpKind> binary = {OpKind::Add, OpKind::Sub, OpKind::Mul, OpKind::Maximum,
                                      OpKind::Div};
  for (int trial = 0; trial < 40; ++trial) {
    CAPTURE(trial);
    Shape shape{static_cast<int64_t>(1 + rng() % 40), static_cast<int64_t>(1 + rng() % 700)};
    std::vector<Tensor> keep;
    std::vector<Tensor> views;
    for (int k = 0; k < 4; ++k) {
      Tensor t;
      switch (rng() % 4) {
        case 0:
          t = randn(shape);
          break;
        case 1:
          t = randn({shape[1]}).expand(shape);
          break;
        case 2:
          t = randn({shape[0], 1}).expand(shape);
          break;
        default:
          t = randn({shape[1], shape[0]}).t();
          break;
      }
      views.push_back(t);
    }
    std::vector<FusedStep> steps = random_steps(rng, 4, 8, unary, binary);
    // The output too may be strided (scattered block by block).
    Tensor blocked = trial % 3 == 0 ? empty({shape[1], shape[0]}).t() : empty(shape);
    Tensor reference = empty(shape);
    std::vector<const TensorImpl*> in;
    for (auto& v : views) in.push_back(v.impl());
    cpu.fused(steps, *blocked.impl(), in.data(), in.size());
    cpu.Backend::fused(steps, *reference.impl(), in.data(), in.size());
    // The reference applies a unary op to a strided input with the scalar definitions, where
    // the blocked kernel uses the vectorized ones: the same values to a few ulp, which a later
    // sum may turn into a larger relative difference (a wrong element is off by far more).
    auto got = blocked.to_vector<float>(), want = reference.to_vector<float>();
    int bad = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      float a = got[i], b = want[i];
      bool ok = a == b || (std::isnan(a) && std::isnan(b)) ||
                std::abs(a - b) <= 1e-5f * (1 + std::abs(b));
      bad += !ok;
    }
    CHECK(bad == 0);
  }
}

TEST_CASE("fuse: a sum takes the value it sums into its group, with eager's bits") {
  // LayerNorm's variance: Σ(x - mean)² never stored.
  auto var = [](const Tensor& x) {
    Tensor mean = x.sum({-1}, true) / x.size(-1);
    Tensor d = x - mean;
    return (d * d).sum({-1});
  };
  for (int64_t cols : {1, 7, 100, 255, 256, 300, 1000, 1024, 1025, 3000}) {
    CAPTURE(cols);
    Tensor x = randn({37, cols});
    auto f = trace(var);
    CHECK(same(f(x), var(x)));
    CHECK(f.graph().count("fused") == 1);
    CHECK(f.graph().count("sum") == 2);
    CHECK(f.graph().to_string().find("s1=mul(s0, s0)} then sum reduced=1") != std::string::npos);
    CHECK(f.pass_summary().find("(1 of them sums)") != std::string::npos);
    auto unfused = trace(var, {.disable = {"fuse"}});
    CHECK(same(unfused(x), f(x)));
  }
}

TEST_CASE("fuse: fused sums over several dims, all dims, strided and broadcast operands") {
  Tensor w = randn({6});
  auto fn = [&](const Tensor& x, const Tensor& xt, const Tensor& col) {
    Tensor a = exp(x * w - 1).sum({1, 2});      // two trailing dims
    Tensor b = (x * xt.transpose(1, 2).transpose(1, 2)).sum({2});
    Tensor c = (x + col).sum();                  // everything
    Tensor d = (xt.transpose(0, 2) * 2 + x.transpose(0, 2)).sum({2});  // strided reads
    return std::vector<Tensor>{a, b, c, d};
  };
  int before = get_num_threads();
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    Tensor x = randn({8, 5, 6}), xt = randn({8, 5, 6}), col = randn({8, 5, 1});
    auto f = trace(fn);
    auto got = f(x, xt, col);
    auto want = fn(x, xt, col);
    for (size_t i = 0; i < want.size(); ++i) {
      CAPTURE(i);
      CHECK(same(got[i], want[i]));
    }
    CHECK(f.graph().count("fused") == 4);
    CHECK(f.graph().count("sum") == 4);
  }
  set_num_threads(before);
}

TEST_CASE("fuse: a stored or twice-read value is not summed in a group; f64 and bool sums") {
  // exp(x) is also returned: it is stored, and the sum reads it.
  auto kept = [](const Tensor& x) {
    Tensor e = exp(x);
    return std::vector<Tensor>{e, e.sum({-1})};
  };
  Tensor x = randn({4, 9});
  auto f = trace(kept);
  CHECK(same(f(x)[1], kept(x)[1]));
  CHECK(f.graph().count("fused") == 0);
  // A cheap value read by the sum and by another group is computed in both.
  auto twice = [](const Tensor& x) {
    Tensor d = x - 1;
    return std::vector<Tensor>{(d * d).sum({-1}), d * 3};
  };
  auto g = trace(twice);
  CHECK(same(g(x)[0], twice(x)[0]));
  CHECK(same(g(x)[1], twice(x)[1]));
  CHECK(g.graph().count("fused") == 2);
  // f64 and a sum of comparisons go through the reference path: the same values.
  auto other = [](const Tensor& x) {
    return std::vector<Tensor>{(x * x).sum({-1}), (x > 0.5).sum({-1})};
  };
  Tensor x64 = randn({5, 300}, {.dtype = kF64});
  auto h = trace(other);
  auto got = h(x64), want = other(x64);
  CHECK(same(got[0], want[0]));
  CHECK(same(got[1], want[1]));
  CHECK(got[1].dtype() == want[1].dtype());
}

TEST_CASE("fuse: the CPU fused sum agrees with the reference on random programs") {
  std::mt19937 rng(9);
  Backend& cpu = cpu_backend();
  const std::vector<OpKind> unary = {OpKind::Neg, OpKind::Exp, OpKind::Tanh, OpKind::Relu,
                                     OpKind::Gelu};
  const std::vector<OpKind> binary = {OpKind::Add, OpKind::Sub, OpKind::Mul, OpKind::Maximum};
  for (int trial = 0; trial < 40; ++trial) {
    CAPTURE(trial);
    Shape shape{static_cast<int64_t>(1 + rng() % 30), static_cast<int64_t>(1 + rng() % 1100)};
    std::vector<Tensor> views;
    for (int k = 0; k < 3; ++k) {
      switch (rng() % 4) {
        case 0: views.push_back(randn(shape)); break;
        case 1: views.push_back(randn({shape[1]}).expand(shape)); break;
        case 2: views.push_back(randn({shape[0], 1}).expand(shape)); break;
        default: views.push_back(randn({shape[1], shape[0]}).t()); break;
      }
    }
    std::vector<FusedStep> steps = random_steps(rng, 3, 5, unary, binary);
    // Rows summed into a strided output, or into a contiguous one.
    Tensor got = trial % 3 == 0 ? empty({2, shape[0]}).select(0, 1) : empty({shape[0]});
    Tensor want = empty({shape[0]});
    std::vector<const TensorImpl*> in;
    for (auto& v : views) in.push_back(v.impl());
    cpu.fused_sum(steps, *got.impl(), in.data(), in.size(), 1);
    cpu.Backend::fused_sum(steps, *want.impl(), in.data(), in.size(), 1);
    // As above: the reference takes scalar definitions for strided inputs (a few ulp).
    auto g = got.to_vector<float>(), w = want.to_vector<float>();
    int bad = 0;
    for (size_t i = 0; i < g.size(); ++i) {
      float a = g[i], b = w[i];
      bool ok = a == b || (std::isnan(a) && std::isnan(b)) ||
                std::abs(a - b) <= 1e-4f * (1 + std::abs(b));
      bad += !ok;
    }
    CHECK(bad == 0);
  }
}

TEST_CASE("fuse: a saved graph is fused again when loaded, with the same results") {
  Tensor w = randn({10, 4}), b = randn({4});
  auto fn = [&](const Tensor& x) { return tanh(x.matmul(w) + b) * 0.5 + 0.5; };
  auto f = trace(fn);
  Tensor x = randn({3, 10});
  Tensor y = f(x);
  std::string path = "fuse_saved.tgtrace";
  f.save(path);
  auto g = load_traced(path);
  CHECK(same(g(x)[0], y));
  CHECK(g.graph().count("fused") == 1);
  CHECK(g.pass_summary().find("fuse:") != std::string::npos);
  std::remove(path.c_str());
}
