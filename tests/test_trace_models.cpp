// Traced equals eager for the example models' architectures (examples/): LeNet (convolutions,
// pooling, Adam), the char-RNN (embedding, LSTM over a sequence, SGD with momentum), and a
// GELU + LayerNorm residual block (AdamW): a whole training step, several times, compared with
// the same model trained eagerly from the same initial weights: the loss, every parameter, its
// gradient and the optimizer's state; bitwise with FastCompile, to 1e-5 with every pass.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <cmath>
#include <functional>
#include <memory>

using namespace tg;
namespace F = tg::nn::functional;

namespace {

double max_diff(const Tensor& a, const Tensor& b) {
  if (!a.defined() || !b.defined()) return a.defined() == b.defined() ? 0 : INFINITY;
  return (a - b).abs().amax().item<double>();
}

struct LeNet : nn::Module {
  nn::Sequential features{nn::Conv2d(1, 6, 5, {.padding = 2}),
                          nn::ReLU(),
                          nn::MaxPool2d(2),
                          nn::Conv2d(6, 16, 5),
                          nn::ReLU(),
                          nn::MaxPool2d(2)};
  nn::Sequential classifier{nn::Flatten(), nn::Linear(16 * 5 * 5, 120),
                            nn::ReLU(),    nn::Linear(120, 84),
                            nn::ReLU(),    nn::Linear(84, 10)};
  LeNet() {
    register_module("features", features);
    register_module("classifier", classifier);
  }
  Tensor forward(const Tensor& x) override { return classifier(features(x)); }
};

struct CharModel : nn::Module {
  nn::Embedding embed{20, 8};
  nn::LSTM lstm{8, 16};
  nn::Linear head{16, 20};
  CharModel() {
    register_module("embed", embed);
    register_module("lstm", lstm);
    register_module("head", head);
  }
  Tensor forward(const Tensor& idx) override { return head(lstm.forward(embed(idx))); }
};

struct Block : nn::Module {
  nn::Linear up{24, 48}, down{48, 24}, head{24, 4};
  nn::LayerNorm norm{Shape{24}};
  Block() {
    register_module("up", up);
    register_module("down", down);
    register_module("head", head);
    register_module("norm", norm);
  }
  Tensor forward(const Tensor& x) override {
    Tensor h = x + down(gelu(up(norm(x))));
    return head(h);
  }
};

// A model, its optimizer, and a training step on it.
struct Trainer {
  std::shared_ptr<nn::Module> model;
  std::unique_ptr<optim::Optimizer> opt;
  std::function<Tensor(nn::Module&, const Tensor&, const Tensor&)> loss;
  Tensor step(const Tensor& x, const Tensor& y) {
    opt->zero_grad();
    Tensor l = loss(*model, x, y);
    l.backward();
    opt->step();
    return l;
  }
};

template <class M>
Trainer make(uint64_t seed, int optimizer,
             std::function<Tensor(nn::Module&, const Tensor&, const Tensor&)> loss) {
  manual_seed(seed);
  Trainer t;
  t.model = std::make_shared<M>();
  auto params = t.model->parameters();
  if (optimizer == 0) t.opt = std::make_unique<optim::Adam>(params, optim::AdamOptions{.lr = 1e-3});
  if (optimizer == 1)
    t.opt = std::make_unique<optim::SGD>(params, optim::SGDOptions{.lr = 0.05, .momentum = 0.9});
  if (optimizer == 2)
    t.opt = std::make_unique<optim::AdamW>(params, optim::AdamWOptions{.lr = 1e-3});
  t.loss = std::move(loss);
  return t;
}

template <class M>
void check_model(const char* name, int optimizer, const Tensor& x, const Tensor& y,
                 std::function<Tensor(nn::Module&, const Tensor&, const Tensor&)> loss) {
  for (Mode mode : {Mode::FastCompile, Mode::FastRun}) {
    CAPTURE(name);
    CAPTURE(static_cast<int>(mode));
    Trainer eager = make<M>(11, optimizer, loss), traced = make<M>(11, optimizer, loss);
    auto step =
        trace([&](const Tensor& a, const Tensor& b) { return traced.step(a, b); }, {.mode = mode});
    double tol = mode == Mode::FastCompile ? 0 : 1e-5;
    for (int i = 0; i < 4; ++i) {
      CAPTURE(i);
      Tensor l1 = step(x, y), l2 = eager.step(x, y);
      CHECK(max_diff(l1, l2) <= tol);
      auto p1 = traced.model->named_parameters(), p2 = eager.model->named_parameters();
      REQUIRE(p1.size() == p2.size());
      for (size_t k = 0; k < p1.size(); ++k) {
        CAPTURE(p1[k].first);
        CHECK(max_diff(p1[k].second, p2[k].second) <= tol);
        CHECK(max_diff(p1[k].second.grad(), p2[k].second.grad()) <= tol);
      }
      auto s1 = traced.opt->state_dict(), s2 = eager.opt->state_dict();
      REQUIRE(s1.size() == s2.size());
      for (auto& [key, v] : s1) CHECK(max_diff(v, s2.at(key)) <= tol);
    }
    CHECK(step.num_compiles() == 1);
  }
}

}  // namespace

TEST_CASE("trace: LeNet with Adam trains as it does eagerly") {
  manual_seed(1);
  Tensor x = randn({6, 1, 28, 28}), y = randint(0, 10, {6});
  check_model<LeNet>("lenet", 0, x, y, [](nn::Module& m, const Tensor& a, const Tensor& b) {
    return F::cross_entropy(m(a), b);
  });
}

TEST_CASE("trace: the char-RNN's LSTM with SGD momentum trains as it does eagerly") {
  manual_seed(2);
  Tensor idx = randint(0, 20, {7, 3}), next = randint(0, 20, {7, 3});
  check_model<CharModel>("char_rnn", 1, idx, next,
                         [](nn::Module& m, const Tensor& a, const Tensor& b) {
                           return F::cross_entropy(m(a).reshape({-1, 20}), b.reshape({-1}));
                         });
}

TEST_CASE("trace: a GELU + LayerNorm residual block with AdamW trains as it does eagerly") {
  manual_seed(3);
  Tensor x = randn({40, 24}), y = randint(0, 4, {40});
  check_model<Block>("block", 2, x, y, [](nn::Module& m, const Tensor& a, const Tensor& b) {
    return F::cross_entropy(m(a), b, {.label_smoothing = 0.1});
  });
}
