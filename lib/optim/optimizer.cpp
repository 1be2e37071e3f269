// Optimizer: parameter groups, per-parameter state and its saving; the update rules live in
// updates.cpp, the schedulers and clipping in schedulers.cpp.
#include <fmt/format.h>

#include "core/check.h"
#include "tapegrad/optim.h"
#include "tapegrad/ops.h"
#include <cstdio>
#include "tapegrad/format.h"
#include "tapegrad/io.h"
#include "tapegrad/trace.h"

namespace tg::optim {

Optimizer::Optimizer(std::vector<ParamGroup> groups, double lr, double wd, const char* name)
    : name_(name), default_lr_(lr), default_wd_(wd) {
  TG_CHECK(lr >= 0, "{}: learning rate must be non-negative, got {}", name, lr);
  TG_CHECK(wd >= 0, "{}: weight_decay must be non-negative, got {}", name, wd);
  for (auto& g : groups) add_param_group(std::move(g));
}

void Optimizer::add_param_group(ParamGroup g) {
  if (!g.lr) g.lr = default_lr_;
  if (!g.weight_decay) g.weight_decay = default_wd_;
  for (const Tensor& p : g.params) {
    TG_CHECK(p.defined(), "{}: a parameter is undefined", name_);
    TG_CHECK(p.is_leaf() && is_floating(p.dtype()),
             "{}: parameters must be floating leaves (got a {} {} tensor{})", name_,
             dtype_name(p.dtype()), p.shape(), p.is_leaf() ? "" : " made by an op");
    for (const auto& other : groups_)
      for (const Tensor& q : other.params)
        TG_CHECK(q.impl() != p.impl(), "{}: a parameter appears in two groups", name_);
    state_.emplace_back();
  }
  groups_.push_back(std::move(g));
}

void Optimizer::zero_grad() {
  for (auto& g : groups_)
    for (auto& p : g.params) p.set_grad({});
}

std::map<std::string, Tensor>& Optimizer::state_of(size_t i) { return state_[i]; }

std::vector<Tensor> Optimizer::lr_tensors() {
  {
    NoTraceGuard outside_trace;  // state of the traced step, not part of it
    lr_tensors_.resize(groups_.size());
    for (size_t g = 0; g < groups_.size(); ++g)
      for (Tensor& t : lr_tensors_[g]) t.fill_(*groups_[g].lr);
  }
  std::weak_ptr<int> alive = alive_;
  on_replay([this, alive] {
    if (!alive.lock()) return;
    for (size_t g = 0; g < groups_.size() && g < lr_tensors_.size(); ++g)
      for (Tensor& t : lr_tensors_[g]) t.fill_(*groups_[g].lr);
  });
  std::vector<Tensor> out;
  for (size_t g = 0; g < groups_.size(); ++g)
    out.push_back(
        lr_tensor(g, groups_[g].params.empty() ? Device(kCPU) : groups_[g].params[0].device()));
  return out;
}

// Made where the parameters are, so that an update never mixes devices (on a GPU, also no copy
// per step); made outside any trace, like the rest of the optimizer's state.
Tensor Optimizer::lr_tensor(size_t g, Device device) {
  if (lr_tensors_.size() < groups_.size()) lr_tensors_.resize(groups_.size());
  for (const Tensor& t : lr_tensors_[g])
    if (t.device() == device) return t;
  NoTraceGuard outside_trace;
  return lr_tensors_[g].emplace_back(full({}, *groups_[g].lr, {.dtype = kF64, .device = device}));
}

std::map<std::string, Tensor> Optimizer::state_dict() const {
  std::map<std::string, Tensor> out;
  for (size_t i = 0; i < state_.size(); ++i)
    for (auto& [k, v] : state_[i]) out.emplace(fmt::format("state.{}.{}", i, k), v);
  for (size_t g = 0; g < groups_.size(); ++g) {
    out.emplace(fmt::format("param_groups.{}.lr", g), tensor(*groups_[g].lr, {.dtype = kF64}));
    out.emplace(fmt::format("param_groups.{}.num_params", g),
                tensor(static_cast<int64_t>(groups_[g].params.size())));
  }
  return out;
}

void Optimizer::load_state_dict(const std::map<std::string, Tensor>& state) {
  // Check everything first, then apply: a bad file changes nothing.
  std::vector<std::map<std::string, Tensor>> fresh(state_.size());
  std::vector<double> lrs(groups_.size(), -1);
  for (auto& [key, v] : state) {
    size_t index = 0;
    char rest[64] = {0};
    if (std::sscanf(key.c_str(), "param_groups.%zu.%63s", &index, rest) == 2) {
      std::string field = rest;
      TG_CHECK(index < groups_.size() && v.numel() == 1 && (field == "lr" || field == "num_params"),
               "{}: load_state_dict: '{}' does not match this optimizer's {} groups", name_, key,
               groups_.size());
      if (field == "lr") lrs[index] = v.to(kF64).item<double>();
      else
        TG_CHECK(v.to(kI64).item<int64_t>() == static_cast<int64_t>(groups_[index].params.size()),
                 "{}: load_state_dict: param_groups.{} had {} parameters, this optimizer's has {}",
                 name_, index, v.to(kI64).item<int64_t>(), groups_[index].params.size());
      continue;
    }
    TG_CHECK(std::sscanf(key.c_str(), "state.%zu.%63s", &index, rest) == 2 && index < state_.size(),
             "{}: load_state_dict: unexpected entry '{}' (this optimizer has {} parameters)", name_,
             key, state_.size());
    fresh[index][rest] = v.clone();
  }
  size_t i = 0;
  for (auto& g : groups_)
    for (auto& p : g.params) {
      for (auto& [k, v] : fresh[i]) {
        TG_CHECK(k == "step" || v.shape() == p.shape(),
                 "{}: load_state_dict: state.{}.{} has shape {}, its parameter {}", name_, i, k,
                 v.shape(), p.shape());
        v = v.to(p.device());  // the state lives with its parameter
      }
      ++i;
    }
  for (size_t g = 0; g < groups_.size(); ++g)
    TG_CHECK(lrs[g] >= 0, "{}: load_state_dict: param_groups.{}.lr is missing", name_, g);
  state_ = std::move(fresh);
  for (size_t g = 0; g < groups_.size(); ++g) groups_[g].lr = lrs[g];
}

void Optimizer::save(const std::string& path) const {
  save_safetensors(path, state_dict(), {{"optimizer", name_}});
}

void Optimizer::load(const std::string& path) { load_state_dict(load_safetensors(path)); }

}  // namespace tg::optim
