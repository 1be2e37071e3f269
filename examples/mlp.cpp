// The slides' second case study: a 784-300-1 sigmoid MLP on the same data as the logistic
// regression (400 samples, 784 random features, random 0/1 labels), trained with tg::grad and a
// manual update under NoGradGuard. Run: build/release/examples/mlp [steps]
#include <tapegrad/tapegrad.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>

using namespace tg;

int main(int argc, char** argv) {
  int steps = argc > 1 ? std::atoi(argv[1]) : 500;
  manual_seed(0);
  const int64_t n = 400, features = 784, hidden = 300;
  auto x = randn({n, features});
  auto y = randint(0, 2, {n}).to(kF32);
  // Scaled so that the first layer's pre-activations start near unit variance.
  auto w1 = (randn({features, hidden}) / std::sqrt(double(features))).requires_grad_();
  auto b1 = zeros({hidden}).requires_grad_();
  auto w2 = (randn({hidden}) / std::sqrt(double(hidden))).requires_grad_();
  auto b2 = zeros({}).requires_grad_();
  std::vector<Tensor> params{w1, b1, w2, b2};

  auto logits = [&] { return sigmoid(x.matmul(w1) + b1).matmul(w2) + b2; };
  for (int step = 0; step <= steps; ++step) {
    auto z = logits();
    auto xent = -y * log_sigmoid(z) - (1 - y) * log_sigmoid(-z);  // cross-entropy, stable form
    auto cost = xent.mean() + 0.01 * ((w1 * w1).sum() + (w2 * w2).sum());
    auto g = grad({cost}, params);
    {
      NoGradGuard no_grad;
      for (size_t i = 0; i < params.size(); ++i) params[i] -= 0.1 * g[i];
    }
    if (step % (steps / 10 > 0 ? steps / 10 : 1) == 0)
      std::printf("step %5d  cost %.4f\n", step, cost.item<float>());
  }
  NoGradGuard no_grad;
  auto p = 1 / (1 + exp(-logits()));
  auto accuracy = ((p > 0.5) == (y > 0.5)).to(kF32).mean();
  std::printf("accuracy on the training data: %.1f%%\n", 100 * accuracy.item<float>());
}
