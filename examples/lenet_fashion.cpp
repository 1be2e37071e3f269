// LeNet-5 (the Caffe LeNet of the slides: two 5x5 convolutions with max pooling, three fully
// connected layers) on Fashion-MNIST with Adam.
// Run: build/release/examples/lenet_fashion [epochs] [data dir] [--cuda]
// (--cuda: the model, the batches and the updates on the GPU)
#include <tapegrad/tapegrad.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string_view>
#include <vector>

using namespace tg;
namespace F = tg::nn::functional;

// A custom module: a struct that registers its parts.
struct LeNet : nn::Module {
  nn::Sequential features{nn::Conv2d(1, 6, 5, {.padding = 2}), nn::ReLU(), nn::MaxPool2d(2),
                          nn::Conv2d(6, 16, 5), nn::ReLU(), nn::MaxPool2d(2)};
  nn::Sequential classifier{nn::Flatten(), nn::Linear(16 * 5 * 5, 120), nn::ReLU(),
                            nn::Linear(120, 84), nn::ReLU(), nn::Linear(84, 10)};
  LeNet() {
    register_module("features", features);
    register_module("classifier", classifier);
  }
  Tensor forward(const Tensor& x) override { return classifier(features(x)); }
};

int main(int argc, char** argv) try {
  Device device = kCPU;
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i)
    if (std::string_view(argv[i]) == "--cuda")
      device = cuda();
    else
      args.emplace_back(argv[i]);
  int epochs = args.size() > 0 ? std::atoi(args[0].c_str()) : 5;
  std::string root = args.size() > 1 ? args[1] : "/usr/share/datasets/fashion-mnist";
  if (!std::filesystem::exists(root + "/train-images-idx3-ubyte.gz") &&
      !std::filesystem::exists(root + "/train-images-idx3-ubyte")) {
    std::printf("Fashion-MNIST is not in %s (apt-get install dataset-fashion-mnist)\n", root.c_str());
    return 3;
  }
  manual_seed(0);
  auto train = data::FashionMNIST(root, data::Split::Train);
  auto test = data::FashionMNIST(root, data::Split::Test);
  LeNet model;
  model.to(device);  // before the optimizer takes its parameters
  std::printf("%s\n", model.summary(train.data.slice(0, 0, 64).to(device)).c_str());
  optim::Adam opt(model.parameters(), {.lr = 2e-3});
  optim::StepLR schedule(opt, 2, 0.5);
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
    schedule.step();
    NoGradGuard no_grad;
    model.eval();
    int64_t correct = 0;
    for (int64_t i = 0; i < test.size(); i += 1000)
      correct += data::count_correct(model(test.data.slice(0, i, i + 1000).to(device)),
                                     test.targets.slice(0, i, i + 1000).to(device));
    double acc = double(correct) / double(test.size());
    std::printf("epoch %d: test accuracy %.2f%%\n", epoch, 100 * acc);
    if (epoch == epochs) return acc >= 0.88 ? 0 : 1;
  }
  return 0;
} catch (const tg::Error& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 2;
}
