// Deploying a model, part 2: loads the graph deploy_train saved and classifies the test set. No
// model code here: the file holds the graph and its weights. With an expected count of correct
// answers (what deploy_train printed), exits with status 1 when the result differs.
// Run: build/release/examples/deploy_classify [model.tgt] [data dir or digits.csv.gz] [expected]
#include <cstdio>
#include <cstdlib>

#include "dataset.h"

int main(int argc, char** argv) try {
  std::string path = argc > 1 ? argv[1] : "fashion_mlp.tgt";
  std::string source = argc > 2 ? argv[2] : "/usr/share/datasets/fashion-mnist";
  tg::TracedFunction model = tg::load_traced(path);
  DeployData d = load_deploy_data(source);
  tg::Tensor logits = model(d.test.data).at(0);
  int64_t correct = tg::data::count_correct(logits, d.test.targets);
  std::printf("%s: test accuracy %.2f%% (%lld of %lld)\n", path.c_str(),
              100.0 * static_cast<double>(correct) / static_cast<double>(d.test.size()),
              static_cast<long long>(correct), static_cast<long long>(d.test.size()));
  if (argc > 3 && correct != std::atoll(argv[3])) {
    std::printf("expected %s correct answers\n", argv[3]);
    return 1;
  }
  return 0;
} catch (const tg::Error& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 2;
}
