// tg::nn::Module: named parameters, buffers and submodules, as in PyTorch, without holders or
// macros. A custom module is a struct that registers its parts:
//
//   struct Net : nn::Module {
//     nn::Linear fc1{784, 256}, fc2{256, 10};
//     Net() { register_module("fc1", fc1); register_module("fc2", fc2); }
//     Tensor forward(const Tensor& x) override { return fc2(relu(fc1(x))); }
//   };
//
// Note [Modules are handles]
// A module is a handle, like a Tensor: its parameters, buffers, submodules and training flag live
// in shared state, and a copy of a module is the same module. register_module keeps such a copy,
// so the member the user holds and the registered child are one module, whatever happens to the
// parent object later (moves included). Layers keep their tensors as public handles (`fc1.weight`)
// and never replace them: to(), load() and optimizers change their data in place, so every handle
// stays valid. Plain C++ fields of a custom module (an int, a float) are copied with it.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tapegrad/autograd.h"
#include "tapegrad/ops.h"

namespace tg::nn {

class Module {
 public:
  Module();
  virtual ~Module() = default;
  Module(const Module&) = default;  // the same module (see the note above)
  Module& operator=(const Module&) = default;

  // The computation. Modules whose forward takes other arguments define their own overloads.
  virtual Tensor forward(const Tensor& x);
  // forward(x); an error inside names this module's type and the caller's line.
  Tensor operator()(const Tensor& x, Loc loc = Loc::current());

  // Parameters (and buffers) of this module and, with recurse, of its submodules, in registration
  // order; names are dotted paths as in PyTorch's state_dict ("features.0.weight").
  std::vector<Tensor> parameters(bool recurse = true) const;
  std::vector<std::pair<std::string, Tensor&>> named_parameters(bool recurse = true) const;
  std::vector<Tensor> buffers(bool recurse = true) const;
  std::vector<std::pair<std::string, Tensor&>> named_buffers(bool recurse = true) const;
  // Direct submodules, and every module below this one ("" is this one).
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_children() const;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_modules() const;
  // Parameters and buffers by dotted name: what save() writes and load() reads.
  std::map<std::string, Tensor> state_dict() const;
  // Copies every tensor of `state` into this module's (names, shapes and dtypes must match; with
  // strict, no name may be missing or extra). All mismatches are reported in one tg::Error, and
  // nothing is changed unless everything matches.
  void load_state_dict(const std::map<std::string, Tensor>& state, bool strict = true);
  // The state_dict as a safetensors file, with PyTorch's names.
  void save(const std::string& path) const;
  void load(const std::string& path, bool strict = true);

  void train(bool on = true);  // for this module and all below it
  void eval() { train(false); }
  bool is_training() const;
  void zero_grad();  // clears every parameter's grad (undefined, as PyTorch's set_to_none)
  // Every parameter and buffer moved or converted, or, where one fails (a GPU's memory runs
  // out, say), none: the module is as it was.
  Module& to(Device device, Loc loc = Loc::current());
  Module& to(DType dtype, Loc loc = Loc::current());  // floating parameters and buffers only

  // The class name: "Linear", or the custom struct's own name.
  virtual std::string type_name() const;
  // What goes inside the parentheses when printed: "784, 256, bias=true".
  virtual std::string extra_repr() const { return ""; }
  // The module tree, as PyTorch prints it.
  std::string str() const;
  // A table of every submodule run by forward(example): name, type, output shape, parameter
  // count; then totals. Runs forward once without recording gradients.
  std::string summary(const Tensor& example);

 protected:
  // Registers t (made a leaf that requires grad) under `name` and returns the stored handle.
  Tensor& register_parameter(const std::string& name, Tensor t, bool requires_grad = true);
  Tensor& register_buffer(const std::string& name, Tensor t);
  // Registers `module` (a handle: the same module as the caller's) and returns the registered one.
  template <class M>
  M& register_module(const std::string& name, const M& module) {
    static_assert(std::is_base_of_v<Module, M>, "register_module: M must derive from nn::Module");
    auto child = std::make_shared<M>(module);
    add_child(name, child);
    return *child;
  }

 private:
  struct State;
  void add_child(const std::string& name, std::shared_ptr<Module> child);
  void collect(const std::string& prefix, bool recurse, bool buffers,
               std::vector<std::pair<std::string, Tensor&>>& out) const;
  void print(std::string& out, int indent) const;
  std::shared_ptr<State> state_;
  friend class Sequential;
};

std::ostream& operator<<(std::ostream& os, const Module& m);

}  // namespace tg::nn
