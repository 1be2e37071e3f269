// Tracing: traced calls equal eager ones (values, gradients, updated state), signatures, state by
// reference, the errors while recording, randomness, graphs and each pass.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <cstdio>
#include <sstream>

using namespace tg;

namespace {

// Max |a - b| over two tensors of one shape, in f64.
double max_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  if (a.numel() == 0) return 0;
  return (a.detach().to(kF64) - b.detach().to(kF64)).abs().amax().item<double>();
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.to_vector<double>() == b.to_vector<double>();
}

// Logistic regression as in the slides: one whole training step.
struct LogReg {
  Tensor w, b;
  explicit LogReg(int64_t n) {
    manual_seed(7);
    w = (randn({n}) * 0.01).requires_grad_();
    b = zeros({}).requires_grad_();
  }
  Tensor step(const Tensor& x, const Tensor& y) {
    auto p = 1 / (1 + exp(-x.matmul(w) - b));
    auto xent = -y * log(p) - (1 - y) * log(1 - p);
    auto cost = xent.mean() + 0.01 * (w * w).sum();
    auto g = grad({cost}, {w, b});
    NoGradGuard no_grad;
    w -= 0.1 * g[0];
    b -= 0.1 * g[1];
    return cost;
  }
};

// An MLP classifier with an optimizer: forward, backward, step.
struct Classifier {
  nn::Sequential model;
  std::unique_ptr<optim::Optimizer> opt;
  Classifier(bool adam, uint64_t seed) {
    manual_seed(seed);
    model = nn::Sequential{nn::Linear(12, 16), nn::Tanh(), nn::Linear(16, 5)};
    if (adam) {
      opt = std::make_unique<optim::Adam>(model.parameters(), optim::AdamOptions{.lr = 1e-2});
    } else {
      opt = std::make_unique<optim::SGD>(model.parameters(),
                                         optim::SGDOptions{.lr = 0.1, .momentum = 0.9});
    }
  }
  Tensor step(const Tensor& x, const Tensor& y) {
    opt->zero_grad();
    Tensor loss = nn::functional::cross_entropy(model(x), y);
    loss.backward();
    opt->step();
    return loss;
  }
};

}  // namespace

TEST_CASE("trace: a traced training step equals the eager one (FastCompile bitwise, FastRun 1e-5)") {
  manual_seed(1);
  Tensor x = randn({50, 20}), y = randint(0, 2, {50}).to(kF32);
  for (Mode mode : {Mode::FastCompile, Mode::FastRun}) {
    LogReg eager(20), traced(20);
    auto step = trace([&](const Tensor& a, const Tensor& b) { return traced.step(a, b); },
                      {.mode = mode});
    for (int i = 0; i < 6; ++i) {
      Tensor c1 = step(x, y), c2 = eager.step(x, y);
      if (mode == Mode::FastCompile) {
        CHECK(bitwise_equal(c1, c2));
        CHECK(bitwise_equal(traced.w, eager.w));
        CHECK(bitwise_equal(traced.b, eager.b));
      } else {
        CHECK(max_diff(c1, c2) < 1e-5);
        CHECK(max_diff(traced.w, eager.w) < 1e-5);
        CHECK(max_diff(traced.b, eager.b) < 1e-5);
      }
    }
    CHECK(step.num_compiles() == 1);
  }
}

