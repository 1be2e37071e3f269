// Autograd benchmark: recording overhead per op, one SGD training step of the slides' workloads
// (examples/s), and a Hessian-vector product as a ratio to one gradient; tapegrad beside LibTorch
// in one process, both on one thread. Run: scripts/tg bench  (or
// build/release/bench/bench_autograd)
#include <tapegrad/tapegrad.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "harness.h"

#ifdef TG_BENCH_TORCH
#include <ATen/Parallel.h>
#include <torch/torch.h>
#endif

namespace {

using bench::measure;
using bench::row;

// --- recording overhead: a chain of 1000 alternating add/mul ------------------------------------

constexpr int kChain = 1000;

void overhead(int64_t n) {
  auto a = tg::randn({n}).requires_grad_();
  auto b = tg::randn({n});
  auto chain = [&] {
    tg::Tensor c = a;
    for (int i = 0; i < kChain / 2; ++i) c = (c + b) * b;
    return c;
  };
  double fwd = measure([&] { chain(); });
  double both = measure([&] { chain().sum().backward(); });
  double rfwd = 0, rboth = 0;
#ifdef TG_BENCH_TORCH
  auto ta = torch::randn({n}).requires_grad_(), tb = torch::randn({n});
  auto tchain = [&] {
    torch::Tensor c = ta;
    for (int i = 0; i < kChain / 2; ++i) c = (c + tb) * tb;
    return c;
  };
  rfwd = measure([&] { tchain(); });
  rboth = measure([&] { tchain().sum().backward(); });
#endif
  char name[80];
  std::snprintf(name, sizeof name, "add/mul chain, %lld elem, forward", static_cast<long long>(n));
  row(name, fwd / kChain * 1e9, rfwd / kChain * 1e9, "ns/op", true);
  std::snprintf(name, sizeof name, "add/mul chain, %lld elem, fwd+bwd", static_cast<long long>(n));
  row(name, both / kChain * 1e9, rboth / kChain * 1e9, "ns/op", true);
}

// --- training steps
// ------------------------------------------------------------------------------- A model is a list
// of layer widths; hidden layers use tanh. One output: logistic regression (sigmoid cross-entropy);
// more: softmax cross-entropy. Weights ~ N(0, 1/fan_in); lr 0.01.

struct Workload {
  const char* name;
  std::vector<int64_t> widths;
};

struct TgModel {
  std::vector<tg::Tensor> params;  // w0, b0, w1, b1, ...
  explicit TgModel(const std::vector<int64_t>& widths) {
    for (size_t l = 0; l + 1 < widths.size(); ++l) {
      double scale = 1 / std::sqrt(double(widths[l]));
      params.push_back((tg::randn({widths[l], widths[l + 1]}) * scale).requires_grad_());
      params.push_back(tg::zeros({widths[l + 1]}).requires_grad_());
    }
  }
  tg::Tensor loss(const tg::Tensor& x, const tg::Tensor& y, const tg::Tensor& labels) const {
    tg::Tensor h = x;
    size_t layers = params.size() / 2;
    for (size_t l = 0; l < layers; ++l) {
      h = h.matmul(params[2 * l]) + params[2 * l + 1];
      if (l + 1 < layers) h = tg::tanh(h);
    }
    if (h.size(1) == 1) {
      tg::Tensor z = h.squeeze(1);
      return (-y * tg::log_sigmoid(z) - (1 - y) * tg::log_sigmoid(-z)).mean();
    }
    return -tg::log_softmax(h, 1).gather(1, labels.unsqueeze(1)).mean();
  }
  void step(const tg::Tensor& x, const tg::Tensor& y, const tg::Tensor& labels) {
    auto g = tg::grad({loss(x, y, labels)}, params);
    tg::NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) params[i].sub_(g[i] * 0.01);
  }
};

#ifdef TG_BENCH_TORCH
struct TorchModel {
  std::vector<torch::Tensor> params;
  explicit TorchModel(const std::vector<int64_t>& widths) {
    for (size_t l = 0; l + 1 < widths.size(); ++l) {
      double scale = 1 / std::sqrt(double(widths[l]));
      params.push_back((torch::randn({widths[l], widths[l + 1]}) * scale).requires_grad_());
      params.push_back(torch::zeros({widths[l + 1]}).requires_grad_());
    }
  }
  torch::Tensor loss(const torch::Tensor& x, const torch::Tensor& y,
                     const torch::Tensor& labels) const {
    torch::Tensor h = x;
    size_t layers = params.size() / 2;
    for (size_t l = 0; l < layers; ++l) {
      h = torch::addmm(params[2 * l + 1], h, params[2 * l]);
      if (l + 1 < layers) h = torch::tanh(h);
    }
    if (h.size(1) == 1) return torch::binary_cross_entropy_with_logits(h.squeeze(1), y);
    return torch::nll_loss(torch::log_softmax(h, 1), labels);
  }
  void step(const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& labels) {
    auto g = torch::autograd::grad({loss(x, y, labels)}, params);
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) params[i].sub_(g[i] * 0.01);
  }
};
#endif

