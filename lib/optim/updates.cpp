// The update rules, each PyTorch's (torch/optim/*.py, single-tensor path), with PyTorch's state
// names (exp_avg, exp_avg_sq, momentum_buffer, square_avg, sum, step). Updates run in place and
// unrecorded; temporaries are made only where the formula needs one.
#include <cmath>

#include "core/check.h"
#include "tapegrad/ops.h"
#include "tapegrad/optim.h"
#include "tapegrad/trace.h"

namespace tg::optim {

namespace {

std::vector<ParamGroup> one_group(std::vector<Tensor> params) {
  return {ParamGroup{std::move(params)}};
}

// The state tensor `name` of a parameter, made by `init` on first use. Made outside any trace:
// in a traced step it is state the graph reads and updates, not a value it recomputes.
template <class Init>
Tensor state_tensor(std::map<std::string, Tensor>& st, const char* name, Init init) {
  auto it = st.find(name);
  if (it != st.end()) return it->second;
  NoTraceGuard outside_trace;
  return st.emplace(name, init()).first->second;
}

// Increments and returns the step count (a 0-d f64 tensor, as PyTorch keeps it). It stays a
// tensor so that a traced step counts too.
Tensor next_step(std::map<std::string, Tensor>& st, const Tensor& param) {
  Tensor s = state_tensor(st, "step",
                          [&] { return zeros({}, {.dtype = kF64, .device = param.device()}); });
  return s.add_(1);
}

// 1 - beta^step, in f64 as PyTorch computes it.
Tensor bias_correction(double beta, const Tensor& step) {
  return 1 - pow(full({}, beta, {.dtype = kF64, .device = step.device()}), step);
}

void check_range(double v, double lo, double hi, const char* what, const char* opt) {
  TG_CHECK(v >= lo && v <= hi, "{}: {} must be in [{}, {}], got {}", opt, what, lo, hi, v);
}

}  // namespace

// --- SGD -----------------------------------------------------------------------------------------

SGD::SGD(std::vector<Tensor> params, SGDOptions o) : SGD(one_group(std::move(params)), o) {}
SGD::SGD(std::vector<ParamGroup> groups, SGDOptions o)
    : Optimizer(std::move(groups), o.lr, o.weight_decay, "SGD"), options(o) {
  TG_CHECK(o.momentum >= 0, "SGD: momentum must be non-negative, got {}", o.momentum);
  TG_CHECK(!o.nesterov || (o.momentum > 0 && o.dampening == 0),
           "SGD: Nesterov momentum needs momentum > 0 and dampening = 0");
}

void SGD::step() {
  (void)lr_tensors();  // refreshed for this step
  for_each_param([&](Tensor& p, const Tensor& g, size_t gi, size_t i) {
    double wd = *param_groups()[gi].weight_decay;
    Tensor d = wd != 0 ? g + p * wd : g;
    if (options.momentum != 0) {
      auto& st = state_of(i);
      auto it = st.find("momentum_buffer");
      Tensor buf;
      if (it == st.end() && (!is_tracing() || options.dampening != 0)) {
        // PyTorch's first step copies the gradient. A traced step records only the general
        // update, so there the buffer starts at zero: buf·m + d is then exactly d.
        TG_CHECK(!is_tracing(),
                 "SGD: with dampening, the first step cannot be traced (it differs from the "
                 "others); run one step eagerly before tracing the training step");
        buf = st.emplace("momentum_buffer", d.clone()).first->second;
      } else {
        buf = state_tensor(st, "momentum_buffer", [&] { return zeros_like(p); });
        buf.mul_(options.momentum);
        buf.add_(options.dampening == 0 ? d : d * (1 - options.dampening));
      }
      d = options.nesterov ? d + buf * options.momentum : buf;
    }
    p.sub_(d * lr_tensor(gi, p.device()));
  });
}

// --- Adam, AdamW -----------------------------------------------------------------------------------

Adam::Adam(std::vector<Tensor> params, AdamOptions o) : Adam(one_group(std::move(params)), o) {}
Adam::Adam(std::vector<ParamGroup> groups, AdamOptions o) : Adam(std::move(groups), o, false, "Adam") {}
Adam::Adam(std::vector<ParamGroup> groups, AdamOptions o, bool decoupled, const char* name)
    : Optimizer(std::move(groups), o.lr, o.weight_decay, name), options(o), decoupled_(decoupled) {
  check_range(o.betas.first, 0, 1 - 1e-12, "betas.first", name);
  check_range(o.betas.second, 0, 1 - 1e-12, "betas.second", name);
  TG_CHECK(o.eps >= 0, "{}: eps must be non-negative, got {}", name, o.eps);
}

void Adam::step() {
  auto [b1, b2] = options.betas;
  (void)lr_tensors();  // refreshed for this step
  for_each_param([&](Tensor& p, const Tensor& g, size_t gi, size_t i) {
    const Tensor lr = lr_tensor(gi, p.device());
    double wd = *param_groups()[gi].weight_decay;
    auto& st = state_of(i);
    Tensor step = next_step(st, p);
    Tensor m = state_tensor(st, "exp_avg", [&] { return zeros_like(p); });
    Tensor v = state_tensor(st, "exp_avg_sq", [&] { return zeros_like(p); });
    Tensor grad = g;
    if (wd != 0) {
      if (decoupled_)
        p.mul_(1 - lr * wd);  // f64 0-d: the factor PyTorch computes
      else
        grad = g + p * wd;
    }
    m.mul_(b1).add_(grad, 1 - b1);  // PyTorch's own form: one fused pass each
    v.mul_(b2).addcmul_(grad, grad, 1 - b2);
    Tensor bc1 = bias_correction(b1, step), bc2 = bias_correction(b2, step);
    Tensor second = v;
    if (options.amsgrad) {
      Tensor vmax = state_tensor(st, "max_exp_avg_sq", [&] { return zeros_like(p); });
      vmax.copy_(maximum(vmax, v));
      second = vmax;
    }
    Tensor denom = (sqrt(second) / sqrt(bc2)).add_(options.eps);
    p.addcdiv_(m, denom, -(lr / bc1));
  });
}

AdamW::AdamW(std::vector<Tensor> params, AdamWOptions o) : AdamW(one_group(std::move(params)), o) {}
AdamW::AdamW(std::vector<ParamGroup> groups, AdamWOptions o)
    : Adam(std::move(groups), {o.lr, o.betas, o.eps, o.weight_decay, o.amsgrad}, true, "AdamW") {}

// --- RMSprop -------------------------------------------------------------------------------------

RMSprop::RMSprop(std::vector<Tensor> params, RMSpropOptions o)
    : RMSprop(one_group(std::move(params)), o) {}
RMSprop::RMSprop(std::vector<ParamGroup> groups, RMSpropOptions o)
    : Optimizer(std::move(groups), o.lr, o.weight_decay, "RMSprop"), options(o) {
  check_range(o.alpha, 0, 1, "alpha", "RMSprop");
  TG_CHECK(o.eps >= 0 && o.momentum >= 0, "RMSprop: eps and momentum must be non-negative");
}

void RMSprop::step() {
  double alpha = options.alpha;
  (void)lr_tensors();  // refreshed for this step
  for_each_param([&](Tensor& p, const Tensor& g, size_t gi, size_t i) {
    const Tensor lr = lr_tensor(gi, p.device());
    double wd = *param_groups()[gi].weight_decay;
    auto& st = state_of(i);
    next_step(st, p);
    Tensor grad = wd != 0 ? g + p * wd : g;
    Tensor sq = state_tensor(st, "square_avg", [&] { return zeros_like(p); });
    sq.mul_(alpha).add_(grad * grad * (1 - alpha));
    Tensor avg;
    if (options.centered) {
      Tensor ga = state_tensor(st, "grad_avg", [&] { return zeros_like(p); });
      ga.mul_(alpha).add_(grad * (1 - alpha));
      avg = sqrt(sq - ga * ga).add_(options.eps);
    } else {
      avg = sqrt(sq).add_(options.eps);
    }
    if (options.momentum > 0) {
      Tensor buf = state_tensor(st, "momentum_buffer", [&] { return zeros_like(p); });
      buf.mul_(options.momentum).add_(grad / avg);
      p.sub_(buf * lr);
    } else {
      p.sub_((grad / avg).mul_(lr));
    }
  });
}

// --- Adagrad -------------------------------------------------------------------------------------

Adagrad::Adagrad(std::vector<Tensor> params, AdagradOptions o)
    : Adagrad(one_group(std::move(params)), o) {}
Adagrad::Adagrad(std::vector<ParamGroup> groups, AdagradOptions o)
    : Optimizer(std::move(groups), o.lr, o.weight_decay, "Adagrad"), options(o) {
  TG_CHECK(o.lr_decay >= 0 && o.initial_accumulator_value >= 0 && o.eps >= 0,
           "Adagrad: lr_decay, initial_accumulator_value and eps must be non-negative");
}

void Adagrad::step() {
  (void)lr_tensors();  // refreshed for this step
  for_each_param([&](Tensor& p, const Tensor& g, size_t gi, size_t i) {
    const Tensor lr = lr_tensor(gi, p.device());
    double wd = *param_groups()[gi].weight_decay;
    auto& st = state_of(i);
    Tensor step = next_step(st, p);
    Tensor grad = wd != 0 ? g + p * wd : g;
    Tensor sum = state_tensor(st, "sum", [&] { return full_like(p, options.initial_accumulator_value); });
    sum.add_(grad * grad);
    Tensor clr = lr / (1 + (step - 1) * options.lr_decay);
    p.sub_((grad / sqrt(sum).add_(options.eps)).mul_(clr));
  });
}

}  // namespace tg::optim