TEST_CASE("trace: nn models with SGD momentum and Adam, gradients and optimizer state") {
  manual_seed(2);
  Tensor x = randn({32, 12}), y = randint(0, 5, {32});
  for (bool adam : {false, true}) {
    for (Mode mode : {Mode::FastCompile, Mode::FastRun}) {
      CAPTURE(adam);
      Classifier eager(adam, 3), traced(adam, 3);
      auto step = trace([&](const Tensor& a, const Tensor& b) { return traced.step(a, b); },
                        {.mode = mode});
      for (int i = 0; i < 5; ++i) {
        Tensor l1 = step(x, y), l2 = eager.step(x, y);
        double tol = mode == Mode::FastCompile ? 0 : 1e-5;
        CHECK(max_diff(l1, l2) <= tol);
        auto p1 = traced.model.named_parameters(), p2 = eager.model.named_parameters();
        for (size_t k = 0; k < p1.size(); ++k) {
          CHECK(max_diff(p1[k].second, p2[k].second) <= tol);
          CHECK(max_diff(p1[k].second.grad(), p2[k].second.grad()) <= tol);
        }
        auto s1 = traced.opt->state_dict(), s2 = eager.opt->state_dict();
        REQUIRE(s1.size() == s2.size());
        for (auto& [name, v] : s1) CHECK(max_diff(v, s2.at(name)) <= tol);
      }
    }
  }
}

TEST_CASE("trace: signatures, recompiling and sliced inputs") {
  Tensor w = randn({4});
  auto f = trace([&](const Tensor& x) { return x * w + 1; });
  Tensor a = randn({3, 4});
  CHECK(max_diff(f(a), a * w + 1) == 0);
  CHECK(f.num_compiles() == 1);
  Tensor a2 = randn({3, 4});
  CHECK(max_diff(f(a2), a2 * w + 1) == 0);
  CHECK(f.num_compiles() == 1);
  Tensor b = randn({5, 4});
  CHECK(max_diff(f(b), b * w + 1) == 0);
  CHECK(f.num_compiles() == 2);
  CHECK(max_diff(f(a.to(kF64)), a.to(kF64) * w + 1) < 1e-6);
  CHECK(f.num_compiles() == 3);
  Tensor t = randn({4, 3}).t();  // other strides: another signature
  CHECK(max_diff(f(t), t * w + 1) == 0);
  CHECK(f.num_compiles() == 4);
  // Slices of one big tensor at different offsets share a signature and read the right rows.
  Tensor big = randn({30, 4});
  for (int64_t i = 0; i < 30; i += 3) {
    Tensor s = big.slice(0, i, i + 3);
    CHECK(max_diff(f(s), s * w + 1) == 0);
  }
  CHECK(f.num_compiles() == 4);
}

TEST_CASE("trace: outputs are fresh tensors at each call") {
  auto f = trace([](const Tensor& x) { return std::make_tuple(x + 1, x * 2); });
  Tensor x1 = ones({3}), x2 = full({3}, 5.0);
  auto [a1, b1] = f(x1);
  auto [a2, b2] = f(x1);
  auto [a3, b3] = f(x2);
  CHECK(a2.to_vector<float>() == std::vector<float>{2, 2, 2});
  CHECK(a3.to_vector<float>() == std::vector<float>{6, 6, 6});
  CHECK(b3.to_vector<float>() == std::vector<float>{10, 10, 10});
  CHECK(!a2.is_alias_of(a3));
  auto g = trace([](const Tensor& x) { return std::vector<Tensor>{x.sum(), x.amax()}; });
  auto v = g(x2);
  REQUIRE(v.size() == 2);
  CHECK(v[0].item<float>() == 15);
  auto zero_args = trace([] { return arange(4); });
  CHECK(zero_args().to_vector<int64_t>() == std::vector<int64_t>{0, 1, 2, 3});
  CHECK(zero_args().to_vector<int64_t>() == std::vector<int64_t>{0, 1, 2, 3});
}

TEST_CASE("trace: state is read by reference; writes to it are replayed in order") {
  Tensor w = ones({3});
  Tensor k = zeros({}, {.dtype = kI64});
  auto f = trace([&](const Tensor& x) {
    k += 1;
    return x * w + k;
  });
  Tensor x = ones({3});
  CHECK(f(x).to_vector<float>() == std::vector<float>{2, 2, 2});
  CHECK(f(x).to_vector<float>() == std::vector<float>{3, 3, 3});
  w.fill_(10);  // changed from outside: the next replay sees it
  CHECK(f(x).to_vector<float>() == std::vector<float>{13, 13, 13});
  w.copy_(tensor({1.0f, 2.0f, 3.0f}));
  CHECK(f(x).to_vector<float>() == std::vector<float>{5, 6, 7});
  CHECK(k.item<int64_t>() == 4);
  CHECK(f.num_compiles() == 1);
}

