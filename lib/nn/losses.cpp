// The losses of nn::functional, with PyTorch's definitions, reductions and edge cases (clamped
// logs in binary_cross_entropy, ignore_index and weighted means in nll_loss/cross_entropy).
#include <cmath>

#include "core/check.h"
#include "core/tensor_impl.h"
#include "tapegrad/format.h"
#include "tapegrad/nn/functional.h"
#include "tapegrad/trace.h"

namespace tg::nn::functional {

namespace {

Tensor reduce(const Tensor& loss, Reduction r) {
  switch (r) {
    case Reduction::None: return loss;
    case Reduction::Sum: return loss.sum();
    default: return loss.mean();
  }
}

void check_pair(const Tensor& input, const Tensor& target, const char* op) {
  TG_CHECK(input.defined() && target.defined(), "{}: input and target must be defined", op);
  TG_CHECK(is_floating(input.dtype()), "{}: input must be floating, got {}", op,
           dtype_name(input.dtype()));
  TG_CHECK(input.shape() == target.shape(),
           "{}: input {} and target {} must have the same shape", op, input.shape(),
           target.shape());
}

}  // namespace

Tensor mse_loss(const Tensor& input, const Tensor& target, Reduction reduction, Loc loc) {
  OpScope scope("mse_loss", loc);
  check_pair(input, target, "mse_loss");
  Tensor d = input - target;
  return reduce(d * d, reduction);
}

Tensor l1_loss(const Tensor& input, const Tensor& target, Reduction reduction, Loc loc) {
  OpScope scope("l1_loss", loc);
  check_pair(input, target, "l1_loss");
  return reduce(abs(input - target), reduction);
}

Tensor huber_loss(const Tensor& input, const Tensor& target, Reduction reduction, double delta,
                  Loc loc) {
  OpScope scope("huber_loss", loc);
  check_pair(input, target, "huber_loss");
  TG_CHECK(delta > 0, "huber_loss: delta must be positive, got {}", delta);
  Tensor d = abs(input - target);
  Tensor quadratic = 0.5 * d * d, linear = delta * (d - 0.5 * delta);
  return reduce(where(d < delta, quadratic, linear), reduction);
}

Tensor binary_cross_entropy(const Tensor& input, const Tensor& target, const Tensor& weight,
                            Reduction reduction, Loc loc) {
  OpScope scope("binary_cross_entropy", loc);
  check_pair(input, target, "binary_cross_entropy");
  if (!is_tracing()) {  // traced: no host reads; the log is clamped as in PyTorch
    NoGradGuard no_grad;
    bool in_range = input.numel() == 0 ||
                    ((input >= 0) & (input <= 1)).to(kI64).sum().item<int64_t>() == input.numel();
    TG_CHECK(in_range, "binary_cross_entropy: input values must be probabilities in [0, 1] "
                       "(use binary_cross_entropy_with_logits for logits)");
  }
  Tensor loss = -(target * clamp(log(input), -100.0, std::nullopt) +
                  (1 - target) * clamp(log(1 - input), -100.0, std::nullopt));
  if (weight.defined()) loss = loss * weight;
  return reduce(loss, reduction);
}

Tensor binary_cross_entropy_with_logits(const Tensor& input, const Tensor& target,
                                        const Tensor& weight, Reduction reduction,
                                        const Tensor& pos_weight, Loc loc) {
  OpScope scope("binary_cross_entropy_with_logits", loc);
  check_pair(input, target, "binary_cross_entropy_with_logits");
  // -(pw·y·ln σ(x) + (1-y)·ln(1-σ(x))), with ln σ(x) = -softplus(-x), ln(1-σ(x)) = -softplus(x).
  Tensor pos = softplus(-input), neg = softplus(input);
  Tensor loss = pos_weight.defined() ? pos_weight * target * pos + (1 - target) * neg
                                     : target * pos + (1 - target) * neg;
  if (weight.defined()) loss = loss * weight;
  return reduce(loss, reduction);
}

namespace {

// log_probs (N, C, d...) with class-index targets (N, d...); returns the per-element loss, the
// per-element target weights (zero where ignored) and the smoothing term when asked.
struct Picked {
  Tensor nll, weights, ignored;
};
Picked pick(const Tensor& log_probs, const Tensor& target, const CrossEntropyOptions& o,
            const char* op) {
  TG_CHECK(target.dtype() == kI64, "{}: class-index targets must be i64, got {}", op,
           dtype_name(target.dtype()));
  int64_t classes = log_probs.size(1);
  Shape want = log_probs.shape();
  want.erase(want.begin() + 1);
  TG_CHECK(target.shape() == want, "{}: logits {} need targets of shape {}, got {}", op,
           log_probs.shape(), want, target.shape());
  TG_CHECK(!o.weight.defined() || (o.weight.dim() == 1 && o.weight.size(0) == classes),
           "{}: weight must have shape [{}], got {}", op, classes,
           o.weight.defined() ? o.weight.shape() : Shape{});
  Tensor ignored = target == o.ignore_index;
  Tensor safe = where(ignored, Scalar(int64_t{0}), target);
  // Note [Traced targets]: traced, nothing reads the targets on the host: gather checks them at
  // every replay. Its bounds are [-classes, classes) (a negative index counts from the end), so
  // a negative target is moved below them, to target - classes, where gather refuses it instead
  // of reading the class it would name from the end. The replay's error names the target as
  // given, in eager's words (Executor::read_flags).
  if (is_tracing()) safe = where(safe < 0, safe - classes, safe);
  if (safe.numel() > 0 && !is_tracing()) {
    // Both bounds in one read: on a GPU each read waits for the device.
    std::vector<int64_t> b = stack({safe.amin(), safe.amax()}).to_vector<int64_t>();
    int64_t lo = b[0], hi = b[1];
    TG_CHECK(lo >= 0 && hi < classes, "{}: target {} is out of range for {} classes", op,
             lo < 0 ? lo : hi, classes);
    // `safe` is this function's own: its gather and its gradient's scatter need not check again
    // (on a GPU, each check waits for the device).
    mark_indices_below(*safe.impl(), classes);
  }
  Tensor idx = safe.unsqueeze(1);
  Tensor nll = -log_probs.gather(1, idx).squeeze(1);
  Tensor w = o.weight.defined() ? o.weight.to(log_probs.dtype()).index_select(0, safe.reshape({-1})).reshape(safe.shape())
                                : ones(safe.shape(), {.dtype = log_probs.dtype(), .device = log_probs.device()});
  w = where(ignored, 0.0, w);
  return {nll * w, w, ignored};
}

// Reduction of weighted per-element losses: the mean divides by the total weight (PyTorch).
Tensor reduce_weighted(const Tensor& loss, const Tensor& weights, Reduction r) {
  if (r == Reduction::Mean) return loss.sum() / weights.sum();
  return reduce(loss, r);
}

// (C) or (N, C, d...) → (N, C, d...) with a batch of one.
Tensor as_batch(const Tensor& x) { return x.dim() == 1 ? x.unsqueeze(0) : x; }

}  // namespace

Tensor nll_loss(const Tensor& log_probs, const Tensor& target, CrossEntropyOptions o, Loc loc) {
  OpScope scope("nll_loss", loc);
  TG_CHECK(log_probs.defined() && target.defined(), "nll_loss: input and target must be defined");
  TG_CHECK(log_probs.dim() >= 1 && is_floating(log_probs.dtype()),
           "nll_loss: expected floating (N, C, ...) log-probabilities, got {} {}",
           dtype_name(log_probs.dtype()), log_probs.shape());
  TG_CHECK(o.label_smoothing == 0, "nll_loss: label_smoothing is an option of cross_entropy");
  bool one = log_probs.dim() == 1;
  Picked p = pick(as_batch(log_probs), one ? target.reshape({1}) : target, o, "nll_loss");
  if (one && o.reduction == Reduction::None) return p.nll.squeeze(0);
  return reduce_weighted(p.nll, p.weights, o.reduction);
}

Tensor cross_entropy(const Tensor& logits, const Tensor& target, CrossEntropyOptions o, Loc loc) {
  OpScope scope("cross_entropy", loc);
  TG_CHECK(logits.defined() && target.defined(), "cross_entropy: logits and target must be defined");
  TG_CHECK(logits.dim() >= 1 && is_floating(logits.dtype()),
           "cross_entropy: expected floating (N, C, ...) logits, got {} {}",
           dtype_name(logits.dtype()), logits.shape());
  double eps = o.label_smoothing;
  TG_CHECK(eps >= 0 && eps <= 1, "cross_entropy: label_smoothing must be in [0, 1], got {}", eps);
  bool one = logits.dim() == 1;
  Tensor lp = log_softmax(as_batch(logits), 1);
  int64_t classes = lp.size(1);
  Shape bshape(lp.dim(), 1);
  bshape[1] = classes;
  Tensor cw = o.weight.defined() ? o.weight.to(lp.dtype()).reshape(bshape) : Tensor();
  if (is_floating(target.dtype())) {  // class probabilities
    Tensor t = as_batch(target);
    TG_CHECK(t.shape() == lp.shape(), "cross_entropy: probability targets {} must match logits {}",
             target.shape(), logits.shape());
    if (eps > 0) t = t * (1 - eps) + eps / static_cast<double>(classes);
    Tensor terms = -(t * lp);
    if (cw.defined()) terms = terms * cw;
    Tensor loss = terms.sum({1});
    if (one && o.reduction == Reduction::None) return loss.squeeze(0);
    return reduce(loss, o.reduction);
  }
  Picked p = pick(lp, one ? target.reshape({1}) : target, o, "cross_entropy");
  Tensor loss = p.nll;
  if (eps > 0) {
    // PyTorch: (1 - ε)·nll + ε/C · Σ_c w_c·(-log p_c), zero where the target is ignored.
    Tensor smooth = -(cw.defined() ? lp * cw : lp).sum({1});
    smooth = where(p.ignored, 0.0, smooth);
    loss = (1 - eps) * loss + (eps / static_cast<double>(classes)) * smooth;
  }
  if (one && o.reduction == Reduction::None) return loss.squeeze(0);
  return reduce_weighted(loss, p.weights, o.reduction);
}

}  // namespace tg::nn::functional
