// tg::optim: optimizers with PyTorch's update formulas, learning-rate schedulers, and gradient
// clipping (tg::nn::utils). An optimizer updates its parameters in place (their handles stay
// valid) and skips parameters whose grad() is undefined.
//
//   auto opt = optim::Adam(model.parameters(), {.lr = 1e-3, .weight_decay = 0.01});
//   opt.zero_grad(); loss.backward(); opt.step();
#pragma once

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "tapegrad/autograd.h"
#include "tapegrad/tensor.h"

namespace tg::optim {

// Parameters with their own learning rate (and weight decay) where set; the optimizer's options
// fill what is unset.
struct ParamGroup {
  std::vector<Tensor> params;
  std::optional<double> lr = std::nullopt;
  std::optional<double> weight_decay = std::nullopt;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  virtual void step() = 0;
  void zero_grad();  // every parameter's grad becomes undefined (PyTorch's set_to_none)
  // The groups, with lr and weight_decay always set: schedulers and users change lr here.
  std::vector<ParamGroup>& param_groups() { return groups_; }
  const std::vector<ParamGroup>& param_groups() const { return groups_; }
  void add_param_group(ParamGroup group);
  // Per-parameter state ("state.<i>.<name>", i counting parameters over the groups in order) and
  // each group's lr ("param_groups.<g>.lr"), as tensors; load checks names and shapes.
  std::map<std::string, Tensor> state_dict() const;
  void load_state_dict(const std::map<std::string, Tensor>& state);
  void save(const std::string& path) const;  // safetensors
  void load(const std::string& path);

 protected:
  Optimizer(std::vector<ParamGroup> groups, double lr, double weight_decay, const char* name);
  // The state of parameter i (flat index), created empty on first use.
  std::map<std::string, Tensor>& state_of(size_t i);
  // Calls f(param, grad, group, flat index) for every parameter that has a gradient, without
  // recording.
  template <class F> void for_each_param(F&& f);
  // Each group's learning rate as a 0-d f64 tensor on the device of the group's first
  // parameter, refreshed from param_groups()[g].lr now and, inside a traced step, before every
  // replay (so schedulers work on traced steps too).
  std::vector<Tensor> lr_tensors();
  // Group g's learning rate on `device` (a group whose parameters are on several devices has one
  // per device), refreshed as lr_tensors()'.
  Tensor lr_tensor(size_t g, Device device);
  const char* name_;

 private:
  double default_lr_, default_wd_;
  std::vector<std::vector<Tensor>> lr_tensors_;            // per group, one per device
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);  // replay hooks outlive no optimizer
  std::vector<ParamGroup> groups_;
  std::vector<std::map<std::string, Tensor>> state_;
};

struct SGDOptions {
  double lr = 1e-2;
  double momentum = 0;
  double dampening = 0;
  double weight_decay = 0;
  bool nesterov = false;
};
class SGD : public Optimizer {
 public:
  SGD(std::vector<Tensor> params, SGDOptions options = {});
  SGD(std::vector<ParamGroup> groups, SGDOptions options = {});
  void step() override;
  SGDOptions options;
};

struct AdamOptions {
  double lr = 1e-3;
  std::pair<double, double> betas = {0.9, 0.999};
  double eps = 1e-8;
  double weight_decay = 0;  // added to the gradient (L2), as PyTorch's Adam does
  bool amsgrad = false;
};
class Adam : public Optimizer {
 public:
  Adam(std::vector<Tensor> params, AdamOptions options = {});
  Adam(std::vector<ParamGroup> groups, AdamOptions options = {});
  void step() override;
  AdamOptions options;

 protected:
  Adam(std::vector<ParamGroup> groups, AdamOptions options, bool decoupled, const char* name);
  bool decoupled_;
};

struct AdamWOptions {
  double lr = 1e-3;
  std::pair<double, double> betas = {0.9, 0.999};
  double eps = 1e-8;
  double weight_decay = 1e-2;  // decoupled: p ← p·(1 - lr·weight_decay) before the Adam step
  bool amsgrad = false;
};
class AdamW : public Adam {
 public:
  AdamW(std::vector<Tensor> params, AdamWOptions options = {});
  AdamW(std::vector<ParamGroup> groups, AdamWOptions options = {});
};