TEST_CASE("trace: a replay that writes state moves its version, as the eager in-place op does") {
  // Autograd keeps the version of each tensor it saves: a value saved before a traced update of
  // it must be refused at backward, whether the update ran eagerly (recording) or replayed.
  Tensor w = tensor({1.0, 2.0, 3.0}).requires_grad_();
  auto update = trace([&](const Tensor& g) {
    NoGradGuard no_grad;
    w.sub_(g * 0.5);
    return w.sum();
  });
  Tensor g = ones({3}, {.dtype = kF64});
  for (int call = 0; call < 3; ++call) {  // recording, then replays
    CAPTURE(call);
    Tensor y = (w * w).sum();  // saves w
    uint64_t before = w.version();
    update(g);
    CHECK(w.version() > before);
    try {
      y.backward();
      FAIL("no tg::Error thrown");
    } catch (const Error& e) {
      CHECK(std::string(e.what()).find("modified by an in-place op") != std::string::npos);
    }
  }
  // State that is only read keeps its version.
  Tensor v = tensor({1.0, 2.0});
  auto read = trace([&](const Tensor& x) { return x * v; });
  Tensor x = tensor({3.0, 4.0});
  for (int call = 0; call < 3; ++call) (void)read(x);
  uint64_t before = v.version();
  (void)read(x);
  CHECK(v.version() == before);
  CHECK(w.detach().to_vector<double>() == std::vector<double>{-0.5, 0.5, 1.5});
}

TEST_CASE("trace: a learning rate changed between calls (a scheduler) reaches the traced step") {
  manual_seed(4);
  Tensor x = randn({16, 12}), y = randint(0, 5, {16});
  Classifier eager(false, 5), traced(false, 5);
  optim::StepLR s1(*traced.opt, 2, 0.5), s2(*eager.opt, 2, 0.5);
  auto step = trace([&](const Tensor& a, const Tensor& b) { return traced.step(a, b); });
  for (int i = 0; i < 6; ++i) {
    step(x, y);
    eager.step(x, y);
    s1.step();
    s2.step();
  }
  auto p1 = traced.model.parameters(), p2 = eager.model.parameters();
  for (size_t k = 0; k < p1.size(); ++k) CHECK(max_diff(p1[k], p2[k]) < 1e-5);
}

TEST_CASE("trace: reading values on the host while recording is an error naming the line") {
  Tensor w = ones({3});
  auto check_throws = [](auto&& f, const char* what) {
    try {
      f(ones({3}));
      FAIL("expected tg::Error");
    } catch (const Error& e) {
      std::string m = e.what();
      CHECK(m.find(what) != std::string::npos);
      CHECK(m.find("tg::trace records") != std::string::npos);
      CHECK(m.find("test_trace.cpp") != std::string::npos);
    }
  };
  check_throws(trace([](const Tensor& x) { return x * x.sum().item<float>(); }), "item");
  check_throws(trace([](const Tensor& x) {
                 auto v = x.to_vector<float>();
                 return x + static_cast<double>(v[0]);
               }),
               "to_vector");
  check_throws(trace([](const Tensor& x) {
                 float* p = x.data_ptr<float>();
                 return x + static_cast<double>(*p);
               }),
               "data_ptr");
  // Inside NoTraceGuard the same read is fine (it runs once, at recording).
  auto ok = trace([&](const Tensor& x) {
    double s;
    {
      NoTraceGuard once;
      s = w.sum().item<double>();
    }
    return x * s;
  });
  CHECK(ok(ones({3})).to_vector<float>() == std::vector<float>{3, 3, 3});
}

