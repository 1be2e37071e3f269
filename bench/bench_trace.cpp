// Traced replay against eager tapegrad and LibTorch, one thread, in one process: whole training
// steps (forward, backward, SGD) of the slides' models at batch 1, 10 and 60, and an
// elementwise-heavy block (GELU then LayerNorm over 1M elements). Also the compile time of each
// trace (its first call) and the peak memory of a training step, traced and eager.
// Run: scripts/tg bench (or build/release/bench/bench_trace [--quick])
#include <tapegrad/tapegrad.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <string>

#include "harness.h"

#ifdef TG_BENCH_TORCH
#include <ATen/Parallel.h>
#include <torch/torch.h>
#endif

namespace {

using bench::Clock;
using bench::measure;
namespace F = tg::nn::functional;

// A model as a list of layer widths: 784-500-10 is {784, 500, 10}; {784} alone is logistic
// regression (one output, binary cross-entropy).
struct Workload {
  const char* name;
  std::vector<int64_t> widths;
};

struct TgModel {
  std::vector<tg::Tensor> params;
  explicit TgModel(const std::vector<int64_t>& widths) {
    tg::manual_seed(0);
    if (widths.size() == 1) {
      params = {(tg::randn({widths[0]}) * 0.01).requires_grad_(), tg::zeros({}).requires_grad_()};
      return;
    }
    for (size_t i = 0; i + 1 < widths.size(); ++i) {
      double s = 1.0 / std::sqrt(static_cast<double>(widths[i]));
      params.push_back((tg::rand({widths[i], widths[i + 1]}) * (2 * s) - s).requires_grad_());
      params.push_back(tg::zeros({widths[i + 1]}).requires_grad_());
    }
  }
  // One SGD step; returns the loss.
  tg::Tensor step(const tg::Tensor& x, const tg::Tensor& y) {
    tg::Tensor loss;
    if (params.size() == 2 && params[0].dim() == 1) {
      tg::Tensor logits = x.matmul(params[0]) + params[1];
      loss = F::binary_cross_entropy_with_logits(logits, y) + 0.01 * (params[0] * params[0]).sum();
    } else {
      tg::Tensor h = x;
      for (size_t i = 0; i < params.size(); i += 2) {
        h = h.matmul(params[i]) + params[i + 1];
        if (i + 2 < params.size()) h = tg::tanh(h);
      }
      loss = F::cross_entropy(h, y);
    }
    auto grads = tg::grad({loss}, params);
    tg::NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) params[i].sub_(grads[i] * 0.01);
    return loss;
  }
};

#ifdef TG_BENCH_TORCH
struct TorchModel {
  std::vector<torch::Tensor> params;
  explicit TorchModel(const std::vector<int64_t>& widths) {
    torch::manual_seed(0);
    if (widths.size() == 1) {
      params = {(torch::randn({widths[0]}) * 0.01).requires_grad_(), torch::zeros({}).requires_grad_()};
      return;
    }
    for (size_t i = 0; i + 1 < widths.size(); ++i) {
      double s = 1.0 / std::sqrt(static_cast<double>(widths[i]));
      params.push_back((torch::rand({widths[i], widths[i + 1]}) * (2 * s) - s).requires_grad_());
      params.push_back(torch::zeros({widths[i + 1]}).requires_grad_());
    }
  }
  torch::Tensor step(const torch::Tensor& x, const torch::Tensor& y) {
    torch::Tensor loss;
    if (params.size() == 2 && params[0].dim() == 1) {
      torch::Tensor logits = x.matmul(params[0]) + params[1];
      loss = torch::nn::functional::binary_cross_entropy_with_logits(logits, y) +
             0.01 * (params[0] * params[0]).sum();
    } else {
      torch::Tensor h = x;
      for (size_t i = 0; i < params.size(); i += 2) {
        h = h.matmul(params[i]) + params[i + 1];
        if (i + 2 < params.size()) h = torch::tanh(h);
      }
      loss = torch::nn::functional::cross_entropy(h, y);
    }
    auto grads = torch::autograd::grad({loss}, params);
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) params[i].sub_(grads[i] * 0.01);
    return loss;
  }
};
#endif

