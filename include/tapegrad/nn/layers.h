// The layers of tg::nn, with PyTorch's parameter names, shapes and initial distributions.
#pragma once

#include <initializer_list>
#include <optional>
#include <tuple>

#include "tapegrad/nn/module.h"

namespace tg::nn {

// Any module, held by its handle: what Sequential's initializer list is made of.
class AnyModule {
 public:
  template <class M>
    requires std::is_base_of_v<Module, std::decay_t<M>>
  AnyModule(M&& m)  // NOLINT: implicit, so `Sequential{Linear(2, 3), ReLU()}` works
      : ptr_(std::make_shared<std::decay_t<M>>(std::forward<M>(m))) {}
  const std::shared_ptr<Module>& ptr() const { return ptr_; }

 private:
  std::shared_ptr<Module> ptr_;
};

// Runs its modules in order; they are named "0", "1", ... as in PyTorch.
class Sequential : public Module {
 public:
  Sequential() = default;
  Sequential(std::initializer_list<AnyModule> modules);
  void push_back(AnyModule module);
  size_t size() const;
  Module& operator[](size_t i) const;
  Tensor forward(const Tensor& x) override;
};

class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true);
  Tensor forward(const Tensor& x) override;  // x·Wᵀ + b
  std::string extra_repr() const override;
  Tensor weight;  // (out, in)
  Tensor bias;    // (out), undefined without bias
};

struct Conv2dOptions {
  Size2 stride = 1, padding = 0, dilation = 1;
  int64_t groups = 1;
  bool bias = true;
};
class Conv2d : public Module {
 public:
  Conv2d(int64_t in_channels, int64_t out_channels, Size2 kernel_size, Conv2dOptions options = {});
  Tensor forward(const Tensor& x) override;
  std::string extra_repr() const override;
  Tensor weight;  // (out, in/groups, kh, kw)
  Tensor bias;
  Conv2dOptions options;
};

class MaxPool2d : public Module {
 public:
  MaxPool2d(Size2 kernel_size, std::optional<Size2> stride = std::nullopt, Size2 padding = 0,
            Size2 dilation = 1);
  Tensor forward(const Tensor& x) override;
  std::string extra_repr() const override;
  Size2 kernel_size, stride, padding, dilation;
};

class AvgPool2d : public Module {
 public:
  AvgPool2d(Size2 kernel_size, std::optional<Size2> stride = std::nullopt, Size2 padding = 0);
  Tensor forward(const Tensor& x) override;
  std::string extra_repr() const override;
  Size2 kernel_size, stride, padding;
};

class AdaptiveAvgPool2d : public Module {
 public:
  explicit AdaptiveAvgPool2d(Size2 output_size);
  Tensor forward(const Tensor& x) override;
  std::string extra_repr() const override;
  Size2 output_size;
};

class Flatten : public Module {
 public:
  explicit Flatten(int64_t start_dim = 1, int64_t end_dim = -1);
  Tensor forward(const Tensor& x) override;
  std::string extra_repr() const override;
  int64_t start_dim, end_dim;
};

// Zeroes each element with probability p while training and scales the rest by 1/(1-p).
class Dropout : public Module {
 public:
  explicit Dropout(double p = 0.5);
  Tensor forward(const Tensor& x) override;
  std::string extra_repr() const override;
  double p;
};

// Normalizes over the batch (and spatial) dims while training, updating running_mean and
// running_var (unbiased) with `momentum`; in eval mode uses them.
class BatchNorm : public Module {
 public:
  Tensor forward(const Tensor& x) override;
  std::string extra_repr() const override;
  Tensor weight, bias, running_mean, running_var, num_batches_tracked;
  double eps, momentum;

 protected:
  BatchNorm(int64_t num_features, double eps, double momentum, bool affine, int64_t input_dims_lo,
            int64_t input_dims_hi);
  int64_t dims_lo_, dims_hi_;
};
class BatchNorm1d : public BatchNorm {  // (N, C) or (N, C, L)
 public:
  explicit BatchNorm1d(int64_t num_features, double eps = 1e-5, double momentum = 0.1,
                       bool affine = true)
      : BatchNorm(num_features, eps, momentum, affine, 2, 3) {}
};
class BatchNorm2d : public BatchNorm {  // (N, C, H, W)
 public:
  explicit BatchNorm2d(int64_t num_features, double eps = 1e-5, double momentum = 0.1,
                       bool affine = true)
      : BatchNorm(num_features, eps, momentum, affine, 4, 4) {}
};

// Normalizes over the trailing dims `normalized_shape`.
class LayerNorm : public Module {
 public:
  explicit LayerNorm(Shape normalized_shape, double eps = 1e-5, bool elementwise_affine = true);
  Tensor forward(const Tensor& x) override;
  std::string extra_repr() const override;
  Tensor weight, bias;
  Shape normalized_shape;
  double eps;
};

// A lookup table: i64 indices of any shape give rows of `weight` (num_embeddings, dim).
class Embedding : public Module {
 public:
  Embedding(int64_t num_embeddings, int64_t embedding_dim);
  Tensor forward(const Tensor& indices) override;
  std::string extra_repr() const override;
  Tensor weight;
};