TEST_CASE("trace: random numbers are drawn afresh at each replay, as eager draws them") {
  auto f = trace([](const Tensor& x) { return nn::functional::dropout(x, 0.5, true); });
  Tensor x = ones({1000});
  manual_seed(11);
  std::vector<Tensor> traced;
  for (int i = 0; i < 3; ++i) traced.push_back(f(x));
  manual_seed(11);
  for (int i = 0; i < 3; ++i) CHECK(bitwise_equal(traced[i], nn::functional::dropout(x, 0.5, true)));
  CHECK(!bitwise_equal(traced[1], traced[2]));
}

TEST_CASE("trace: a state tensor freed or replaced is an error, not a stale read") {
  auto k = std::make_shared<Tensor>(ones({2}));
  auto f = trace([k](const Tensor& x) { return x + *k; });
  f(ones({2}));
  f(ones({2}));  // a replay: the graph must not keep the state alive afterwards
  *k = full({2}, 3.0);  // the handle now points elsewhere; the traced state is gone
  CHECK_THROWS_WITH_AS(f(ones({2})), doctest::Contains("freed or replaced"), Error);

  Tensor j = zeros({});
  auto g = trace([&](const Tensor& x) {
    j = j + 1;  // reassigns the handle instead of updating in place
    return x + j;
  });
  CHECK_THROWS_WITH_AS(g(ones({2})), doctest::Contains("k += 1"), Error);
}

TEST_CASE("trace: graphs print as text and DOT, and count nodes by op") {
  Tensor w = randn({4, 3});
  auto f = trace([&](const Tensor& x) { return relu(x.matmul(w)).sum(); });
  f(randn({2, 4}));
  Graph g = f.graph();
  CHECK(g.num_nodes() == 2);  // matmul, and relu fused into the sum (Note [Fused sums])
  CHECK(g.count("matmul") == 1);
  CHECK(g.count("relu") == 1);
  CHECK(g.count("sum") == 1);
  CHECK(g.count("fused") == 1);
  CHECK(g.count("add") == 0);
  std::string text = g.to_string();
  CHECK(text.find("matmul(in0, state") != std::string::npos);
  CHECK(text.find("test_trace.cpp") != std::string::npos);
  std::string dot = g.to_dot();
  CHECK(dot.rfind("digraph", 0) == 0);
  CHECK(dot.find("matmul") != std::string::npos);
  CHECK(f.pass_summary().find("dce:") != std::string::npos);
  CHECK_THROWS_AS(trace([](const Tensor& x) { return x; }).graph(), Error);
  CHECK_THROWS_WITH_AS(trace([](const Tensor& x) { return x; }, {.disable = {"nope"}}),
                       doctest::Contains("the passes are"), Error);
}

TEST_CASE("trace: dead code elimination drops what nothing reads") {
  auto f = trace([](const Tensor& x) {
    Tensor unused = exp(x) * 3;
    (void)unused;
    return x + 1;
  });
  Tensor x = randn({5});
  CHECK(max_diff(f(x), x + 1) == 0);
  CHECK(f.graph().count("exp") == 0);
  CHECK(f.graph().count("mul") == 0);
  CHECK(f.graph().num_nodes() == 1);  // add (the fill of 1 is folded into a constant)
  auto kept = trace([](const Tensor& x) {
    Tensor unused = exp(x) * 3;
    (void)unused;
    return x + 1;
  }, {.disable = {"dce"}});
  kept(x);
  CHECK(kept.graph().count("exp") == 1);
}

