// Optimizers against their update formulas worked out in plain doubles, step by step; parameter
// groups, state save/load, schedulers and clipping.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <cmath>
#include <filesystem>

using namespace tg;

namespace {

// The loss Σ c_i·p_i² has gradient 2·c_i·p_i: easy to follow by hand.
const std::vector<double> kC = {0.5, -1.5, 2.0};

Tensor loss_of(const Tensor& p) { return (tensor(kC) * p * p).sum(); }

// Runs `steps` steps of opt on p, returning p's values after each step.
std::vector<std::vector<double>> run(optim::Optimizer& opt, Tensor& p, int steps) {
  std::vector<std::vector<double>> out;
  for (int s = 0; s < steps; ++s) {
    opt.zero_grad();
    loss_of(p).backward();
    opt.step();
    out.push_back(p.detach().to_vector<double>());
  }
  return out;
}

Tensor param() { return tensor({1.0, -2.0, 0.5}).requires_grad_(); }

// A reference: update(p, g, step) applies one step to the doubles, elementwise with state.
template <class Update>
void check_against(optim::Optimizer& opt, Tensor& p, Update update, int steps = 4) {
  auto got = run(opt, p, steps);
  std::vector<double> q = {1.0, -2.0, 0.5};
  for (int s = 0; s < steps; ++s) {
    for (size_t i = 0; i < q.size(); ++i) q[i] = update(i, q[i], 2 * kC[i] * q[i], s + 1);
    for (size_t i = 0; i < q.size(); ++i) CHECK(got[s][i] == doctest::Approx(q[i]).epsilon(1e-12));
  }
}

}  // namespace

TEST_CASE("SGD: plain, weight decay, momentum with dampening, Nesterov") {
  {
    Tensor p = param();
    optim::SGD opt({p}, {.lr = 0.1});
    check_against(opt, p, [](size_t, double q, double g, int) { return q - 0.1 * g; });
  }
  {
    Tensor p = param();
    optim::SGD opt({p}, {.lr = 0.1, .momentum = 0.9, .dampening = 0.2, .weight_decay = 0.01});
    std::vector<double> buf(3);
    check_against(opt, p, [&](size_t i, double q, double g, int step) {
      double d = g + 0.01 * q;
      buf[i] = step == 1 ? d : 0.9 * buf[i] + 0.8 * d;
      return q - 0.1 * buf[i];
    });
  }
  {
    Tensor p = param();
    optim::SGD opt({p}, {.lr = 0.05, .momentum = 0.5, .nesterov = true});
    std::vector<double> buf(3);
    check_against(opt, p, [&](size_t i, double q, double g, int step) {
      buf[i] = step == 1 ? g : 0.5 * buf[i] + g;
      return q - 0.05 * (g + 0.5 * buf[i]);
    });
  }
}

TEST_CASE("Adam (L2 weight decay, amsgrad) and AdamW (decoupled)") {
  for (bool ams : {false, true}) {
    Tensor p = param();
    optim::Adam opt({p}, {.lr = 1e-2, .betas = {0.9, 0.999}, .eps = 1e-8, .weight_decay = 0.01, .amsgrad = ams});
    std::vector<double> m(3), v(3), vmax(3);
    check_against(opt, p, [&](size_t i, double q, double g, int t) {
      g += 0.01 * q;
      m[i] = 0.9 * m[i] + 0.1 * g;
      v[i] = 0.999 * v[i] + 0.001 * g * g;
      vmax[i] = std::max(vmax[i], v[i]);
      double bc1 = 1 - std::pow(0.9, t), bc2 = 1 - std::pow(0.999, t);
      double denom = std::sqrt(ams ? vmax[i] : v[i]) / std::sqrt(bc2) + 1e-8;
      return q - 1e-2 / bc1 * m[i] / denom;
    });
  }
  Tensor p = param();
  optim::AdamW opt({p}, {.lr = 1e-2, .weight_decay = 0.1});
  std::vector<double> m(3), v(3);
  check_against(opt, p, [&](size_t i, double q, double g, int t) {
    q *= 1 - 1e-2 * 0.1;
    m[i] = 0.9 * m[i] + 0.1 * g;
    v[i] = 0.999 * v[i] + 0.001 * g * g;
    double bc1 = 1 - std::pow(0.9, t), bc2 = 1 - std::pow(0.999, t);
    return q - 1e-2 / bc1 * m[i] / (std::sqrt(v[i]) / std::sqrt(bc2) + 1e-8);
  });
}

TEST_CASE("RMSprop (centered, momentum) and Adagrad (lr decay)") {
  {
    Tensor p = param();
    optim::RMSprop opt({p}, {.lr = 1e-2, .alpha = 0.9, .eps = 1e-8, .momentum = 0.5, .centered = true});
    std::vector<double> sq(3), ga(3), buf(3);
    check_against(opt, p, [&](size_t i, double q, double g, int) {
      sq[i] = 0.9 * sq[i] + 0.1 * g * g;
      ga[i] = 0.9 * ga[i] + 0.1 * g;
      double avg = std::sqrt(sq[i] - ga[i] * ga[i]) + 1e-8;
      buf[i] = 0.5 * buf[i] + g / avg;
      return q - 1e-2 * buf[i];
    });
  }
  Tensor p = param();
  optim::Adagrad opt({p}, {.lr = 0.1, .lr_decay = 0.01, .weight_decay = 0.1, .initial_accumulator_value = 0.2});
  std::vector<double> sum(3, 0.2);
  check_against(opt, p, [&](size_t i, double q, double g, int t) {
    g += 0.1 * q;
    sum[i] += g * g;
    return q - 0.1 / (1 + (t - 1) * 0.01) * g / (std::sqrt(sum[i]) + 1e-10);
  });
}

