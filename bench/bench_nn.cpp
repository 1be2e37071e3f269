// Training throughput (examples/s) of the nn examples' models at batch 64 with Adam: the MLP of
// mlp_fashion (784-256-10) and the LeNet-5 of lenet_fashion, tapegrad's nn + optim beside
// LibTorch's torch::nn + torch::optim in one process, on 1 and 2 threads. Inputs are a fixed
// random batch (the data pipeline is not timed). Run: scripts/tg bench (or
// build/release/bench/bench_nn [--quick])
#include <tapegrad/tapegrad.h>

#include <cstdio>
#include <string>

#include "harness.h"

#ifdef TG_BENCH_TORCH
#include <ATen/Parallel.h>
#include <torch/torch.h>
#endif

namespace {

using bench::measure;
using bench::row;
constexpr int64_t kBatch = 64;

struct LeNet : tg::nn::Module {
  tg::nn::Sequential features{tg::nn::Conv2d(1, 6, 5, {.padding = 2}), tg::nn::ReLU(), tg::nn::MaxPool2d(2),
                              tg::nn::Conv2d(6, 16, 5), tg::nn::ReLU(), tg::nn::MaxPool2d(2)};
  tg::nn::Sequential classifier{tg::nn::Flatten(), tg::nn::Linear(400, 120), tg::nn::ReLU(),
                                tg::nn::Linear(120, 84), tg::nn::ReLU(), tg::nn::Linear(84, 10)};
  LeNet() {
    register_module("features", features);
    register_module("classifier", classifier);
  }
  tg::Tensor forward(const tg::Tensor& x) override { return classifier(features(x)); }
};

template <class Model>
double tg_step_seconds(Model& model) {
  tg::manual_seed(0);
  tg::Tensor x = tg::rand({kBatch, 1, 28, 28}), y = tg::randint(0, 10, {kBatch});
  tg::optim::Adam opt(model.parameters(), {.lr = 1e-3});
  return measure([&] {
    tg::Tensor loss = tg::nn::functional::cross_entropy(model(x), y);
    opt.zero_grad();
    loss.backward();
    opt.step();
  }, 0.3);
}

#ifdef TG_BENCH_TORCH
struct TorchLeNet : torch::nn::Module {
  torch::nn::Sequential features{torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 6, 5).padding(2)), torch::nn::ReLU(),
                                 torch::nn::MaxPool2d(2), torch::nn::Conv2d(6, 16, 5), torch::nn::ReLU(),
                                 torch::nn::MaxPool2d(2)};
  torch::nn::Sequential classifier{torch::nn::Flatten(), torch::nn::Linear(400, 120), torch::nn::ReLU(),
                                   torch::nn::Linear(120, 84), torch::nn::ReLU(), torch::nn::Linear(84, 10)};
  TorchLeNet() {
    register_module("features", features);
    register_module("classifier", classifier);
  }
  torch::Tensor forward(const torch::Tensor& x) { return classifier->forward(features->forward(x)); }
};

template <class Model>
double torch_step_seconds(Model& model) {
  torch::manual_seed(0);
  torch::Tensor x = torch::rand({kBatch, 1, 28, 28}), y = torch::randint(0, 10, {kBatch});
  torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(1e-3));
  return measure([&] {
    torch::Tensor loss = torch::nn::functional::cross_entropy(model->forward(x), y);
    opt.zero_grad();
    loss.backward();
    opt.step();
  }, 0.3);
}
#endif

void run(int threads) {
  tg::set_num_threads(threads);
#ifdef TG_BENCH_TORCH
  at::set_num_threads(threads);
#endif
  char name[80];
  {
    tg::nn::Sequential mlp{tg::nn::Flatten(), tg::nn::Linear(784, 256), tg::nn::ReLU(), tg::nn::Linear(256, 10)};
    double ours = tg_step_seconds(mlp), theirs = 0;
#ifdef TG_BENCH_TORCH
    auto tmlp = torch::nn::Sequential(torch::nn::Flatten(), torch::nn::Linear(784, 256), torch::nn::ReLU(),
                                      torch::nn::Linear(256, 10));
    theirs = torch_step_seconds(tmlp);
#endif
    std::snprintf(name, sizeof name, "MLP 784-256-10, Adam, %d thread%s", threads, threads > 1 ? "s" : "");
    row(name, kBatch / ours, theirs > 0 ? kBatch / theirs : 0, "ex/s", false);
  }
  {
    LeNet lenet;
    double ours = tg_step_seconds(lenet), theirs = 0;
#ifdef TG_BENCH_TORCH
    auto tlenet = std::make_shared<TorchLeNet>();
    theirs = torch_step_seconds(tlenet);
#endif
    std::snprintf(name, sizeof name, "LeNet-5, Adam, %d thread%s", threads, threads > 1 ? "s" : "");
    row(name, kBatch / ours, theirs > 0 ? kBatch / theirs : 0, "ex/s", false);
  }
}

}  // namespace

int main(int argc, char** argv) {
  bench::keep_freed_memory();
  bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  std::printf("Training throughput at batch %lld (higher is better)\n", static_cast<long long>(kBatch));
  std::printf("%-40s %12s %12s  %-10s %7s\n", "workload", "tapegrad", "libtorch", "unit", "ratio");
  run(1);
  if (!quick) run(2);
}
