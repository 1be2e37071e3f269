// An MLP on the scikit-learn digits set (1797 8x8 images, vendored in tests/data/): the whole
// stack in a few seconds (CSV reader, DataLoader, nn, Adam, metrics). It runs in the test suite
// and exits with status 1 when the test accuracy is under 95%.
// Run: build/release/examples/digits [path/to/digits.csv.gz] [epochs] [--cuda] [--trace]
// (--cuda: the model, the batches and the updates on the GPU; --trace: the training step traced
// once and replayed, taking the batches where the loader made them, on the CPU: on a GPU each
// step is then one CUDA graph launch)
#include <tapegrad/tapegrad.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

using namespace tg;
namespace F = tg::nn::functional;

#ifndef TAPEGRAD_DIGITS
#define TAPEGRAD_DIGITS "tests/data/digits.csv.gz"
#endif

int main(int argc, char** argv) try {
  Device device = kCPU;
  bool traced = false;
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i)
    if (std::string_view(argv[i]) == "--cuda")
      device = cuda();
    else if (std::string_view(argv[i]) == "--trace")
      traced = true;
    else
      args.emplace_back(argv[i]);
  std::string path = args.size() > 0 ? args[0] : TAPEGRAD_DIGITS;
  int epochs = args.size() > 1 ? std::atoi(args[1].c_str()) : 40;
  manual_seed(0);
  Tensor all = data::read_csv(path).values;
  all = all.index_select(0, randperm(all.size(0)));  // a fixed shuffle, then 80% / 20%
  int64_t n_train = all.size(0) * 8 / 10;
  auto split = [&](int64_t lo, int64_t hi) {
    Tensor part = all.slice(0, lo, hi);
    return data::TensorDataset(part.slice(1, 0, 64) / 16.0, part.select(1, 64).to(kI64));
  };
  data::TensorDataset train = split(0, n_train), test = split(n_train, all.size(0));

  nn::Sequential model{nn::Linear(64, 128), nn::ReLU(), nn::Linear(128, 10)};
  model.to(device);  // before the optimizer takes its parameters
  optim::Adam opt(model.parameters(), {.lr = 3e-3});
  data::DataLoader loader(train, {.batch_size = 32, .shuffle = true, .seed = 1});
  std::printf("digits: %lld training and %lld test images on %s%s, model %s\n",
              static_cast<long long>(train.size()), static_cast<long long>(test.size()),
              device.str().c_str(), traced ? ", step traced" : "", model.str().c_str());
  // One step: the batch moved to the device, forward, backward, the update; the loss and the
  // logits back for the metrics.
  auto step = [&](const Tensor& xb, const Tensor& yb) {
    Tensor logits = model(xb.to(device));
    Tensor loss = F::cross_entropy(logits, yb.to(device));
    opt.zero_grad();
    loss.backward();
    opt.step();
    return std::vector<Tensor>{loss, logits};
  };
  auto replayed = trace(step);  // traced at its first call of each batch shape
  for (int epoch = 1; epoch <= epochs; ++epoch) {
    data::Metrics m;
    for (auto& [xb, yb] : loader) {
      std::vector<Tensor> out = traced ? replayed(xb, yb) : step(xb, yb);
      m.add(out[0], out[1], yb.to(device));
    }
    if (epoch % 10 == 0 || epoch == 1) std::printf("epoch %2d  train %s\n", epoch, m.str().c_str());
  }
  if (traced) {
    const std::string summary = replayed.pass_summary();
    const size_t at = summary.find("replay:");
    if (at != std::string::npos)
      std::printf("%s\n", summary.substr(at, summary.find('\n', at) - at).c_str());
  }
  NoGradGuard no_grad;
  model.eval();
  double acc = double(data::count_correct(model(test.data.to(device)), test.targets.to(device))) /
               double(test.size());
  std::printf("test accuracy %.2f%% (target 95%%)\n", 100 * acc);
  return acc >= 0.95 ? 0 : 1;
} catch (const tg::Error& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 2;
}
