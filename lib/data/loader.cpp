// Datasets and the DataLoader: batching, seeded shuffling per epoch, drop_last.
#include <random>

#include "core/check.h"
#include "tapegrad/data.h"
#include "tapegrad/format.h"
#include "tapegrad/ops.h"

namespace tg::data {

Example Dataset::get_batch(const std::vector<int64_t>& indices) const {
  std::vector<Tensor> xs, ys;
  for (int64_t i : indices) {
    Example e = get(i);
    xs.push_back(e.data);
    ys.push_back(e.target);
  }
  return {stack(xs), stack(ys)};
}

TensorDataset::TensorDataset(Tensor d, Tensor t, Loc loc) : data(std::move(d)), targets(std::move(t)) {
  OpScope scope("TensorDataset", loc);
  TG_CHECK(data.defined() && targets.defined() && data.dim() >= 1 && targets.dim() >= 1,
           "TensorDataset: data and targets must be defined with a leading dim");
  TG_CHECK(data.size(0) == targets.size(0),
           "TensorDataset: data has {} rows (shape {}) but targets have {} (shape {})", data.size(0),
           data.shape(), targets.size(0), targets.shape());
}
int64_t TensorDataset::size() const { return data.size(0); }
Example TensorDataset::get(int64_t i) const {
  TG_CHECK(i >= 0 && i < size(), "TensorDataset: index {} is out of range for {} examples", i, size());
  return {data.select(0, i), targets.select(0, i)};
}
Example TensorDataset::get_batch(const std::vector<int64_t>& indices) const {
  Tensor idx = tensor(indices, {.dtype = kI64});
  return {data.index_select(0, idx), targets.index_select(0, idx)};
}

namespace {
TensorDataset mnist_format(const std::string& root, Split split, const char* name) {
  std::string prefix = root + "/" + (split == Split::Train ? "train" : "t10k");
  auto pick = [](const std::string& base) {
    std::string gz = base + ".gz";
    FILE* f = std::fopen(gz.c_str(), "rb");
    if (f) std::fclose(f);
    return f ? gz : base;
  };
  Tensor images = read_idx(pick(prefix + "-images-idx3-ubyte"));
  Tensor labels = read_idx(pick(prefix + "-labels-idx1-ubyte"));
  TG_CHECK(images.dim() == 3 && labels.dim() == 1 && images.size(0) == labels.size(0),
           "{}: expected images (N, H, W) and labels (N) in '{}', got {} and {}", name, root,
           images.shape(), labels.shape());
  Tensor x = (images.to(kF32) / 255.0).unsqueeze(1);
  return TensorDataset(x, labels.to(kI64));
}
}  // namespace

TensorDataset MNIST(const std::string& root, Split split, Loc loc) {
  OpScope scope("MNIST", loc);
  return mnist_format(root, split, "MNIST");
}
TensorDataset FashionMNIST(const std::string& root, Split split, Loc loc) {
  OpScope scope("FashionMNIST", loc);
  return mnist_format(root, split, "FashionMNIST");
}

DataLoader::DataLoader(const Dataset& dataset, DataLoaderOptions options, Loc loc)
    : dataset_(dataset), options_(options) {
  OpScope scope("DataLoader", loc);
  TG_CHECK(options.batch_size > 0, "DataLoader: batch_size must be positive, got {}",
           options.batch_size);
}

int64_t DataLoader::size() const {
  int64_t n = dataset_.size(), b = options_.batch_size;
  return options_.drop_last ? n / b : (n + b - 1) / b;
}

DataLoader::iterator DataLoader::begin() {
  int64_t n = dataset_.size();
  order_.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order_[static_cast<size_t>(i)] = i;
  if (options_.shuffle) {
    // Fisher-Yates over a fully specified generator: the same order on every platform.
    std::mt19937_64 rng(options_.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(epoch_));
    for (int64_t i = n - 1; i > 0; --i)
      std::swap(order_[static_cast<size_t>(i)], order_[rng() % static_cast<uint64_t>(i + 1)]);
  }
  ++epoch_;
  return iterator(this, 0);
}

DataLoader::iterator DataLoader::end() { return iterator(this, size()); }

DataLoader::iterator::iterator(const DataLoader* loader, int64_t batch)
    : loader_(loader), batch_(batch) {
  if (batch_ < loader_->size()) load();
}

void DataLoader::iterator::load() {
  int64_t b = loader_->options_.batch_size, n = loader_->dataset_.size();
  int64_t lo = batch_ * b, hi = std::min(lo + b, n);
  std::vector<int64_t> idx(loader_->order_.begin() + lo, loader_->order_.begin() + hi);
  current_ = loader_->dataset_.get_batch(idx);
}

DataLoader::iterator& DataLoader::iterator::operator++() {
  ++batch_;
  if (batch_ < loader_->size()) load();
  return *this;
}

}  // namespace tg::data