void print_row(const std::string& name, double torch_s, double eager_s, double traced_s,
               double compile_s) {
  auto rate = [](double s) { return s > 0 ? 1 / s : 0.0; };
  std::printf("%-34s %11.0f %11.0f %11.0f %8.2fx %8.2fx %9.1f\n", name.c_str(), rate(torch_s),
              rate(eager_s), rate(traced_s), torch_s > 0 ? torch_s / traced_s : 0.0,
              eager_s / traced_s, compile_s * 1e3);
}

void training_steps(bool quick) {
  std::printf("\nWhole training steps (forward, backward, SGD), steps/s, 1 thread (higher is better)\n");
  std::printf("%-34s %11s %11s %11s %9s %9s %9s\n", "workload", "libtorch", "eager", "traced",
              "vs torch", "vs eager", "compile ms");
  std::vector<Workload> loads = {{"logistic regression 784", {784}},
                                 {"MLP 784-500-10", {784, 500, 10}},
                                 {"deep MLP 784-3x1000-10", {784, 1000, 1000, 1000, 10}}};
  double seconds = quick ? 0.05 : 0.2;
  for (const auto& load : loads) {
    for (int64_t batch : {1, 10, 60}) {
      tg::manual_seed(1);
      tg::Tensor x = tg::randn({batch, 784});
      tg::Tensor y = load.widths.size() == 1 ? tg::randint(0, 2, {batch}).to(tg::kF32)
                                             : tg::randint(0, 10, {batch});
      TgModel eager(load.widths), traced_model(load.widths);
      double eager_s = measure([&] { eager.step(x, y); }, seconds);
      auto step = tg::trace([&](const tg::Tensor& a, const tg::Tensor& b) {
        return traced_model.step(a, b);
      });
      auto t0 = Clock::now();
      step(x, y);
      double compile_s = std::chrono::duration<double>(Clock::now() - t0).count();
      double traced_s = measure([&] { step(x, y); }, seconds);
      double torch_s = 0;
#ifdef TG_BENCH_TORCH
      torch::Tensor tx = torch::randn({batch, 784});
      torch::Tensor ty = load.widths.size() == 1 ? torch::randint(0, 2, {batch}).to(torch::kFloat)
                                                 : torch::randint(0, 10, {batch});
      TorchModel tm(load.widths);
      torch_s = measure([&] { tm.step(tx, ty); }, seconds);
#endif
      print_row(std::string(load.name) + ", batch " + std::to_string(batch), torch_s, eager_s,
                traced_s, compile_s);
    }
  }
}

