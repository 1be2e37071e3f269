// The feed-forward layers: Sequential, Linear, Conv2d, pooling, Flatten, Dropout, normalization,
// Embedding and the activation modules. Initial values follow PyTorch's reset_parameters().
#include <fmt/format.h>

#include <cmath>

#include "core/check.h"
#include "tapegrad/format.h"
#include "tapegrad/nn.h"

namespace tg::nn {

namespace F = functional;

namespace {
// U(-1/√fan_in, 1/√fan_in): what kaiming_uniform_(a = √5) gives, and PyTorch's bias init.
Tensor fan_in_uniform(const Shape& shape, int64_t fan_in) {
  double bound = fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
  return rand(shape) * (2 * bound) - bound;
}
std::string pair_str(Size2 s) { return fmt::format("({}, {})", s.h, s.w); }
}  // namespace

// --- Sequential ----------------------------------------------------------------------------------

Sequential::Sequential(std::initializer_list<AnyModule> modules) {
  for (const auto& m : modules) push_back(m);
}
void Sequential::push_back(AnyModule module) { add_child(std::to_string(size()), module.ptr()); }
size_t Sequential::size() const { return named_children().size(); }
Module& Sequential::operator[](size_t i) const {
  auto children = named_children();
  TG_CHECK(i < children.size(), "Sequential: index {} is out of range for {} modules", i,
           children.size());
  return *children[i].second;
}
Tensor Sequential::forward(const Tensor& x) {
  Tensor y = x;
  for (auto& [name, m] : named_children()) y = (*m)(y);
  return y;
}

// --- Linear, Conv2d ------------------------------------------------------------------------------

Linear::Linear(int64_t in_features, int64_t out_features, bool has_bias) {
  TG_CHECK(in_features >= 0 && out_features >= 0, "Linear: sizes must be non-negative, got {} and {}",
           in_features, out_features);
  NoGradGuard no_grad;
  weight = register_parameter("weight", fan_in_uniform({out_features, in_features}, in_features));
  if (has_bias) bias = register_parameter("bias", fan_in_uniform({out_features}, in_features));
}
Tensor Linear::forward(const Tensor& x) { return F::linear(x, weight, bias); }
std::string Linear::extra_repr() const {
  return fmt::format("in_features={}, out_features={}, bias={}", weight.size(1), weight.size(0),
                     bias.defined());
}

Conv2d::Conv2d(int64_t in_channels, int64_t out_channels, Size2 k, Conv2dOptions opts)
    : options(opts) {
  TG_CHECK(opts.groups > 0 && in_channels % opts.groups == 0 && out_channels % opts.groups == 0,
           "Conv2d: {} input and {} output channels must divide into {} groups", in_channels,
           out_channels, opts.groups);
  TG_CHECK(k.h > 0 && k.w > 0, "Conv2d: kernel size must be positive, got {}", pair_str(k));
  NoGradGuard no_grad;
  int64_t fan_in = in_channels / opts.groups * k.h * k.w;
  weight = register_parameter(
      "weight", fan_in_uniform({out_channels, in_channels / opts.groups, k.h, k.w}, fan_in));
  if (opts.bias) bias = register_parameter("bias", fan_in_uniform({out_channels}, fan_in));
}
Tensor Conv2d::forward(const Tensor& x) {
  return conv2d(x, weight, bias, options.stride, options.padding, options.dilation, options.groups);
}
std::string Conv2d::extra_repr() const {
  std::string s = fmt::format("{}, {}, kernel_size={}, stride={}", weight.size(1) * options.groups,
                              weight.size(0), pair_str({weight.size(2), weight.size(3)}),
                              pair_str(options.stride));
  if (options.padding.h || options.padding.w) s += ", padding=" + pair_str(options.padding);
  if (options.dilation.h != 1 || options.dilation.w != 1)
    s += ", dilation=" + pair_str(options.dilation);
  if (options.groups != 1) s += fmt::format(", groups={}", options.groups);
  if (!bias.defined()) s += ", bias=false";
  return s;
}

// --- pooling, Flatten, Dropout ---------------------------------------------------------------------

MaxPool2d::MaxPool2d(Size2 k, std::optional<Size2> s, Size2 p, Size2 d)
    : kernel_size(k), stride(s.value_or(k)), padding(p), dilation(d) {}
Tensor MaxPool2d::forward(const Tensor& x) {
  return max_pool2d(x, kernel_size, stride, padding, dilation);
}
std::string MaxPool2d::extra_repr() const {
  return fmt::format("kernel_size={}, stride={}, padding={}, dilation={}", pair_str(kernel_size),
                     pair_str(stride), pair_str(padding), pair_str(dilation));
}

AvgPool2d::AvgPool2d(Size2 k, std::optional<Size2> s, Size2 p)
    : kernel_size(k), stride(s.value_or(k)), padding(p) {}
Tensor AvgPool2d::forward(const Tensor& x) { return avg_pool2d(x, kernel_size, stride, padding); }
std::string AvgPool2d::extra_repr() const {
  return fmt::format("kernel_size={}, stride={}, padding={}", pair_str(kernel_size),
                     pair_str(stride), pair_str(padding));
}

AdaptiveAvgPool2d::AdaptiveAvgPool2d(Size2 out) : output_size(out) {}
Tensor AdaptiveAvgPool2d::forward(const Tensor& x) { return adaptive_avg_pool2d(x, output_size); }
std::string AdaptiveAvgPool2d::extra_repr() const {
  return "output_size=" + pair_str(output_size);
}

Flatten::Flatten(int64_t start, int64_t end) : start_dim(start), end_dim(end) {}
Tensor Flatten::forward(const Tensor& x) { return x.flatten(start_dim, end_dim); }
std::string Flatten::extra_repr() const {
  return fmt::format("start_dim={}, end_dim={}", start_dim, end_dim);
}

Dropout::Dropout(double p) : p(p) {
  TG_CHECK(p >= 0 && p <= 1, "Dropout: p must be in [0, 1], got {}", p);
}
Tensor Dropout::forward(const Tensor& x) { return F::dropout(x, p, is_training()); }
std::string Dropout::extra_repr() const { return fmt::format("p={}", p); }

// --- normalization, Embedding --------------------------------------------------------------------

BatchNorm::BatchNorm(int64_t n, double eps, double momentum, bool affine, int64_t lo, int64_t hi)
    : eps(eps), momentum(momentum), dims_lo_(lo), dims_hi_(hi) {
  TG_CHECK(n > 0, "BatchNorm: num_features must be positive, got {}", n);
  if (affine) {
    weight = register_parameter("weight", ones({n}));
    bias = register_parameter("bias", zeros({n}));
  }
  running_mean = register_buffer("running_mean", zeros({n}));
  running_var = register_buffer("running_var", ones({n}));
  num_batches_tracked = register_buffer("num_batches_tracked", zeros({}, {.dtype = kI64}));
}
Tensor BatchNorm::forward(const Tensor& x) {
  TG_CHECK(x.dim() >= dims_lo_ && x.dim() <= dims_hi_,
           "{}: expected a {}-D input, got shape {}", type_name(),
           dims_lo_ == dims_hi_ ? std::to_string(dims_lo_) : fmt::format("{}-D or {}", dims_lo_, dims_hi_),
           x.shape());
  if (is_training()) {
    NoGradGuard no_grad;
    num_batches_tracked.add_(1);
  }
  return F::batch_norm(x, running_mean, running_var, weight, bias, is_training(), momentum, eps);
}
std::string BatchNorm::extra_repr() const {
  return fmt::format("{}, eps={}, momentum={}, affine={}", running_mean.size(0), eps, momentum,
                     weight.defined());
}

LayerNorm::LayerNorm(Shape shape, double eps, bool affine) : normalized_shape(shape), eps(eps) {
  if (affine) {
    weight = register_parameter("weight", ones(shape));
    bias = register_parameter("bias", zeros(shape));
  }
}
Tensor LayerNorm::forward(const Tensor& x) {
  return F::layer_norm(x, normalized_shape, weight, bias, eps);
}
std::string LayerNorm::extra_repr() const {
  return fmt::format("{}, eps={}, elementwise_affine={}", normalized_shape, eps, weight.defined());
}

Embedding::Embedding(int64_t num, int64_t dim) {
  TG_CHECK(num > 0 && dim > 0, "Embedding: sizes must be positive, got {} and {}", num, dim);
  weight = register_parameter("weight", randn({num, dim}));
}
Tensor Embedding::forward(const Tensor& indices) { return F::embedding(indices, weight); }
std::string Embedding::extra_repr() const {
  return fmt::format("{}, {}", weight.size(0), weight.size(1));
}

// --- activations -----------------------------------------------------------------------------------

Tensor ReLU::forward(const Tensor& x) { return relu(x); }
Tensor Tanh::forward(const Tensor& x) { return tanh(x); }
Tensor Sigmoid::forward(const Tensor& x) { return sigmoid(x); }
Tensor GELU::forward(const Tensor& x) { return gelu(x); }
Tensor Softmax::forward(const Tensor& x) { return softmax(x, dim); }
std::string Softmax::extra_repr() const { return fmt::format("dim={}", dim); }
Tensor LogSoftmax::forward(const Tensor& x) { return log_softmax(x, dim); }
std::string LogSoftmax::extra_repr() const { return fmt::format("dim={}", dim); }

}  // namespace tg::nn
