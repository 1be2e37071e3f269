// The matmul_update lowering (Note [Matmul updates]): which updates fold into their products, and
// that a folded training step gives eager's parameters to rounding, with the hazards that forbid
// folding left as recorded.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <cmath>

using namespace tg;

namespace {

double max_diff(const Tensor& a, const Tensor& b) { return (a - b).abs().amax().item<double>(); }

// Lines of the graph that are matmul updates.
int updates(const TracedFunction& f) {
  std::string text = f.graph().to_string();
  int n = 0;
  for (size_t at = text.find("beta="); at != std::string::npos; at = text.find("beta=", at + 1))
    ++n;
  return n;
}

struct Mlp {
  std::vector<Tensor> params;
  explicit Mlp(uint64_t seed) {
    manual_seed(seed);
    params = {randn({20, 30}) * 0.2, zeros({30}), randn({30, 5}) * 0.2, zeros({5})};
    for (Tensor& p : params) p.requires_grad_();
  }
  Tensor loss(const Tensor& x, const Tensor& y) {
    Tensor h = tanh(x.matmul(params[0]) + params[1]);
    return nn::functional::cross_entropy(h.matmul(params[2]) + params[3], y);
  }
  Tensor sgd_step(const Tensor& x, const Tensor& y) {
    Tensor l = loss(x, y);
    auto g = grad({l}, params);
    NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) params[i].sub_(g[i] * 0.1);
    return l;
  }
};

}  // namespace

TEST_CASE("matmul_update: an SGD step's weight updates accumulate into the weights") {
  for (int64_t batch : {1, 4, 40}) {
    CAPTURE(batch);
    Tensor x = randn({batch, 20}), y = randint(0, 5, {batch});
    for (bool fold : {true, false}) {
      Mlp eager(3), traced(3);
      TraceOptions options;
      if (!fold) options.disable = {"matmul_update"};
      auto step =
          trace([&](const Tensor& a, const Tensor& b) { return traced.sgd_step(a, b); }, options);
      for (int i = 0; i < 3; ++i) {
        Tensor le = eager.sgd_step(x, y), lt = step(x, y);
        CHECK(max_diff(le, lt) < 1e-5);
      }
      for (size_t i = 0; i < eager.params.size(); ++i)
        CHECK(max_diff(eager.params[i], traced.params[i]) < 1e-5);
      CHECK(updates(step) == (fold ? 2 : 0));  // the two weight matrices; biases come from sums
      CHECK((step.pass_summary().find("matmul_update: 2 updates folded") != std::string::npos) ==
            fold);
      CHECK(step.graph().count("matmul") == 5);  // 2 forward, 1 input gradient, 2 weight gradients
    }
  }
}

TEST_CASE("matmul_update: a learning rate tensor is read at each replay; momentum folds too") {
  Tensor x = randn({6, 20}), y = randint(0, 5, {6});
  for (double momentum : {0.0, 0.75}) {
    CAPTURE(momentum);
    Mlp eager(5), traced(5);
    // Optimizer-style state: a learning rate tensor and momentum buffers.
    auto make_step = [momentum](Mlp& m, Tensor lr, std::vector<Tensor> bufs) {
      return [&m, lr, bufs, momentum](const Tensor& a, const Tensor& b) mutable {
        Tensor l = m.loss(a, b);
        auto g = grad({l}, m.params);
        NoGradGuard no_grad;
        for (size_t i = 0; i < m.params.size(); ++i) {
          if (momentum == 0) {
            m.params[i].sub_(g[i] * lr);
          } else {
            bufs[i].mul_(momentum).add_(g[i]);
            m.params[i].sub_(bufs[i] * lr);
          }
        }
        return l;
      };
    };
    auto zeros_of = [](const Mlp& m) {
      std::vector<Tensor> b;
      for (const Tensor& p : m.params) b.push_back(zeros_like(p));
      return b;
    };
    Tensor lr_e = full({}, 0.05), lr_t = full({}, 0.05);
    auto eager_step = make_step(eager, lr_e, zeros_of(eager));
    auto step = trace(make_step(traced, lr_t, zeros_of(traced)));
    for (int i = 0; i < 4; ++i) {
      if (i == 2) {  // a schedule changes the rate from outside: the next replay sees it
        lr_e.fill_(0.02);
        lr_t.fill_(0.02);
      }
      CHECK(max_diff(eager_step(x, y), step(x, y)) < 1e-5);
    }
    for (size_t i = 0; i < eager.params.size(); ++i)
      CHECK(max_diff(eager.params[i], traced.params[i]) < 1e-5);
    std::string text = step.graph().to_string();
    CHECK(updates(step) == 2);
    if (momentum == 0) {
      // The rate is state, multiplied in at run time.
      CHECK(text.find("alpha=-1*in2 beta=1") != std::string::npos);
    } else {
      // buf.mul_(0.75).add_(g): the product accumulates into the momentum buffer, scaled.
      CHECK(text.find("alpha=1 beta=0.75") != std::string::npos);
      CHECK(step.pass_summary().find("(2 with a scaled target)") != std::string::npos);
    }
  }
}

