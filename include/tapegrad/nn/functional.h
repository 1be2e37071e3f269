// tg::nn::functional: the layers as functions, and the losses. Losses follow PyTorch's
// definitions and defaults; `reduction` is Mean unless given.
#pragma once

#include <optional>

#include "tapegrad/autograd.h"
#include "tapegrad/ops.h"

namespace tg::nn::functional {

// The primitives of ops.h, under the names PyTorch's functional uses.
using tg::adaptive_avg_pool2d;
using tg::avg_pool2d;
using tg::conv2d;
using tg::gelu;
using tg::log_softmax;
using tg::max_pool2d;
using tg::one_hot;
using tg::relu;
using tg::sigmoid;
using tg::softmax;
using tg::softplus;
using tg::tanh;
Tensor unfold(const Tensor& x, Size2 kernel, Size2 dilation = 1, Size2 padding = 0,
              Size2 stride = 1, Loc loc = Loc::current());  // = im2col
Tensor fold(const Tensor& cols, Size2 output_size, Size2 kernel, Size2 dilation = 1,
            Size2 padding = 0, Size2 stride = 1, Loc loc = Loc::current());  // = col2im

// x·weightᵀ + bias; x (..., in), weight (out, in).
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = {},
              Loc loc = Loc::current());
Tensor dropout(const Tensor& x, double p = 0.5, bool training = true, Loc loc = Loc::current());
// Batch norm over dim 1 of (N, C, ...). While training, normalizes with the batch statistics and
// (when given) updates running_mean/var in place: r = (1 - momentum)·r + momentum·batch (the
// variance unbiased). Otherwise uses the running statistics.
Tensor batch_norm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var,
                  const Tensor& weight = {}, const Tensor& bias = {}, bool training = false,
                  double momentum = 0.1, double eps = 1e-5, Loc loc = Loc::current());
Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight = {},
                  const Tensor& bias = {}, double eps = 1e-5, Loc loc = Loc::current());
Tensor embedding(const Tensor& indices, const Tensor& weight, Loc loc = Loc::current());

// --- losses --------------------------------------------------------------------------------------
enum class Reduction { None, Mean, Sum };

Tensor mse_loss(const Tensor& input, const Tensor& target, Reduction reduction = Reduction::Mean,
                Loc loc = Loc::current());
Tensor l1_loss(const Tensor& input, const Tensor& target, Reduction reduction = Reduction::Mean,
               Loc loc = Loc::current());
// ½d² for |d| < delta, else delta·(|d| - ½delta).
Tensor huber_loss(const Tensor& input, const Tensor& target, Reduction reduction = Reduction::Mean,
                  double delta = 1.0, Loc loc = Loc::current());
// -w·(y·ln p + (1 - y)·ln(1 - p)) with each log clamped at -100, as PyTorch does.
Tensor binary_cross_entropy(const Tensor& input, const Tensor& target, const Tensor& weight = {},
                            Reduction reduction = Reduction::Mean, Loc loc = Loc::current());
// The same on logits, computed stably; pos_weight scales the positive term.
Tensor binary_cross_entropy_with_logits(const Tensor& input, const Tensor& target,
                                        const Tensor& weight = {},
                                        Reduction reduction = Reduction::Mean,
                                        const Tensor& pos_weight = {}, Loc loc = Loc::current());

struct CrossEntropyOptions {
  Tensor weight = {};          // per class (C), or undefined
  int64_t ignore_index = -100;  // targets equal to it add nothing (class-index targets)
  Reduction reduction = Reduction::Mean;
  double label_smoothing = 0;  // in [0, 1]
};
// logits (N, C) or (N, C, d...) or (C); target class indices (i64, (N) or (N, d...)) or class
// probabilities (the logits' shape). Mean with weights divides by the targets' total weight.
Tensor cross_entropy(const Tensor& logits, const Tensor& target, CrossEntropyOptions options = {},
                     Loc loc = Loc::current());
// -log_probs[target], with class weights, ignore_index and reduction as cross_entropy.
Tensor nll_loss(const Tensor& log_probs, const Tensor& target, CrossEntropyOptions options = {},
                Loc loc = Loc::current());

}  // namespace tg::nn::functional
