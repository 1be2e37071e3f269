// Deploying a model, part 1: trains the Fashion-MNIST MLP with a traced training step, traces
// its inference over the test set and saves that graph, weights included, to one file. Part 2
// (classify.cpp) loads the file with none of this code and gets the same predictions.
// Run: build/release/examples/deploy_train [model.tgt] [epochs] [data dir or digits.csv.gz]
#include <cstdio>
#include <cstdlib>

#include "dataset.h"

using namespace tg;
namespace F = tg::nn::functional;

int main(int argc, char** argv) try {
  std::string out = argc > 1 ? argv[1] : "fashion_mlp.tgt";
  int epochs = argc > 2 ? std::atoi(argv[2]) : 2;
  std::string source = argc > 3 ? argv[3] : "/usr/share/datasets/fashion-mnist";
  DeployData d = load_deploy_data(source);
  int64_t features = d.train.data.numel() / d.train.data.size(0);
  manual_seed(1);
  nn::Sequential model{nn::Flatten(), nn::Linear(features, 256), nn::ReLU(), nn::Linear(256, 10)};
  optim::Adam opt(model.parameters(), {.lr = 1e-3});
  auto step = trace([&](const Tensor& x, const Tensor& y) {
    opt.zero_grad();
    Tensor loss = F::cross_entropy(model(x), y);
    loss.backward();
    opt.step();
    return loss;
  });
  data::DataLoader loader(d.train, {.batch_size = 64, .shuffle = true, .seed = 1});
  for (int epoch = 1; epoch <= epochs; ++epoch) {
    double total = 0;
    int64_t batches = 0;
    for (auto& [x, y] : loader) {
      total += step(x, y).item<double>();
      ++batches;
    }
    std::printf("epoch %d: mean loss %.4f (%lld traced signatures)\n", epoch,
                total / static_cast<double>(batches), static_cast<long long>(step.num_compiles()));
  }
  model.eval();
  auto classify = trace([&](const Tensor& x) { return model(x); });
  int64_t correct = data::count_correct(classify(d.test.data), d.test.targets);
  classify.save(out);
  std::printf("saved %s: %lld nodes; test accuracy %.2f%%\ncorrect: %lld\n", out.c_str(),
              static_cast<long long>(classify.graph().num_nodes()),
              100.0 * static_cast<double>(correct) / static_cast<double>(d.test.size()),
              static_cast<long long>(correct));
  return 0;
} catch (const tg::Error& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 2;
}