void elementwise_block(bool quick) {
  std::printf("\nElementwise-heavy blocks over 1000x1000, calls/s, 1 thread\n");
  std::printf("%-34s %11s %11s %11s %9s %9s %9s\n", "workload", "libtorch", "eager", "traced",
              "vs torch", "vs eager", "compile ms");
  double seconds = quick ? 0.1 : 0.4;
  tg::manual_seed(2);
  tg::Tensor x = tg::randn({1000, 1000}), a = tg::randn({1000}), b = tg::randn({1000});
  tg::Tensor g = tg::ones({1000}), beta = tg::zeros({1000});
  auto block = [&](const tg::Tensor& in) {
    return F::layer_norm(tg::gelu(in * a + b), {1000}, g, beta);
  };
  double eager_s = measure([&] { block(x); }, seconds);
  auto traced = tg::trace(block);
  auto t0 = Clock::now();
  traced(x);
  double compile_s = std::chrono::duration<double>(Clock::now() - t0).count();
  double traced_s = measure([&] { traced(x); }, seconds);
  double torch_s = 0;
#ifdef TG_BENCH_TORCH
  torch::Tensor tx = torch::randn({1000, 1000}), ta = torch::randn({1000}), tb = torch::randn({1000});
  torch::Tensor tgm = torch::ones({1000}), tbeta = torch::zeros({1000});
  torch_s = measure([&] {
    torch::layer_norm(torch::gelu(tx * ta + tb), {1000}, tgm, tbeta);
  }, seconds);
#endif
  print_row("GELU + LayerNorm, 1M elements", torch_s, eager_s, traced_s, compile_s);
  auto unfused = tg::trace(block, {.disable = {"fuse"}});
  unfused(x);
  print_row("  the same traced without fusion", torch_s, eager_s,
            measure([&] { unfused(x); }, seconds), 0);

  // An optimizer-style update of 1M parameters: five elementwise ops, one pass when fused.
  tg::Tensor p = tg::randn({1000, 1000}), m = tg::zeros({1000, 1000}), grad = tg::randn({1000, 1000});
  auto update = [&](const tg::Tensor& gr) {
    m.mul_(0.9).add_(gr + p * 1e-4);
    p.sub_(m * 1e-3);
    return std::vector<tg::Tensor>{};
  };
  double upd_eager = measure([&] { update(grad); }, seconds);
  auto upd = tg::trace(update);
  t0 = Clock::now();
  upd(grad);
  double upd_compile = std::chrono::duration<double>(Clock::now() - t0).count();
  double upd_traced = measure([&] { upd(grad); }, seconds);
  double upd_torch = 0;
#ifdef TG_BENCH_TORCH
  torch::Tensor tp = torch::randn({1000, 1000}), tm = torch::zeros({1000, 1000});
  torch::Tensor tgr = torch::randn({1000, 1000});
  upd_torch = measure([&] {
    tm.mul_(0.9).add_(tgr + tp * 1e-4);
    tp.sub_(tm * 1e-3);
  }, seconds);
#endif
  print_row("momentum update, 1M parameters", upd_torch, upd_eager, upd_traced, upd_compile);
}

void peak_memory() {
  std::printf("\nPeak tensor memory of one training step, deep MLP 784-3x1000-10, batch 60\n");
  tg::manual_seed(1);
  tg::Tensor x = tg::randn({60, 784}), y = tg::randint(0, 10, {60});
  TgModel eager({784, 1000, 1000, 1000, 10}), traced_model({784, 1000, 1000, 1000, 10});
  eager.step(x, y);
  tg::reset_peak_memory();
  int64_t before = tg::memory_stats().allocated;
  eager.step(x, y);
  int64_t eager_peak = tg::memory_stats().peak - before;
  // The traced step's footprint counts its arena, which stays allocated between calls.
  before = tg::memory_stats().allocated;
  auto step = tg::trace([&](const tg::Tensor& a, const tg::Tensor& b) { return traced_model.step(a, b); });
  step(x, y);
  tg::reset_peak_memory();
  step(x, y);
  int64_t traced_peak = tg::memory_stats().peak - before;
  std::printf("  eager  %8.2f MB (temporaries of one step)\n", eager_peak / 1e6);
  std::printf("  traced %8.2f MB (its arena, kept between calls, and the step's outputs)\n",
              traced_peak / 1e6);
}

}  // namespace

int main(int argc, char** argv) {
  bench::keep_freed_memory();
  // bench_trace [--quick] [training] [elementwise] [memory]: the sections named, or all.
  bool quick = false;
  std::vector<std::string> only;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") quick = true;
    else only.push_back(a);
  }
  auto run = [&](const char* name) {
    return only.empty() || std::find(only.begin(), only.end(), name) != only.end();
  };
  tg::set_num_threads(1);
#ifdef TG_BENCH_TORCH
  at::set_num_threads(1);
#endif
  if (run("training")) training_steps(quick);
  if (run("elementwise")) elementwise_block(quick);
  if (run("memory")) peak_memory();
}