TEST_CASE("trace: common subexpressions are computed once") {
  auto f = trace([](const Tensor& x, const Tensor& y) { return (x + y) + (x + y); });
  Tensor x = randn({4}), y = randn({4});
  CHECK(max_diff(f(x, y), (x + y) + (x + y)) == 0);
  CHECK(f.graph().count("add") == 2);
  auto g = trace([](const Tensor& x, const Tensor& y) { return (x + y) + (x + y); },
                 {.disable = {"cse"}});
  g(x, y);
  CHECK(g.graph().count("add") == 3);
  // Not merged: the same op on an input that was written in between.
  Tensor s = ones({4});
  auto h = trace([&](const Tensor& x) {
    Tensor a = x * s;
    s.add_(1);
    Tensor b = x * s;
    return a + b;
  });
  CHECK(h(full({4}, 2.0)).to_vector<float>() == std::vector<float>{6, 6, 6, 6});
  CHECK(h.graph().count("mul") == 2);
  CHECK(h(full({4}, 2.0)).to_vector<float>() == std::vector<float>{10, 10, 10, 10});
}

TEST_CASE("trace: the memory plan shares buffers and keeps results") {
  // Unfused and untiled, so that there are many temps to plan (fused or tiled, the chain stores
  // almost none).
  auto f = trace([](const Tensor& x) {
    Tensor y = x;
    for (int i = 0; i < 20; ++i) y = tanh(y * 1.01 + 0.1);
    return y;
  }, {.disable = {"fuse", "tile"}});
  auto g = trace([](const Tensor& x) {
    Tensor y = x;
    for (int i = 0; i < 20; ++i) y = tanh(y * 1.01 + 0.1);
    return y;
  }, {.disable = {"memory", "fuse", "tile"}});
  Tensor x = randn({1000});
  CHECK(bitwise_equal(f(x), g(x)));
  CHECK(bitwise_equal(f(x), g(x)));
  auto memory_line = [](const std::string& summary, size_t& arena, size_t& naive, int& in_place) {
    auto at = summary.find("memory:");
    REQUIRE(at != std::string::npos);
    REQUIRE(std::sscanf(summary.c_str() + at,
                        "memory: temps in an arena of %zu bytes (%zu without sharing, %*zu alive at most), %d nodes",
                        &arena, &naive, &in_place) == 3);
  };
  size_t arena = 0, naive = 0;
  int in_place = 0;
  memory_line(f.pass_summary(), arena, naive, in_place);
  CHECK(arena * 10 < naive);  // 60 temps of 4000 bytes live a few at a time
  CHECK(in_place > 0);
  memory_line(g.pass_summary(), arena, naive, in_place);
  CHECK(arena == naive);
  CHECK(in_place == 0);
}

TEST_CASE("memory_stats counts live storage bytes and the peak") {
  reset_peak_memory();
  MemoryStats before = memory_stats();
  {
    Tensor a = zeros({1000});
    CHECK(memory_stats().allocated == before.allocated + 4000);
    Tensor b = zeros({500}, {.dtype = kF64});
    CHECK(memory_stats().allocated == before.allocated + 8000);
  }
  CHECK(memory_stats().allocated == before.allocated);
  CHECK(memory_stats().peak >= before.allocated + 8000);
  reset_peak_memory();
  CHECK(memory_stats().peak == memory_stats().allocated);
}

TEST_CASE("trace: a traced training step peaks below the eager one") {
  manual_seed(3);
  Tensor x = randn({32, 64}), y = randint(0, 10, {32});
  auto params_of = [](uint64_t seed) {
    manual_seed(seed);
    std::vector<Tensor> ps;
    for (auto [i, o] : {std::pair{64, 256}, {256, 256}, {256, 10}}) {
      ps.push_back((randn({i, o}) * 0.05).requires_grad_());
      ps.push_back(zeros({o}).requires_grad_());
    }
    return ps;
  };
  auto sgd_step = [](std::vector<Tensor>& ps, const Tensor& a, const Tensor& b) {
    Tensor h = a;
    for (size_t i = 0; i < ps.size(); i += 2) {
      h = h.matmul(ps[i]) + ps[i + 1];
      if (i + 2 < ps.size()) h = tanh(h);
    }
    Tensor loss = nn::functional::cross_entropy(h, b);
    auto g = grad({loss}, ps);
    NoGradGuard no_grad;
    for (size_t i = 0; i < ps.size(); ++i) ps[i].sub_(g[i] * 0.1);
    return loss;
  };
  std::vector<Tensor> p1 = params_of(1), p2 = params_of(1);
  int64_t base = memory_stats().allocated;
  reset_peak_memory();
  sgd_step(p1, x, y);
  int64_t eager_peak = memory_stats().peak - base;
  base = memory_stats().allocated;
  auto step = trace([&](const Tensor& a, const Tensor& b) { return sgd_step(p2, a, b); });
  step(x, y);  // records: as much memory as eager
  reset_peak_memory();
  step(x, y);
  int64_t traced_peak = memory_stats().peak - base;  // the graph's arena included
  CHECK(traced_peak < eager_peak);
  sgd_step(p1, x, y);  // two steps each
  for (size_t i = 0; i < p1.size(); ++i) CHECK(max_diff(p1[i], p2[i]) < 1e-6);
}