TEST_CASE("parameter groups, parameters without gradients, errors") {
  Tensor a = param(), b = param(), unused = param();
  optim::SGD opt({{.params = {a}, .lr = 0.1}, {.params = {b, unused}}}, {.lr = 0.01});
  (loss_of(a) + loss_of(b)).backward();
  opt.step();
  CHECK(a.detach().to_vector<double>()[0] == doctest::Approx(1 - 0.1 * 1.0));
  CHECK(b.detach().to_vector<double>()[0] == doctest::Approx(1 - 0.01 * 1.0));
  CHECK(unused.detach().to_vector<double>()[0] == 1.0);
  CHECK(*opt.param_groups()[1].lr == 0.01);
  CHECK_THROWS_WITH_AS(optim::SGD({a, a * 2}), doctest::Contains("leaves"), Error);
  CHECK_THROWS_WITH_AS(optim::SGD({{.params = {a}}, {.params = {a}}}), doctest::Contains("two groups"), Error);
  CHECK_THROWS_WITH_AS(optim::Adam({a}, {.betas = {1.5, 0.9}}), doctest::Contains("betas.first"), Error);
}

TEST_CASE("optimizer state saves and loads: training continues identically") {
  auto path = (std::filesystem::temp_directory_path() / "tg_test_adam.safetensors").string();
  Tensor p = param();
  optim::Adam opt({p}, {.lr = 0.05});
  run(opt, p, 3);
  opt.save(path);
  Tensor saved = p.detach().clone();
  auto next = run(opt, p, 2);
  Tensor q = param();
  {
    NoGradGuard g;
    q.copy_(saved);
  }
  optim::Adam fresh({q}, {.lr = 0.05});
  fresh.load(path);
  auto again = run(fresh, q, 2);
  CHECK(again == next);
  CHECK(fresh.state_dict().count("state.0.exp_avg") == 1);
  optim::Adam other({param(), param()});
  CHECK_THROWS_WITH_AS(other.load(path), doctest::Contains("param_groups"), Error);
  std::filesystem::remove(path);
}

TEST_CASE("schedulers follow PyTorch's closed forms") {
  Tensor p = param();
  optim::SGD opt({p}, {.lr = 1.0});
  optim::StepLR step(opt, 2, 0.5);
  std::vector<double> got;
  for (int e = 0; e < 5; ++e) got.push_back(step.get_last_lr()[0]), step.step();
  CHECK(got == std::vector<double>{1, 1, 0.5, 0.5, 0.25});
  optim::SGD opt2({param()}, {.lr = 0.1});
  optim::CosineAnnealingLR cos(opt2, 10, 0.01);
  for (int e = 0; e < 5; ++e) cos.step();
  CHECK(cos.get_last_lr()[0] == doctest::Approx(0.01 + 0.09 * (1 + std::cos(M_PI / 2)) / 2));
  optim::SGD opt3({param()}, {.lr = 0.3});
  optim::LinearLR warm(opt3, 0.1, 1.0, 4);
  CHECK(warm.get_last_lr()[0] == doctest::Approx(0.03));
  for (int e = 0; e < 2; ++e) warm.step();
  CHECK(warm.get_last_lr()[0] == doctest::Approx(0.3 * (0.1 + 0.9 * 0.5)));
  for (int e = 0; e < 5; ++e) warm.step();
  CHECK(warm.get_last_lr()[0] == doctest::Approx(0.3));
  optim::SGD opt4({param()}, {.lr = 2.0});
  optim::ExponentialLR ex(opt4, 0.5);
  ex.step();
  ex.step();
  CHECK(*opt4.param_groups()[0].lr == doctest::Approx(0.5));
}

TEST_CASE("gradient clipping by norm and by value") {
  Tensor a = tensor({3.0, 0.0}).requires_grad_(), b = tensor({4.0}).requires_grad_();
  ((a * a).sum() / 2 + (b * b).sum() / 2).backward();  // grads (3, 0) and (4): norm 5
  double n = nn::utils::clip_grad_norm_({a, b}, 1.0);
  CHECK(n == doctest::Approx(5));
  CHECK(a.grad().to_vector<double>()[0] == doctest::Approx(3 / (5 + 1e-6)));
  CHECK(b.grad().to_vector<double>()[0] == doctest::Approx(4 / (5 + 1e-6)));
  CHECK(nn::utils::clip_grad_norm_({a, b}, 10.0, INFINITY) == doctest::Approx(4 / (5 + 1e-6)));
  nn::utils::clip_grad_value_({a, b}, 0.5);
  CHECK(a.grad().to_vector<double>()[0] == 0.5);
  CHECK(a.grad().to_vector<double>()[1] == 0.0);
}
