// The rewriting passes of tracing: stability rewrites, algebraic simplification, constant folding.
// Each is checked on a small graph for the exact nodes left, and for values against eager runs.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <cmath>

#include "trace/passes.h"  // the test hook that breaks a rewrite on purpose

using namespace tg;

namespace {

double max_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  return (a.detach().to(kF64) - b.detach().to(kF64)).abs().amax().item<double>();
}

bool all_finite(const Tensor& t) {
  for (double v : t.to_vector<double>())
    if (!std::isfinite(v)) return false;
  return true;
}

}  // namespace

TEST_CASE("stability: naive binary cross-entropy with logits of ±100 is finite when traced") {
  auto bce = [](const Tensor& z, const Tensor& y) {
    Tensor p = sigmoid(z);
    return -(y * log(p) + (1 - y) * log(1 - p));
  };
  Tensor z = tensor({100.0f, -100.0f, 3.0f, -2.0f});
  Tensor y = tensor({0.0f, 1.0f, 1.0f, 0.0f});
  Tensor eager = bce(z, y);
  CHECK_FALSE(all_finite(eager));  // log(1 - 1) = -inf, times 0
  auto f = trace(bce);
  Tensor traced = f(z, y);
  REQUIRE(all_finite(traced));
  Tensor expect = nn::functional::binary_cross_entropy_with_logits(z, y, {}, nn::functional::Reduction::None);
  CHECK(max_diff(traced, expect) < 1e-5);
  CHECK(traced.to_vector<float>()[0] == doctest::Approx(100).epsilon(1e-6));
  CHECK(f.graph().count("log_sigmoid") == 2);
  CHECK(f.graph().count("log") == 0);
  CHECK(f.graph().count("sigmoid") == 0);
  CHECK(f.pass_summary().find("2 log_sigmoid") != std::string::npos);
  // Switched off: the naive graph, with the naive result.
  auto g = trace(bce, {.disable = {"stability"}});
  CHECK_FALSE(all_finite(g(z, y)));
  CHECK(g.graph().count("log_sigmoid") == 0);
}

TEST_CASE("stability: the slides' 1/(1+exp(-t)) becomes sigmoid, so its logs become log_sigmoid") {
  auto cost = [](const Tensor& t, const Tensor& y) {
    auto p = 1 / (1 + exp(-t));
    return (-y * log(p) - (1 - y) * log(1 - p)).sum();
  };
  Tensor t = tensor({60.0f, -60.0f, 0.5f}), y = tensor({0.0f, 1.0f, 1.0f});
  CHECK_FALSE(all_finite(cost(t, y)));
  auto f = trace(cost);
  Tensor c = f(t, y);
  REQUIRE(all_finite(c));
  CHECK(c.item<float>() == doctest::Approx(120 + std::log1p(std::exp(-0.5))).epsilon(1e-5));
  CHECK(f.graph().count("div") == 0);
  CHECK(f.graph().count("log_sigmoid") == 2);
}

TEST_CASE("stability: log(softmax), naive softmax and naive logsumexp") {
  Tensor a = tensor({1000.0f, 999.0f, 0.0f, -5.0f, 2.0f, 1.0f}).reshape({2, 3});
  SUBCASE("log(softmax(x)) is log_softmax") {
    auto f = trace([](const Tensor& x) { return log(softmax(x, 1)); });
    Tensor out = f(a * 0.1 - 95);  // softmax underflows to 0 in a row: log gives -inf eagerly
    CHECK(max_diff(out, log_softmax(a * 0.1 - 95, 1)) < 1e-4);
    CHECK(f.graph().count("div") == 0);
    CHECK(f.graph().count("log") == 1);  // of the row sums, which are >= 1
    Tensor far = tensor({0.0f, -200.0f}).reshape({1, 2});
    CHECK_FALSE(all_finite(log(softmax(far, 1))));
    CHECK(max_diff(f(far), log_softmax(far, 1)) < 1e-4);
  }
  SUBCASE("naive log(exp(a) / sum(exp(a))) is log_softmax") {
    auto naive = [](const Tensor& x) { return log(exp(x) / exp(x).sum({1}, true)); };
    CHECK_FALSE(all_finite(naive(a)));
    auto f = trace(naive);
    CHECK(max_diff(f(a), log_softmax(a, 1)) < 1e-4);
    CHECK(f.graph().count("amax") == 1);
  }
  SUBCASE("naive exp(a) / sum(exp(a)) is softmax") {
    auto naive = [](const Tensor& x) { return exp(x) / exp(x).sum({1}, true); };
    CHECK_FALSE(all_finite(naive(a)));
    auto f = trace(naive);
    CHECK(max_diff(f(a), softmax(a, 1)) < 1e-6);
    CHECK(f.graph().count("amax") == 1);
    // Over dim 0, through a transposed view: the same.
    auto g = trace([](const Tensor& x) { return exp(x) / exp(x).sum({0}, true); });
    CHECK(max_diff(g(a), softmax(a, 0)) < 1e-6);
    CHECK(g.graph().count("amax") == 1);
    // Not a softmax (each row divided by the sum of another row): left alone.
    auto h = trace([](const Tensor& x) { return exp(x) / exp(x).sum({1}); });
    Tensor sq = randn({3, 3});
    CHECK(max_diff(h(sq), exp(sq) / exp(sq).sum({1})) == 0);
    CHECK(h.graph().count("amax") == 0);
    // tg::softmax is already shifted: no second shift.
    auto s = trace([](const Tensor& x) { return softmax(x, 1); });
    s(a);
    CHECK(s.graph().count("amax") == 1);
  }
  SUBCASE("naive log(sum(exp(x))) is logsumexp, -inf rows included") {
    auto naive = [](const Tensor& x) { return log(exp(x).sum({1})); };
    auto f = trace(naive);
    CHECK(max_diff(f(a), logsumexp(a, 1)) < 1e-4);
    Tensor empty_row = full({2, 3}, -INFINITY);
    CHECK(f(empty_row).to_vector<float>() == std::vector<float>{-INFINITY, -INFINITY});
    CHECK(f.graph().count("amax") == 1);
  }
}

