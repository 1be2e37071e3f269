// The data both deploy programs read: Fashion-MNIST from a directory, or the vendored digits set
// when given a .csv.gz (the split is fixed by seed 0, so both programs see the same test set).
#pragma once

#include <tapegrad/tapegrad.h>

#include <string>

struct DeployData {
  tg::data::TensorDataset train, test;
};

inline DeployData load_deploy_data(const std::string& source) {
  using namespace tg;
  if (source.size() > 7 && source.substr(source.size() - 7) == ".csv.gz") {
    manual_seed(0);
    Tensor all = data::read_csv(source).values;
    all = all.index_select(0, randperm(all.size(0)));
    int64_t n_train = all.size(0) * 8 / 10;
    auto split = [&](int64_t lo, int64_t hi) {
      Tensor part = all.slice(0, lo, hi);
      return data::TensorDataset(part.slice(1, 0, 64) / 16.0, part.select(1, 64).to(kI64));
    };
    return {split(0, n_train), split(n_train, all.size(0))};
  }
  return {data::FashionMNIST(source, data::Split::Train), data::FashionMNIST(source, data::Split::Test)};
}