struct RMSpropOptions {
  double lr = 1e-2;
  double alpha = 0.99;
  double eps = 1e-8;
  double weight_decay = 0;
  double momentum = 0;
  bool centered = false;
};
class RMSprop : public Optimizer {
 public:
  RMSprop(std::vector<Tensor> params, RMSpropOptions options = {});
  RMSprop(std::vector<ParamGroup> groups, RMSpropOptions options = {});
  void step() override;
  RMSpropOptions options;
};

struct AdagradOptions {
  double lr = 1e-2;
  double lr_decay = 0;
  double weight_decay = 0;
  double initial_accumulator_value = 0;
  double eps = 1e-10;
};
class Adagrad : public Optimizer {
 public:
  Adagrad(std::vector<Tensor> params, AdagradOptions options = {});
  Adagrad(std::vector<ParamGroup> groups, AdagradOptions options = {});
  void step() override;
  AdagradOptions options;
};

// --- learning-rate schedulers: each step() moves to the next epoch and sets every group's lr from
// its initial lr by PyTorch's closed form. ------------------------------------------------------------
class LRScheduler {
 public:
  virtual ~LRScheduler() = default;
  void step();
  int64_t last_epoch() const { return epoch_; }
  std::vector<double> get_last_lr() const;

 protected:
  explicit LRScheduler(Optimizer& optimizer);
  void apply();  // sets the lrs for epoch_ (subclasses call it at the end of their constructor)
  virtual double lr_at(int64_t epoch, double base_lr) const = 0;
  Optimizer& optimizer_;
  std::vector<double> base_lrs_;
  int64_t epoch_ = 0;
};

// lr·gamma^⌊epoch/step_size⌋
class StepLR : public LRScheduler {
 public:
  StepLR(Optimizer& optimizer, int64_t step_size, double gamma = 0.1);
  double lr_at(int64_t epoch, double base_lr) const override;
  int64_t step_size;
  double gamma;
};
// lr·gamma^epoch
class ExponentialLR : public LRScheduler {
 public:
  ExponentialLR(Optimizer& optimizer, double gamma);
  double lr_at(int64_t epoch, double base_lr) const override;
  double gamma;
};
// eta_min + (lr - eta_min)·(1 + cos(π·epoch/T_max))/2
class CosineAnnealingLR : public LRScheduler {
 public:
  CosineAnnealingLR(Optimizer& optimizer, int64_t T_max, double eta_min = 0);
  double lr_at(int64_t epoch, double base_lr) const override;
  int64_t T_max;
  double eta_min;
};
// Linear warmup: lr·(start + (end - start)·min(epoch, total_iters)/total_iters) (PyTorch's LinearLR).
class LinearLR : public LRScheduler {
 public:
  LinearLR(Optimizer& optimizer, double start_factor = 1.0 / 3, double end_factor = 1.0,
           int64_t total_iters = 5);
  double lr_at(int64_t epoch, double base_lr) const override;
  double start_factor, end_factor;
  int64_t total_iters;
};

template <class F>
void Optimizer::for_each_param(F&& f) {
  NoGradGuard no_grad;
  size_t i = 0;
  for (size_t gi = 0; gi < groups_.size(); ++gi)
    for (auto& p : groups_[gi].params) {
      Tensor grad = p.grad();
      if (grad.defined()) f(p, grad, gi, i);
      ++i;
    }
}

}  // namespace tg::optim

namespace tg::nn::utils {
// Scales all gradients together so that their joint norm is at most max_norm; returns the norm
// before clipping (norm_type inf: the largest |g|).
double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm, double norm_type = 2,
                       Loc loc = Loc::current());
// Clamps every gradient element into [-clip_value, clip_value].
void clip_grad_value_(const std::vector<Tensor>& params, double clip_value,
                      Loc loc = Loc::current());
}  // namespace tg::nn::utils