TEST_CASE("stability: log(1 + x) is log1p") {
  auto f = trace([](const Tensor& x) { return log(1 + x); });
  Tensor x = tensor({1e-10f, 0.5f});
  CHECK(log(1 + x).to_vector<float>()[0] == 0);
  Tensor out = f(x);
  CHECK(out.to_vector<float>()[0] == doctest::Approx(1e-10).epsilon(1e-6));
  CHECK(max_diff(out, log1p(x)) == 0);
  CHECK(f.graph().count("log1p") == 1);
  CHECK(f.graph().count("log") == 0);
}

TEST_CASE("algebra: identities go, inexact rules are refused") {
  Tensor x = randn({3, 4});
  SUBCASE("x * 1, x + 0, x / 1, pow(x, 1), neg(neg(x))") {
    auto f = trace([](const Tensor& v) { return neg(neg(pow(((v * 1) + 0) / 1, 1.0))) * 3; });
    CHECK(max_diff(f(x), x * 3) == 0);
    CHECK(f.graph().num_nodes() == 1);  // the mul by 3 (its 3 is a constant)
    CHECK(f.graph().count("mul") == 1);
    CHECK(f.pass_summary().find("algebra: 5 identities removed") != std::string::npos);
    auto off = trace([](const Tensor& v) { return neg(neg(pow(((v * 1) + 0) / 1, 1.0))) * 3; },
                     {.disable = {"algebra"}});
    off(x);
    CHECK(off.graph().count("neg") == 2);
  }
  SUBCASE("transposing and copying twice is no copy") {
    auto f = trace([](const Tensor& v) { return v.t().contiguous().t().contiguous() * 2; });
    CHECK(max_diff(f(x), x * 2) == 0);
    CHECK(f.graph().count("copy") == 0);
    // A slice of a transposed copy reads the source directly: one copy instead of two.
    auto g = trace([](const Tensor& v) {
      return v.t().contiguous().slice(0, 1, 3).t().contiguous() * 2;
    });
    CHECK(max_diff(g(x), x.slice(1, 1, 3) * 2) == 0);
    CHECK(g.graph().count("copy") == 1);
  }
  SUBCASE("an identity of a tensor written later is kept") {
    Tensor s = ones({4});
    auto f = trace([&](const Tensor& v) {
      Tensor y = s * 1;
      s.add_(1);
      return y * v;
    });
    CHECK(f(full({4}, 2.0)).to_vector<float>() == std::vector<float>{2, 2, 2, 2});
    CHECK(f(full({4}, 2.0)).to_vector<float>() == std::vector<float>{4, 4, 4, 4});
    CHECK(f.graph().count("mul") == 2);
  }
  SUBCASE("exp(log(x)), x / x and x * 0 stay") {
    auto f = trace([](const Tensor& v) { return exp(log(v)) + v / v + v * 0; });
    Tensor v = tensor({-1.0f, 0.0f, 2.0f, INFINITY});
    std::vector<float> got = f(v).to_vector<float>(), want = (exp(log(v)) + v / v + v * 0).to_vector<float>();
    for (size_t i = 0; i < got.size(); ++i) {
      CHECK(std::isnan(got[i]) == std::isnan(want[i]));
      if (!std::isnan(want[i])) CHECK(got[i] == want[i]);
    }
    CHECK(std::isnan(got[0]));  // exp(log(-1)) is NaN, not -1
    CHECK(std::isnan(got[1]));  // 0 / 0
    CHECK(f.graph().count("exp") == 1);
    CHECK(f.graph().count("log") == 1);
    CHECK(f.graph().count("div") == 1);
  }
}

