// Learning-rate schedulers (closed forms from the groups' initial rates) and gradient clipping.
#include <cmath>
#include <limits>
#include <numbers>

#include "core/check.h"
#include "tapegrad/ops.h"
#include "tapegrad/optim.h"

namespace tg::optim {

LRScheduler::LRScheduler(Optimizer& optimizer) : optimizer_(optimizer) {
  for (auto& g : optimizer.param_groups()) base_lrs_.push_back(*g.lr);
}

void LRScheduler::apply() {
  auto& groups = optimizer_.param_groups();
  TG_CHECK(groups.size() == base_lrs_.size(),
           "LRScheduler: the optimizer had {} parameter groups when the scheduler was made, now {}",
           base_lrs_.size(), groups.size());
  for (size_t g = 0; g < groups.size(); ++g) groups[g].lr = lr_at(epoch_, base_lrs_[g]);
}

void LRScheduler::step() {
  ++epoch_;
  apply();
}

std::vector<double> LRScheduler::get_last_lr() const {
  std::vector<double> out;
  for (auto& g : optimizer_.param_groups()) out.push_back(*g.lr);
  return out;
}

StepLR::StepLR(Optimizer& o, int64_t step_size, double gamma)
    : LRScheduler(o), step_size(step_size), gamma(gamma) {
  TG_CHECK(step_size > 0, "StepLR: step_size must be positive, got {}", step_size);
  apply();
}
double StepLR::lr_at(int64_t epoch, double base) const {
  return base * std::pow(gamma, static_cast<double>(epoch / step_size));
}

ExponentialLR::ExponentialLR(Optimizer& o, double gamma) : LRScheduler(o), gamma(gamma) { apply(); }
double ExponentialLR::lr_at(int64_t epoch, double base) const {
  return base * std::pow(gamma, static_cast<double>(epoch));
}

CosineAnnealingLR::CosineAnnealingLR(Optimizer& o, int64_t t_max, double eta_min)
    : LRScheduler(o), T_max(t_max), eta_min(eta_min) {
  TG_CHECK(t_max > 0, "CosineAnnealingLR: T_max must be positive, got {}", t_max);
  apply();
}
double CosineAnnealingLR::lr_at(int64_t epoch, double base) const {
  double t = static_cast<double>(epoch) / static_cast<double>(T_max);
  return eta_min + (base - eta_min) * (1 + std::cos(std::numbers::pi * t)) / 2;
}

LinearLR::LinearLR(Optimizer& o, double start, double end, int64_t total)
    : LRScheduler(o), start_factor(start), end_factor(end), total_iters(total) {
  TG_CHECK(start > 0 && start <= 1 && end >= 0 && end <= 1,
           "LinearLR: start_factor must be in (0, 1] and end_factor in [0, 1], got {} and {}",
           start, end);
  TG_CHECK(total > 0, "LinearLR: total_iters must be positive, got {}", total);
  apply();
}
double LinearLR::lr_at(int64_t epoch, double base) const {
  double t = static_cast<double>(std::min(epoch, total_iters)) / static_cast<double>(total_iters);
  return base * (start_factor + (end_factor - start_factor) * t);
}

}  // namespace tg::optim

namespace tg::nn::utils {

double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm, double norm_type,
                       Loc loc) {
  OpScope scope("clip_grad_norm_", loc);
  TG_CHECK(max_norm >= 0, "clip_grad_norm_: max_norm must be non-negative, got {}", max_norm);
  TG_CHECK(norm_type > 0, "clip_grad_norm_: norm_type must be positive, got {}", norm_type);
  NoGradGuard no_grad;
  bool inf = std::isinf(norm_type);
  double total = 0;
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (!g.defined() || g.numel() == 0) continue;
    double n = g.abs().amax().to(kF64).item<double>();
    if (inf) {
      total = std::max(total, n);
    } else {
      total += g.norm(norm_type).to(kF64).pow(norm_type).item<double>();
    }
  }
  if (!inf) total = std::pow(total, 1 / norm_type);
  double coef = max_norm / (total + 1e-6);
  if (coef < 1)
    for (const Tensor& p : params) {
      Tensor g = p.grad();
      if (g.defined()) g.mul_(coef);
    }
  return total;
}

void clip_grad_value_(const std::vector<Tensor>& params, double clip_value, Loc loc) {
  OpScope scope("clip_grad_value_", loc);
  TG_CHECK(clip_value >= 0, "clip_grad_value_: clip_value must be non-negative, got {}", clip_value);
  NoGradGuard no_grad;
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (g.defined()) g.clamp_(-clip_value, clip_value);
  }
}

}  // namespace tg::nn::utils
