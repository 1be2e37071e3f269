// The slides' first case study, logistic regression, in eager tapegrad: N = 400 samples of 784
// random features with random 0/1 labels; cross-entropy + 0.01·‖w‖², gradient descent, lr 0.1.
// Run: build/release/examples/logistic_regression [steps]
#include <tapegrad/tapegrad.h>

#include <cstdio>
#include <cstdlib>

using namespace tg;

int main(int argc, char** argv) {
  int steps = argc > 1 ? std::atoi(argv[1]) : 1000;
  manual_seed(0);
  const int64_t n = 400, features = 784;
  auto x = randn({n, features});
  auto y = randint(0, 2, {n}).to(kF32);
  auto w = randn({features}).requires_grad_();
  auto b = zeros({}).requires_grad_();

  auto model = [&] { return 1 / (1 + exp(-x.matmul(w) - b)); };  // p(y = 1 | x)
  for (int step = 0; step <= steps; ++step) {
    auto z = x.matmul(w) + b;
    // -y·log p - (1-y)·log(1-p), with log p = log_sigmoid(z): the literal log(p) is -inf in f32
    // once |z| passes ~17, which random weights reach at once (tg::trace rewrites it to this).
    auto xent = -y * log_sigmoid(z) - (1 - y) * log_sigmoid(-z);
    auto cost = xent.mean() + 0.01 * (w * w).sum();
    auto g = grad({cost}, {w, b});
    {
      NoGradGuard no_grad;
      w -= 0.1 * g[0];
      b -= 0.1 * g[1];
    }
    if (step % (steps / 10 > 0 ? steps / 10 : 1) == 0)
      std::printf("step %5d  cost %.4f\n", step, cost.item<float>());
  }
  NoGradGuard no_grad;
  auto accuracy = ((model() > 0.5) == (y > 0.5)).to(kF32).mean();
  std::printf("accuracy on the training data: %.1f%%\n", 100 * accuracy.item<float>());
}
