// nn::functional: linear, dropout, batch_norm, layer_norm, embedding, composed from public ops
// (so they differentiate through their primitives), and the im2col aliases.
#include "tapegrad/nn/functional.h"
#include "tapegrad/trace.h"

#include "core/check.h"
#include "tapegrad/format.h"

namespace tg::nn::functional {

Tensor unfold(const Tensor& x, Size2 kernel, Size2 dilation, Size2 padding, Size2 stride, Loc loc) {
  return im2col(x, kernel, stride, padding, dilation, loc);
}
Tensor fold(const Tensor& cols, Size2 output_size, Size2 kernel, Size2 dilation, Size2 padding,
            Size2 stride, Loc loc) {
  return col2im(cols, output_size, kernel, stride, padding, dilation, loc);
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias, Loc loc) {
  OpScope scope("linear", loc);
  TG_CHECK(x.defined() && weight.defined(), "linear: input and weight must be defined");
  TG_CHECK(weight.dim() == 2, "linear: weight must be (out, in), got shape {}", weight.shape());
  TG_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1),
           "linear: input of shape {} has {} features, the weight {} expects {}", x.shape(),
           x.dim() ? x.size(-1) : 0, weight.shape(), weight.size(1));
  TG_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == weight.size(0)),
           "linear: bias must have shape [{}], got {}", weight.size(0),
           bias.defined() ? bias.shape() : Shape{});
  // Leading dims fold into the rows of one gemm when they can be viewed so.
  Tensor x2 = x;
  if (x.dim() > 2) x2 = x.reshape({-1, x.size(-1)});
  Tensor y = x2.matmul(weight.t());
  if (bias.defined()) y = y + bias;
  if (x.dim() > 2) {
    Shape shape = x.shape();
    shape.back() = weight.size(0);
    y = y.reshape(shape);
  }
  return y;
}

Tensor dropout(const Tensor& x, double p, bool training, Loc loc) {
  OpScope scope("dropout", loc);
  TG_CHECK(p >= 0 && p <= 1, "dropout: p must be in [0, 1], got {}", p);
  TG_CHECK(x.defined() && is_floating(x.dtype()), "dropout: expected a floating input");
  if (!training || p == 0) return x;
  if (p == 1) return x * 0.0;
  Tensor keep = rand(x.shape(), {.dtype = x.dtype(), .device = x.device()}) >= p;
  return x * keep.to(x.dtype()) * (1.0 / (1.0 - p));
}

Tensor batch_norm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var,
                  const Tensor& weight, const Tensor& bias, bool training, double momentum,
                  double eps, Loc loc) {
  OpScope scope("batch_norm", loc);
  TG_CHECK(x.defined() && x.dim() >= 2, "batch_norm: expected an (N, C, ...) input, got shape {}",
           x.defined() ? x.shape() : Shape{});
  int64_t c = x.size(1);
  auto check_c = [&](const Tensor& t, const char* what) {
    TG_CHECK(!t.defined() || (t.dim() == 1 && t.size(0) == c),
             "batch_norm: {} must have shape [{}] for input {}, got {}", what, c, x.shape(),
             t.defined() ? t.shape() : Shape{});
  };
  check_c(running_mean, "running_mean");
  check_c(running_var, "running_var");
  check_c(weight, "weight");
  check_c(bias, "bias");
  Shape dims{0}, bshape(x.dim(), 1);
  bshape[1] = c;
  for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
  Tensor mean, var;
  if (training) {
    int64_t count = x.numel() / std::max<int64_t>(c, 1);
    TG_CHECK(count > 1, "batch_norm: training needs more than one value per channel, got input {}",
             x.shape());
    mean = x.mean(dims, true);
    var = x.var(dims, 0, true);
    if (running_mean.defined() || running_var.defined()) {
      NoGradGuard no_grad;
      Tensor rm = running_mean, rv = running_var;  // handles: the update writes their storage
      if (rm.defined())
        rm.mul_(1 - momentum).add_(mean.reshape({c}).to(running_mean.dtype()) * momentum);
      if (rv.defined()) {
        Tensor unbiased = var.reshape({c}) * (static_cast<double>(count) / (count - 1));
        rv.mul_(1 - momentum).add_(unbiased.to(running_var.dtype()) * momentum);
      }
    }
  } else {
    TG_CHECK(running_mean.defined() && running_var.defined(),
             "batch_norm: evaluation needs running_mean and running_var");
    mean = running_mean.reshape(bshape);
    var = running_var.reshape(bshape);
  }
  Tensor y = (x - mean) * rsqrt(var + eps);
  if (weight.defined()) y = y * weight.reshape(bshape);
  if (bias.defined()) y = y + bias.reshape(bshape);
  return y;
}

Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight,
                  const Tensor& bias, double eps, Loc loc) {
  OpScope scope("layer_norm", loc);
  int64_t k = static_cast<int64_t>(normalized_shape.size());
  TG_CHECK(x.defined() && k >= 1 && x.dim() >= k, "layer_norm: input {} cannot be normalized over {}",
           x.defined() ? x.shape() : Shape{}, normalized_shape);
  Shape tail(x.shape().end() - k, x.shape().end());
  TG_CHECK(tail == normalized_shape, "layer_norm: input {} does not end in the normalized shape {}",
           x.shape(), normalized_shape);
  for (const Tensor* t : {&weight, &bias})
    TG_CHECK(!t->defined() || t->shape() == normalized_shape,
             "layer_norm: weight and bias must have shape {}, got {}", normalized_shape,
             t->shape());
  Shape dims;
  for (int64_t d = x.dim() - k; d < x.dim(); ++d) dims.push_back(d);
  Tensor mean = x.mean(dims, true);
  Tensor centered = x - mean;
  Tensor y = centered * rsqrt((centered * centered).mean(dims, true) + eps);
  if (weight.defined()) y = y * weight;
  if (bias.defined()) y = y + bias;
  return y;
}

Tensor embedding(const Tensor& indices, const Tensor& weight, Loc loc) {
  OpScope scope("embedding", loc);
  TG_CHECK(indices.defined() && weight.defined() && weight.dim() == 2,
           "embedding: expected indices and a (num_embeddings, dim) weight");
  TG_CHECK(indices.dtype() == kI64 || indices.dtype() == kI32,
           "embedding: indices must be integers, got {}", dtype_name(indices.dtype()));
  Tensor flat = indices.to(kI64).reshape({-1});
  if (flat.numel() > 0 && !is_tracing()) {  // traced: index_select checks at every replay
    int64_t lo = flat.amin().item<int64_t>(), hi = flat.amax().item<int64_t>();
    TG_CHECK(lo >= 0 && hi < weight.size(0),
             "embedding: index {} is out of range for {} embeddings", lo < 0 ? lo : hi,
             weight.size(0));
  }
  Shape shape = indices.shape();
  shape.push_back(weight.size(1));
  return weight.index_select(0, flat).reshape(shape);
}

}  // namespace tg::nn::functional
