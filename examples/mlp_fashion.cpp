// A 784-256-10 MLP on Fashion-MNIST with Adam, with a progress bar: the README's main demo.
// The data comes from Debian's dataset-fashion-mnist; without it the demo trains on the digits set.
// Run: build/release/examples/mlp_fashion [epochs] [data dir] [--cuda]
// (--cuda: the model, the batches and the updates on the GPU)
#include <tapegrad/tapegrad.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string_view>
#include <vector>

using namespace tg;
namespace F = tg::nn::functional;

int main(int argc, char** argv) try {
  Device device = kCPU;
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i)
    if (std::string_view(argv[i]) == "--cuda")
      device = cuda();
    else
      args.emplace_back(argv[i]);
  int epochs = args.size() > 0 ? std::atoi(args[0].c_str()) : 3;
  std::string root = args.size() > 1 ? args[1] : "/usr/share/datasets/fashion-mnist";
  if (!std::filesystem::exists(root + "/train-images-idx3-ubyte.gz") &&
      !std::filesystem::exists(root + "/train-images-idx3-ubyte")) {
    std::printf("Fashion-MNIST is not in %s (apt-get install dataset-fashion-mnist); "
                "see examples/digits for the same stack on the vendored digits set\n", root.c_str());
    return 3;
  }
  manual_seed(0);
  auto train = data::FashionMNIST(root, data::Split::Train);
  auto test = data::FashionMNIST(root, data::Split::Test);
  nn::Sequential model{nn::Flatten(), nn::Linear(784, 256), nn::ReLU(), nn::Linear(256, 10)};
  std::printf("%s\n", model.summary(train.data.slice(0, 0, 64).to(device)).c_str());
  model.to(device);  // before the optimizer takes its parameters
  optim::Adam opt(model.parameters(), {.lr = 1e-3});
  data::DataLoader loader(train, {.batch_size = 64, .shuffle = true, .seed = 1});
  for (int epoch = 1; epoch <= epochs; ++epoch) {
    data::Metrics m;
    data::ProgressBar bar(loader.size(), fmt::format("epoch {}/{}", epoch, epochs));
    model.train();
    for (auto& [xb, yb] : loader) {
      Tensor x = xb.to(device), y = yb.to(device);
      Tensor logits = model(x);
      Tensor loss = F::cross_entropy(logits, y);
      opt.zero_grad();
      loss.backward();
      opt.step();
      m.add(loss, logits, y);
      bar.set_postfix(m.str());
      bar.update();
    }
    bar.close();
    NoGradGuard no_grad;
    model.eval();
    double acc = double(data::count_correct(model(test.data.to(device)), test.targets.to(device))) /
                 double(test.size());
    std::printf("epoch %d: test accuracy %.2f%%\n", epoch, 100 * acc);
    if (epoch == epochs) return acc >= 0.85 ? 0 : 1;
  }
  return 0;
} catch (const tg::Error& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 2;
}