// --- activations ---------------------------------------------------------------------------------
#define TG_ACTIVATION(Name)                       \
  class Name : public Module {                    \
   public:                                        \
    Tensor forward(const Tensor& x) override;     \
  };
TG_ACTIVATION(ReLU)
TG_ACTIVATION(Tanh)
TG_ACTIVATION(Sigmoid)
TG_ACTIVATION(GELU)
#undef TG_ACTIVATION
class Softmax : public Module {
 public:
  explicit Softmax(int64_t dim) : dim(dim) {}
  Tensor forward(const Tensor& x) override;
  std::string extra_repr() const override;
  int64_t dim;
};
class LogSoftmax : public Module {
 public:
  explicit LogSoftmax(int64_t dim) : dim(dim) {}
  Tensor forward(const Tensor& x) override;
  std::string extra_repr() const override;
  int64_t dim;
};

// --- recurrent layers: PyTorch's names (weight_ih, weight_hh, bias_ih, bias_hh), gate order and
// initialization U(-1/√hidden, 1/√hidden). Inputs are (N, input) for cells; (T, N, input) for the
// sequence layers, or (N, T, input) with batch_first. -----------------------------------------------
class RNNCellBase : public Module {
 public:
  std::string extra_repr() const override;
  Tensor weight_ih, weight_hh, bias_ih, bias_hh;
  int64_t input_size, hidden_size;

 protected:
  RNNCellBase(int64_t input_size, int64_t hidden_size, bool bias, int64_t gates);
};

// h' = tanh(W_ih x + b_ih + W_hh h + b_hh) (or relu with nonlinearity "relu").
class RNNCell : public RNNCellBase {
 public:
  RNNCell(int64_t input_size, int64_t hidden_size, bool bias = true,
          std::string nonlinearity = "tanh");
  Tensor forward(const Tensor& x) override;  // with h = 0
  Tensor forward(const Tensor& x, const Tensor& h);
  std::string nonlinearity;
};

// Gates i, f, g, o. Returns (h', c').
class LSTMCell : public RNNCellBase {
 public:
  LSTMCell(int64_t input_size, int64_t hidden_size, bool bias = true);
  Tensor forward(const Tensor& x) override;  // h' with h = c = 0
  std::tuple<Tensor, Tensor> forward(const Tensor& x, const std::tuple<Tensor, Tensor>& hc);
};

// Gates r, z, n: n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)), h' = (1 - z) ⊙ n + z ⊙ h.
class GRUCell : public RNNCellBase {
 public:
  GRUCell(int64_t input_size, int64_t hidden_size, bool bias = true);
  Tensor forward(const Tensor& x) override;
  Tensor forward(const Tensor& x, const Tensor& h);
};

struct RNNOptions {
  int64_t num_layers = 1;
  bool bias = true;
  bool batch_first = false;
  double dropout = 0;  // between layers, while training
  std::string nonlinearity = "tanh";  // RNN only
};

// Stacked layers over a sequence; parameters named weight_ih_l0, weight_hh_l0, bias_ih_l0,
// bias_hh_l0, ... as in PyTorch. A 2-D input (T, input) is one unbatched sequence.
class RecurrentBase : public Module {
 public:
  std::string extra_repr() const override;
  int64_t input_size, hidden_size;
  RNNOptions options;
  struct LayerWeights {
    Tensor weight_ih, weight_hh, bias_ih, bias_hh;
  };
  std::vector<LayerWeights> layers;  // handles to the registered parameters

 protected:
  RecurrentBase(int64_t input_size, int64_t hidden_size, RNNOptions options, int64_t gates);
  // Runs every layer over x (T, N, input); `state` holds (num_layers, N, hidden) tensors per kind of
  // state (h, or h and c), undefined for zeros, and is replaced by the final states.
  Tensor run(const Tensor& x, std::vector<Tensor>& state, int kind);
};

// forward(x) gives the last layer's output at every step; forward(x, h0) also the final states
// (num_layers, N, hidden).
class RNN : public RecurrentBase {
 public:
  RNN(int64_t input_size, int64_t hidden_size, RNNOptions options = {});
  Tensor forward(const Tensor& x) override;
  std::tuple<Tensor, Tensor> forward(const Tensor& x, const Tensor& h0);
};
class GRU : public RecurrentBase {
 public:
  GRU(int64_t input_size, int64_t hidden_size, RNNOptions options = {});
  Tensor forward(const Tensor& x) override;
  std::tuple<Tensor, Tensor> forward(const Tensor& x, const Tensor& h0);
};
class LSTM : public RecurrentBase {
 public:
  LSTM(int64_t input_size, int64_t hidden_size, RNNOptions options = {});
  Tensor forward(const Tensor& x) override;
  // (output, (h_n, c_n)) from (h_0, c_0); undefined states start at zero.
  std::tuple<Tensor, std::tuple<Tensor, Tensor>> forward(const Tensor& x,
                                                         const std::tuple<Tensor, Tensor>& hc0);
};

}  // namespace tg::nn