TEST_CASE("matmul_update: gradients left in .grad by backward() are stored, not folded") {
  Tensor x = randn({6, 20}), y = randint(0, 5, {6});
  Mlp eager(5), traced(5);
  optim::SGD opt_e(eager.params, {.lr = 0.05});
  optim::SGD opt_t(traced.params, {.lr = 0.05});
  auto step = trace([&](const Tensor& a, const Tensor& b) {
    opt_t.zero_grad();
    Tensor l = traced.loss(a, b);
    l.backward();
    opt_t.step();
    return l;
  });
  for (int i = 0; i < 3; ++i) {
    opt_e.zero_grad();
    Tensor l = eager.loss(x, y);
    l.backward();
    opt_e.step();
    CHECK(max_diff(l, step(x, y)) < 1e-5);
  }
  CHECK(updates(step) == 0);  // the user reads p.grad() after the step
  for (size_t i = 0; i < eager.params.size(); ++i) {
    CHECK(max_diff(eager.params[i], traced.params[i]) < 1e-5);
    CHECK(max_diff(eager.params[i].grad(), traced.params[i].grad()) < 1e-5);
  }
}

TEST_CASE("matmul_update: hazards keep the update as recorded") {
  manual_seed(11);
  Tensor x = randn({7, 4});
  auto run = [&](auto&& body) {
    Tensor w0 = randn({4, 4}), d0 = randn({7, 4});
    Tensor we = w0.clone(), de = d0.clone(), wt = w0.clone(), dt = d0.clone();
    std::vector<Tensor> out_e = body(x, we, de);
    auto f = trace([&](const Tensor& a) { return body(a, wt, dt); });
    std::vector<Tensor> out_t = f(x);
    out_t = f(x);  // a replay
    body(x, we, de);
    CHECK(max_diff(we, wt) < 1e-5);
    CHECK(max_diff(de, dt) < 1e-5);
    for (size_t i = 0; i < out_e.size(); ++i) CHECK(out_t.size() == out_e.size());
    return updates(f);
  };
  // The gradient is returned too: it must be stored.
  CHECK(run([](const Tensor& a, Tensor& w, Tensor& d) {
          Tensor g = a.t().matmul(d);
          w.sub_(g * 0.5);
          return std::vector<Tensor>{g};
        }) == 0);
  // An operand of the product changes before the update: the product must run first.
  CHECK(run([](const Tensor& a, Tensor& w, Tensor& d) {
          Tensor g = a.t().matmul(d);
          d.mul_(2);
          w.sub_(g * 0.5);
          return std::vector<Tensor>{};
        }) == 0);
  // The product reads the weight it updates.
  CHECK(run([](const Tensor& a, Tensor& w, Tensor& d) {
          w.sub_(w.t().matmul(w) * 0.1);
          return std::vector<Tensor>{};
        }) == 0);
  // A scale that is not one element: an elementwise product, not a matmul update.
  CHECK(run([](const Tensor& a, Tensor& w, Tensor& d) {
          Tensor g = a.t().matmul(d);
          w.sub_(g * w);
          return std::vector<Tensor>{};
        }) == 0);
  // And the plain case folds (so the cases above are refused for their hazard alone).
  CHECK(run([](const Tensor& a, Tensor& w, Tensor& d) {
          Tensor g = a.t().matmul(d);
          w.sub_(g * 0.5);
          return std::vector<Tensor>{};
        }) == 1);
}

TEST_CASE("matmul_update: Mode::Debug accepts a folded step") {
  Mlp traced(9);
  Tensor x = randn({3, 20}), y = randint(0, 5, {3});
  auto step = trace([&](const Tensor& a, const Tensor& b) { return traced.sgd_step(a, b); },
                    {.mode = Mode::Debug});
  CHECK_NOTHROW(step(x, y));
  CHECK_NOTHROW(step(x, y));
  CHECK(updates(step) == 2);
}
