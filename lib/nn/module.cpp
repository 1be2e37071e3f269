// nn::Module: the shared state behind a module handle (Note [Modules are handles] in module.h),
// traversal with dotted names, train/eval, to(), state_dict loading, printing and the summary.
#include <cxxabi.h>

#include <cstdlib>
#include <fmt/format.h>

#include <ostream>
#include <set>

#include "core/check.h"
#include "tapegrad/format.h"
#include "tapegrad/io.h"
#include "tapegrad/nn/module.h"

namespace tg::nn {

struct Module::State {
  std::vector<std::pair<std::string, Tensor>> parameters;
  std::vector<std::pair<std::string, Tensor>> buffers;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children;
  bool training = true;
  std::string type;  // type_name(), cached for operator()
};

namespace {

void check_name(const std::string& name, const char* what) {
  TG_CHECK(!name.empty() && name.find('.') == std::string::npos,
           "{}: name '{}' must be non-empty and contain no '.'", what, name);
}

// While summary() runs: the modules called, in call order, with their output shapes.
struct SummaryRow {
  const void* state;
  Shape shape;
  bool done = false;
};
thread_local std::vector<SummaryRow>* t_summary = nullptr;

}  // namespace

Module::Module() : state_(std::make_shared<State>()) {}

Tensor Module::forward(const Tensor&) {
  throw_error(fmt::format("{}: this module has no forward(const Tensor&)", type_name()));
}

Tensor Module::operator()(const Tensor& x, Loc loc) {
  // Errors inside forward name this module and the caller's line (Note [Error locations]).
  if (state_->type.empty()) state_->type = type_name();
  OpScope scope(state_->type.c_str(), loc);
  if (!t_summary) return forward(x);
  size_t row = t_summary->size();
  t_summary->push_back({state_.get(), {}});
  Tensor out = forward(x);
  (*t_summary)[row].shape = out.shape();
  (*t_summary)[row].done = true;
  return out;
}

Tensor& Module::register_parameter(const std::string& name, Tensor t, bool requires_grad) {
  check_name(name, "register_parameter");
  for (auto& [n, p] : state_->parameters)
    TG_CHECK(n != name, "register_parameter: '{}' is already registered", name);
  if (t.defined() && requires_grad) t.requires_grad_();
  state_->parameters.emplace_back(name, t);
  return state_->parameters.back().second;
}

Tensor& Module::register_buffer(const std::string& name, Tensor t) {
  check_name(name, "register_buffer");
  for (auto& [n, b] : state_->buffers)
    TG_CHECK(n != name, "register_buffer: '{}' is already registered", name);
  state_->buffers.emplace_back(name, t);
  return state_->buffers.back().second;
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> child) {
  check_name(name, "register_module");
  TG_CHECK(child->state_ != state_, "register_module: a module cannot contain itself");
  for (auto& [n, c] : state_->children)
    TG_CHECK(n != name, "register_module: '{}' is already registered", name);
  state_->children.emplace_back(name, std::move(child));
}

// Note: the references point into the states' vectors, which registration may grow; they stay
// valid as long as no part is registered while they are held.
void Module::collect(const std::string& prefix, bool recurse, bool buffers,
                     std::vector<std::pair<std::string, Tensor&>>& out) const {
  for (auto& [name, t] : buffers ? state_->buffers : state_->parameters)
    if (t.defined()) out.emplace_back(prefix + name, t);
  if (!recurse) return;
  for (auto& [name, child] : state_->children) child->collect(prefix + name + ".", true, buffers, out);
}

std::vector<std::pair<std::string, Tensor&>> Module::named_parameters(bool recurse) const {
  std::vector<std::pair<std::string, Tensor&>> out;
  collect("", recurse, false, out);
  return out;
}
std::vector<std::pair<std::string, Tensor&>> Module::named_buffers(bool recurse) const {
  std::vector<std::pair<std::string, Tensor&>> out;
  collect("", recurse, true, out);
  return out;
}
std::vector<Tensor> Module::parameters(bool recurse) const {
  std::vector<Tensor> out;
  for (auto& [n, p] : named_parameters(recurse)) out.push_back(p);
  return out;
}
std::vector<Tensor> Module::buffers(bool recurse) const {
  std::vector<Tensor> out;
  for (auto& [n, b] : named_buffers(recurse)) out.push_back(b);
  return out;
}

std::vector<std::pair<std::string, std::shared_ptr<Module>>> Module::named_children() const {
  return state_->children;
}

std::vector<std::pair<std::string, std::shared_ptr<Module>>> Module::named_modules() const {
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> out;
  // This module itself has no owning pointer here: it appears as a non-owning alias.
  out.emplace_back("", std::shared_ptr<Module>(std::shared_ptr<Module>(), const_cast<Module*>(this)));
  for (size_t i = 0; i < out.size(); ++i) {
    std::string prefix = out[i].first.empty() ? "" : out[i].first + ".";
    for (auto& [name, child] : out[i].second->state_->children)
      out.emplace_back(prefix + name, child);
  }
  return out;
}

std::map<std::string, Tensor> Module::state_dict() const {
  std::map<std::string, Tensor> out;
  for (auto& [n, p] : named_parameters()) out.emplace(n, p);
  for (auto& [n, b] : named_buffers()) out.emplace(n, b);
  return out;
}

void Module::load_state_dict(const std::map<std::string, Tensor>& state, bool strict) {
  std::vector<std::pair<std::string, Tensor&>> mine = named_parameters();
  for (auto& b : named_buffers()) mine.push_back(b);
  std::vector<std::string> problems;
  std::set<std::string> seen;
  for (auto& [name, t] : mine) {
    seen.insert(name);
    auto it = state.find(name);
    if (it == state.end()) {
      if (strict) problems.push_back(fmt::format("missing '{}' ({}, {})", name, t.shape(), dtype_name(t.dtype())));
      continue;
    }
    const Tensor& v = it->second;
    if (v.shape() != t.shape() || v.dtype() != t.dtype())
      problems.push_back(fmt::format("'{}': the module has {} {}, the file has {} {}", name,
                                     dtype_name(t.dtype()), t.shape(), dtype_name(v.dtype()),
                                     v.shape()));
  }
  if (strict)
    for (auto& [name, v] : state)
      if (!seen.count(name)) problems.push_back(fmt::format("unexpected '{}' ({}, {})", name, v.shape(), dtype_name(v.dtype())));
  TG_CHECK(problems.empty(), "load_state_dict: {} mismatch(es) with {}: {}", problems.size(),
           type_name(), fmt::join(problems, "; "));
  NoGradGuard no_grad;
  for (auto& [name, t] : mine) {
    auto it = state.find(name);
    if (it != state.end()) t.copy_(it->second);
  }
}

void Module::save(const std::string& path) const { save_safetensors(path, state_dict()); }

void Module::load(const std::string& path, bool strict) {
  load_state_dict(load_safetensors(path), strict);
}

void Module::train(bool on) {
  for (auto& [n, m] : named_modules()) m->state_->training = on;
}
bool Module::is_training() const { return state_->training; }

void Module::zero_grad() {
  for (auto& [n, p] : named_parameters()) p.set_grad({});
}

namespace {
// Each of `tensors` whose `want` is true set to `make(t)`: all made first, then all set, so that
// a failure leaves every one as it was.
template <class Want, class Make>
void replace_all(const std::vector<Tensor*>& tensors, Want want, Make make) {
  std::vector<std::pair<Tensor*, Tensor>> made;
  for (Tensor* t : tensors)
    if (want(*t)) made.emplace_back(t, make(*t));
  for (auto& [t, m] : made) t->set_data(m);
}
std::vector<Tensor*> parameters_and_buffers(const Module& m) {
  std::vector<Tensor*> all;
  for (auto& [n, p] : m.named_parameters()) all.push_back(&p);
  for (auto& [n, b] : m.named_buffers()) all.push_back(&b);
  return all;
}
}  // namespace

Module& Module::to(Device device, Loc loc) {
  OpScope scope("Module::to", loc);
  NoGradGuard no_grad;
  replace_all(
      parameters_and_buffers(*this), [&](const Tensor& t) { return t.device() != device; },
      [&](const Tensor& t) { return t.to(device); });
  return *this;
}

Module& Module::to(DType dtype, Loc loc) {
  OpScope scope("Module::to", loc);
  TG_CHECK(is_floating(dtype), "Module::to: modules convert to floating dtypes only, got {}",
           dtype_name(dtype));
  NoGradGuard no_grad;
  replace_all(
      parameters_and_buffers(*this),
      [&](const Tensor& t) { return is_floating(t.dtype()) && t.dtype() != dtype; },
      [&](const Tensor& t) { return t.to(dtype); });
  return *this;
}

std::string Module::type_name() const {
  const char* mangled = typeid(*this).name();
  int status = 0;
  char* d = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string name = status == 0 && d ? d : mangled;
  std::free(d);
  for (const char* prefix : {"tg::nn::", "(anonymous namespace)::"})
    if (name.rfind(prefix, 0) == 0) name = name.substr(std::string(prefix).size());
  return name;
}

void Module::print(std::string& out, int indent) const {
  out += type_name() + "(" + extra_repr();
  if (state_->children.empty()) {
    out += ")";
    return;
  }
  out += "\n";
  for (auto& [name, child] : state_->children) {
    out += std::string(indent + 2, ' ') + "(" + name + "): ";
    child->print(out, indent + 2);
    out += "\n";
  }
  out += std::string(indent, ' ') + ")";
}

std::string Module::str() const {
  std::string out;
  print(out, 0);
  return out;
}

std::ostream& operator<<(std::ostream& os, const Module& m) { return os << m.str(); }

std::string Module::summary(const Tensor& example) {
  std::vector<SummaryRow> rows;
  TG_CHECK(!t_summary, "summary: already running on this thread");
  t_summary = &rows;
  Tensor out;
  try {
    NoGradGuard no_grad;
    bool was_training = is_training();
    eval();  // no dropout draws, no running-statistics updates
    out = (*this)(example);
    train(was_training);
  } catch (...) {
    t_summary = nullptr;
    throw;
  }
  t_summary = nullptr;
  // Names and depths of the registered modules, by their state.
  std::map<const void*, std::pair<std::string, std::shared_ptr<Module>>> by_state;
  for (auto& [name, m] : named_modules()) by_state.emplace(m->state_.get(), std::make_pair(name, m));
  auto count = [](const Module& m) {
    int64_t n = 0;
    for (auto& [k, p] : m.named_parameters()) n += p.numel();
    return n;
  };
  std::string text = fmt::format("{:<40} {:<20} {:>12}\n", "Layer (type)", "Output shape", "Param #");
  text += std::string(74, '=') + "\n";
  for (auto& r : rows) {
    auto it = by_state.find(r.state);
    if (it == by_state.end() || it->second.first.empty()) continue;  // the root, or unregistered
    const std::string& name = it->second.first;
    int depth = static_cast<int>(std::count(name.begin(), name.end(), '.'));
    std::string label = std::string(2 * depth, ' ') + name + " (" + it->second.second->type_name() + ")";
    text += fmt::format("{:<40} {:<20} {:>12}\n", label, fmt::format("{}", r.shape),
                        count(*it->second.second));
  }
  int64_t total = 0, trainable = 0;
  for (auto& p : parameters()) {
    total += p.numel();
    if (p.requires_grad()) trainable += p.numel();
  }
  text += std::string(74, '=') + "\n";
  text += fmt::format("Input shape: {}   Output shape: {}\n", example.shape(), out.shape());
  text += fmt::format("Total params: {}\nTrainable params: {}\nNon-trainable params: {}\n", total,
                      trainable, total - trainable);
  return text;
}

}  // namespace tg::nn