TEST_CASE("scan: loops a step over sequences, differentiably, eager and traced") {
  manual_seed(4);
  Tensor seq = randn({5, 3});
  // Running sums.
  Tensor sums = scan([](const Tensor& c, const Tensor& x) { return c + x; }, zeros({3}), seq);
  REQUIRE(sums.shape() == Shape{5, 3});
  std::vector<float> s = seq.to_vector<float>(), got = sums.to_vector<float>();
  for (int j = 0; j < 3; ++j) {
    float acc = 0;
    for (int t = 0; t < 5; ++t) {
      acc += s[t * 3 + j];
      CHECK(got[t * 3 + j] == doctest::Approx(acc).epsilon(1e-6));
    }
  }
  // No sequence: powers, as in Theano's scan tutorial.
  Tensor a = tensor({1.0f, 2.0f, 3.0f});
  Tensor powers = scan([&](const Tensor& c) { return c * a; }, ones({3}), 4);
  CHECK(powers.select(0, 3).to_vector<float>() == std::vector<float>{1, 16, 81});
  CHECK(scan([&](const Tensor& c) { return c * a; }, ones({3}), 0).shape() == Shape{0, 3});
  // Gradients flow through every step: c_t = 2 c_{t-1} + x_t, d(sum of c_4)/dx_i = 2^(4-i).
  Tensor x = seq.clone().requires_grad_();
  Tensor last = scan([](const Tensor& c, const Tensor& v) { return c * 2 + v; }, zeros({3}), x)
                    .select(0, 4)
                    .sum();
  auto g = grad({last}, {x});
  for (int t = 0; t < 5; ++t)
    CHECK(g[0].select(0, t).to_vector<float>() == std::vector<float>(3, static_cast<float>(1 << (4 - t))));
  // Two sequences, traced like any other code (recompiled for another length).
  Tensor w = randn({3, 3}) * 0.5;
  auto rnn = [&](const Tensor& xs, const Tensor& gates) {
    return scan([&](const Tensor& h, const std::vector<Tensor>& in) {
      return tanh(h.matmul(w) + in[0]) * sigmoid(in[1]);
    }, zeros({3}), {xs, gates});
  };
  auto traced = trace(rnn);
  Tensor gates = randn({5, 3});
  for (int i = 0; i < 2; ++i) CHECK(max_diff(traced(seq, gates), rnn(seq, gates)) < 1e-6);
  Tensor longer = randn({8, 3}), longer_gates = randn({8, 3});
  CHECK(max_diff(traced(longer, longer_gates), rnn(longer, longer_gates)) < 1e-6);
  CHECK(traced.num_compiles() == 2);
  // Misuse.
  CHECK_THROWS_WITH_AS(scan([](const Tensor& c, const Tensor&) { return c.sum(); }, zeros({3}), seq),
                       doctest::Contains("step 0 returned f32[]"), Error);
  CHECK_THROWS_WITH_AS(scan([](const Tensor& c, const std::vector<Tensor>&) { return c; }, zeros({3}),
                            {seq, randn({4, 3})}),
                       doctest::Contains("has 4 steps"), Error);
}
