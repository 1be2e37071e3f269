// nn::init: in-place initializers with PyTorch's fans and gains. They write without recording, so
// they work on parameters that require grad.
#include "tapegrad/nn/init.h"

#include <cmath>

#include "core/check.h"
#include "tapegrad/format.h"

namespace tg::nn::init {

namespace {

void check_floating(const Tensor& t, const char* op) {
  TG_CHECK(t.defined() && is_floating(t.dtype()), "{}: expected a defined floating tensor", op);
}

std::pair<double, double> fans(const Tensor& t, const char* op) {
  TG_CHECK(t.dim() >= 2, "{}: fan in and fan out need at least 2 dims, got shape {}", op,
           t.shape());
  double receptive = 1;
  for (int64_t d = 2; d < t.dim(); ++d) receptive *= static_cast<double>(t.size(d));
  return {static_cast<double>(t.size(1)) * receptive, static_cast<double>(t.size(0)) * receptive};
}

Tensor& fill_from(Tensor& t, const Tensor& values) {
  NoGradGuard no_grad;
  t.copy_(values);
  return t;
}

}  // namespace

double calculate_gain(const std::string& nl, double param) {
  if (nl == "linear" || nl == "sigmoid" || nl.rfind("conv", 0) == 0) return 1;
  if (nl == "tanh") return 5.0 / 3;
  if (nl == "relu") return std::sqrt(2.0);
  if (nl == "leaky_relu") return std::sqrt(2.0 / (1 + param * param));
  if (nl == "selu") return 0.75;
  throw_error("calculate_gain: unknown nonlinearity '" + nl + "'");
}

Tensor& uniform_(Tensor& t, double a, double b, Loc loc) {
  OpScope scope("uniform_", loc);
  check_floating(t, "uniform_");
  TG_CHECK(a <= b, "uniform_: a ({}) must not exceed b ({})", a, b);
  return fill_from(t, rand(t.shape(), {.dtype = t.dtype(), .device = t.device()}) * (b - a) + a);
}

Tensor& normal_(Tensor& t, double mean, double std, Loc loc) {
  OpScope scope("normal_", loc);
  check_floating(t, "normal_");
  TG_CHECK(std >= 0, "normal_: std must be non-negative, got {}", std);
  return fill_from(t, randn(t.shape(), {.dtype = t.dtype(), .device = t.device()}) * std + mean);
}

Tensor& constant_(Tensor& t, double value, Loc loc) {
  OpScope scope("constant_", loc);
  TG_CHECK(t.defined(), "constant_: expected a defined tensor");
  NoGradGuard no_grad;
  t.fill_(value);
  return t;
}
Tensor& zeros_(Tensor& t, Loc loc) { return constant_(t, 0, loc); }
Tensor& ones_(Tensor& t, Loc loc) { return constant_(t, 1, loc); }

Tensor& xavier_uniform_(Tensor& t, double gain, Loc loc) {
  OpScope scope("xavier_uniform_", loc);
  check_floating(t, "xavier_uniform_");
  auto [in, out] = fans(t, "xavier_uniform_");
  double bound = gain * std::sqrt(6.0 / (in + out));
  return uniform_(t, -bound, bound, loc);
}

Tensor& xavier_normal_(Tensor& t, double gain, Loc loc) {
  OpScope scope("xavier_normal_", loc);
  check_floating(t, "xavier_normal_");
  auto [in, out] = fans(t, "xavier_normal_");
  return normal_(t, 0, gain * std::sqrt(2.0 / (in + out)), loc);
}

Tensor& kaiming_uniform_(Tensor& t, double a, FanMode mode, const std::string& nl, Loc loc) {
  OpScope scope("kaiming_uniform_", loc);
  check_floating(t, "kaiming_uniform_");
  auto [in, out] = fans(t, "kaiming_uniform_");
  double fan = mode == FanMode::FanIn ? in : out;
  double bound = calculate_gain(nl, a) * std::sqrt(3.0 / fan);
  return uniform_(t, -bound, bound, loc);
}

Tensor& kaiming_normal_(Tensor& t, double a, FanMode mode, const std::string& nl, Loc loc) {
  OpScope scope("kaiming_normal_", loc);
  check_floating(t, "kaiming_normal_");
  auto [in, out] = fans(t, "kaiming_normal_");
  double fan = mode == FanMode::FanIn ? in : out;
  return normal_(t, 0, calculate_gain(nl, a) / std::sqrt(fan), loc);
}

}  // namespace tg::nn::init