void training(const Workload& w, int64_t batch) {
  int64_t in = w.widths.front(), classes = w.widths.back();
  TgModel model(w.widths);
  auto x = tg::randn({batch, in});
  auto labels = tg::randint(0, classes == 1 ? 2 : classes, {batch});
  auto y = labels.to(tg::kF32);
  double t = measure([&] { model.step(x, y, labels); }, 0.2);
  double r = 0;
#ifdef TG_BENCH_TORCH
  TorchModel tmodel(w.widths);
  auto tx = torch::randn({batch, in});
  auto tlabels = torch::randint(0, classes == 1 ? 2 : classes, {batch});
  auto ty = tlabels.to(torch::kFloat);
  r = measure([&] { tmodel.step(tx, ty, tlabels); }, 0.2);
#endif
  char name[80];
  std::snprintf(name, sizeof name, "SGD step %s, batch %lld", w.name,
                static_cast<long long>(batch));
  row(name, batch / t, r > 0 ? batch / r : 0, "examples/s", false);
}

// --- Hessian-vector product of the MLP loss, as a ratio to one gradient
// -----------------------------

void hessian_vector(int64_t batch) {
  TgModel model({784, 500, 10});
  auto x = tg::randn({batch, 784});
  auto labels = tg::randint(0, 10, {batch});
  auto y = labels.to(tg::kF32);
  std::vector<tg::Tensor> v;
  for (auto& p : model.params) v.push_back(tg::randn_like(p));
  double tg_grad = measure([&] { tg::grad({model.loss(x, y, labels)}, model.params); }, 0.2);
  double tg_hvp = measure(
      [&] {
        auto g = tg::grad({model.loss(x, y, labels)}, model.params, {.create_graph = true});
        tg::grad(g, model.params, {.grad_outputs = v, .allow_unused = true});
      },
      0.2);
  double ratio_torch = 0;
#ifdef TG_BENCH_TORCH
  TorchModel tmodel({784, 500, 10});
  auto tx = torch::randn({batch, 784});
  auto tlabels = torch::randint(0, 10, {batch});
  auto ty = tlabels.to(torch::kFloat);
  std::vector<torch::Tensor> tv;
  for (auto& p : tmodel.params) tv.push_back(torch::randn_like(p));
  double t_grad =
      measure([&] { torch::autograd::grad({tmodel.loss(tx, ty, tlabels)}, tmodel.params); }, 0.2);
  double t_hvp = measure(
      [&] {
        auto g =
            torch::autograd::grad({tmodel.loss(tx, ty, tlabels)}, tmodel.params, {}, true, true);
        torch::autograd::grad(g, tmodel.params, tv, false, false, true);
      },
      0.2);
  ratio_torch = t_hvp / t_grad;
  std::printf("%-40s %12.3f %12.3f  %-10s\n", "grad, MLP 784-500-10, batch 60", tg_grad * 1e3,
              t_grad * 1e3, "ms");
#endif
  std::printf("%-40s %12.2f %12.2f  %-10s (lower is better)\n", "HVP / gradient, MLP, batch 60",
              tg_hvp / tg_grad, ratio_torch, "ratio");
}

}  // namespace

int main(int argc, char** argv) {
  bench::keep_freed_memory();
  bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  tg::set_num_threads(1);
#ifdef TG_BENCH_TORCH
  at::set_num_threads(1);
  at::set_num_interop_threads(1);
#endif
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  std::printf("tapegrad autograd benchmark, 1 thread; OPENBLAS_CORETYPE=%s\n",
              coretype ? coretype : "(unset)");
  std::printf("%-40s %12s %12s  %-10s %7s\n", "figure", "tapegrad", "libtorch", "unit", "ours is");
  overhead(1);
  overhead(16);
  std::vector<Workload> workloads = {{"logistic 784-1", {784, 1}},
                                     {"MLP 784-500-10", {784, 500, 10}},
                                     {"deep 784-1000x3-10", {784, 1000, 1000, 1000, 10}}};
  for (const auto& w : workloads)
    for (int64_t batch : {1, 10, 60}) {
      if (quick && batch != 10) continue;
      training(w, batch);
    }
  hessian_vector(60);
  return 0;
}
