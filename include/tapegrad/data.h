// tg::data: datasets, a batching DataLoader, readers for IDX (the MNIST format) and CSV files
// (either gzipped or plain), a progress bar and running metrics for training loops.
//
//   auto train = data::FashionMNIST("/usr/share/datasets/fashion-mnist", data::Split::Train);
//   data::DataLoader loader(train, {.batch_size = 64, .shuffle = true, .seed = 1});
//   for (auto& [x, y] : loader) { ... }   // x (64, 1, 28, 28) f32 in [0, 1], y (64) i64
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tapegrad/tensor.h"

namespace tg::data {

struct Example {
  Tensor data;
  Tensor target;
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  virtual Example get(int64_t index) const = 0;
  // Examples `indices`, stacked along a new dim 0. The default stacks get(i).
  virtual Example get_batch(const std::vector<int64_t>& indices) const;
};

// Rows of `data` and `targets` (same leading size): batches are index_select's, no copies per row.
class TensorDataset : public Dataset {
 public:
  TensorDataset(Tensor data, Tensor targets, Loc loc = Loc::current());
  int64_t size() const override;
  Example get(int64_t index) const override;
  Example get_batch(const std::vector<int64_t>& indices) const override;
  Tensor data, targets;
};

enum class Split { Train, Test };

// MNIST-format image sets from a directory with {train,t10k}-{images-idx3,labels-idx1}-ubyte
// (each optionally .gz): images (N, 1, 28, 28) f32 scaled to [0, 1], labels i64.
TensorDataset MNIST(const std::string& root, Split split = Split::Train, Loc loc = Loc::current());
TensorDataset FashionMNIST(const std::string& root, Split split = Split::Train,
                           Loc loc = Loc::current());

struct DataLoaderOptions {
  int64_t batch_size = 1;
  bool shuffle = false;
  bool drop_last = false;  // drop the last batch when it is short
  uint64_t seed = 0;       // shuffling: epoch e uses permutation (seed, e), the same on every run
};

// Iterates a dataset in batches; every begin() starts an epoch (reshuffled when shuffle is set).
// The dataset must outlive the loader.
class DataLoader {
 public:
  DataLoader(const Dataset& dataset, DataLoaderOptions options = {}, Loc loc = Loc::current());
  int64_t size() const;  // batches per epoch

  class iterator {
   public:
    using value_type = Example;
    Example& operator*() { return current_; }
    Example* operator->() { return &current_; }
    iterator& operator++();
    bool operator!=(const iterator& other) const { return batch_ != other.batch_; }
    bool operator==(const iterator& other) const { return batch_ == other.batch_; }

   private:
    friend class DataLoader;
    iterator(const DataLoader* loader, int64_t batch);
    void load();
    const DataLoader* loader_;
    int64_t batch_;
    Example current_;
  };
  iterator begin();
  iterator end();

 private:
  const Dataset& dataset_;
  DataLoaderOptions options_;
  std::vector<int64_t> order_;
  int64_t epoch_ = 0;
};

// --- file readers --------------------------------------------------------------------------------

// An IDX file (gzipped or not): the magic's element type and dims give the shape; unsigned bytes
// load as i32, i8/i16/i32 as i32, f32 and f64 as themselves.
Tensor read_idx(const std::string& path, Loc loc = Loc::current());

struct CsvOptions {
  char delimiter = ',';
  bool header = false;  // the first line names the columns
  DType dtype = kF32;   // of the values (kF32, kF64, kI32 or kI64)
};
struct Csv {
  std::vector<std::string> columns;  // from the header, else empty
  Tensor values;                     // (rows, columns)
};
// A numeric CSV file (gzipped or not); every row must have the same number of fields.
Csv read_csv(const std::string& path, CsvOptions options = {}, Loc loc = Loc::current());

// --- training-loop helpers -------------------------------------------------------------------------

// A tqdm-style bar (count, rate, ETA, a postfix) redrawn in place when stdout is a terminal;
// otherwise a plain line every `plain_every` seconds and at the end.
class ProgressBar {
 public:
  explicit ProgressBar(int64_t total, std::string description = "", double plain_every = 5.0);
  ~ProgressBar();
  void update(int64_t n = 1);
  void set_postfix(std::string postfix);
  void close();  // final line; called by the destructor if needed

 private:
  void draw(bool final);
  int64_t total_, done_ = 0;
  std::string description_, postfix_;
  double plain_every_;
  bool tty_, closed_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

// Running loss and accuracy over an epoch.
class Metrics {
 public:
  // Adds a batch: its mean loss, and (when given) logits (N, C) with class targets (N).
  void add(const Tensor& loss, const Tensor& logits = {}, const Tensor& targets = {});
  double loss() const { return count_ ? loss_sum_ / static_cast<double>(count_) : 0; }
  double accuracy() const {
    return seen_ ? static_cast<double>(correct_) / static_cast<double>(seen_) : 0;
  }
  int64_t count() const { return count_; }
  std::string str() const;  // "loss 0.4123  acc 85.32%"
  void reset() { *this = Metrics(); }

 private:
  double loss_sum_ = 0;
  int64_t count_ = 0, correct_ = 0, seen_ = 0;
};

// The number of correct predictions of logits (N, C) for class targets (N).
int64_t count_correct(const Tensor& logits, const Tensor& targets);

}  // namespace tg::data