TEST_CASE("fold: values made of constants are computed once; state and randomness never") {
  auto f = trace([](const Tensor& v) { return v + (ones({3}) * 2 + arange(3)).sum(); });
  Tensor x = randn({3});
  CHECK(max_diff(f(x), x + 9) == 0);
  CHECK(f.graph().num_nodes() == 1);
  CHECK(f.graph().count("fill") == 0);
  CHECK(f.graph().to_string().find("const") != std::string::npos);
  CHECK(f.pass_summary().find("fold:") != std::string::npos);
  auto off = trace([](const Tensor& v) { return v + (ones({3}) * 2 + arange(3)).sum(); },
                   {.disable = {"fold"}});
  CHECK(max_diff(off(x), x + 9) == 0);
  CHECK(off.graph().count("sum") == 1);
  // State is read at every replay, even when only constants are combined with it.
  Tensor w = full({3}, 1.0);
  auto g = trace([&](const Tensor& v) { return v * (w * 2); });
  CHECK(g(ones({3})).to_vector<float>() == std::vector<float>{2, 2, 2});
  w.fill_(5);
  CHECK(g(ones({3})).to_vector<float>() == std::vector<float>{10, 10, 10});
  // Random draws are never constants.
  auto h = trace([](const Tensor& v) { return v + randn({3}) * 2; });
  CHECK(max_diff(h(x), h(x)) > 0);
  CHECK(h.graph().count("randn") == 1);
  // Large constants stay nodes (they would be memory held for the graph's life).
  auto big = trace([](const Tensor& v) { return v + zeros({100000}); });
  big(randn({100000}));
  CHECK(big.graph().count("fill") == 1);
}

TEST_CASE("debug mode: the optimized graph is checked node by node against the recorded one") {
  manual_seed(9);
  Tensor x = randn({4, 5}), w = randn({5, 3});
  auto body = [&](const Tensor& v) {
    Tensor p = sigmoid(v.matmul(w));
    return (-(log(p) + log(1 - p))).sum() + nn::functional::dropout(v, 0.5, true).sum();
  };
  // Correct rewrites (stability ones included) and random draws pass, and give FastRun's values.
  auto f = trace(body, {.mode = Mode::Debug});
  manual_seed(1);
  f(x);
  Tensor debug_value = f(x);
  auto fast = trace(body);
  manual_seed(1);
  fast(x);
  CHECK(debug_value.item<float>() == fast(x).item<float>());
  // A broken rewrite is caught at its node, naming the op and the line it came from.
  trace_detail::g_test_corrupt_pass = [](trace_detail::Program& p) {
    for (auto& n : p.nodes)
      if (n.call == trace_detail::Call::Unary && n.op == OpKind::Tanh) n.op = OpKind::Sin;
  };
  auto g = trace([](const Tensor& v) { return tanh(v * 3) + 1; }, {.mode = Mode::Debug});
  auto g_fast = trace([](const Tensor& v) { return tanh(v * 3) + 1; });
  std::string message;
  try {
    g(x);  // pure: its first call already runs the optimized graph, checked
  } catch (const Error& e) {
    message = e.what();
  }
  Tensor unchecked = g_fast(x);
  trace_detail::g_test_corrupt_pass = nullptr;
  // The three ops run as one fused node, whose output is what the check sees.
  CHECK(message.find("node 0 (fused[mul, sin, add])") != std::string::npos);
  CHECK(message.find("add at") != std::string::npos);
  CHECK(message.find("test_trace_passes.cpp") != std::string::npos);
  CHECK(max_diff(unchecked, tanh(x * 3) + 1) > 0.01);  // FastRun trusts its passes
  // Without fusion the check names the very node.
  trace_detail::g_test_corrupt_pass = [](trace_detail::Program& p) {
    for (auto& n : p.nodes)
      if (n.call == trace_detail::Call::Unary && n.op == OpKind::Tanh) n.op = OpKind::Sin;
  };
  auto h = trace([](const Tensor& v) { return tanh(v * 3) + 1; },
                 {.mode = Mode::Debug, .disable = {"fuse"}});
  message.clear();
  try {
    h(x);
  } catch (const Error& e) {
    message = e.what();
  }
  trace_detail::g_test_corrupt_pass = nullptr;
  CHECK(message.find("node 1 (sin)") != std::string::npos);
  CHECK(message.find("tanh at") != std::string::npos);
}
