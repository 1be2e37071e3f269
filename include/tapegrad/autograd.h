// Tape autograd: reverse-mode gradients of anything written with tapegrad ops.
//
//   auto w = tg::randn({3}).requires_grad_();          // a leaf: gradients accumulate in w.grad()
//   auto loss = (x.matmul(w) - y).pow(2).mean();       // each op appends a node to the tape
//   loss.backward();                                   // walks the tape in reverse
//   auto g = tg::grad({loss}, {w}, {.create_graph = true});  // or: gradients as values, and
//   auto h = tg::grad({g[0].sum()}, {w});                     // differentiable again
//
// An op records a node when grad mode is on (the default; NoGradGuard turns it off for a scope)
// and one of its inputs requires grad. Each node keeps the op, the tensors its derivative needs,
// and the user's source line; y.grad_fn()->name() is "MulBackward", tg::print_graph(y) prints the
// tape. Bprops are written in tapegrad ops, so with create_graph the backward pass is itself
// recorded: grad of grad, Hessians, Jacobian-vector products (jacobian, hessian, vjp, jvp, hvp).
#pragma once

#include <functional>
#include <iosfwd>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tapegrad/tensor.h"

namespace tg {

// One recorded op on the tape (PyTorch's grad_fn). Read-only to users.
class Node {
 public:
  virtual ~Node() = default;
  std::string name() const;     // "MulBackward"; "AccumulateGrad" for a leaf's accumulator
  std::string_view op() const;  // the forward op: "mul" ("" for AccumulateGrad)
  Loc where() const;            // the user's line that ran the forward op
  // The nodes that made this node's inputs, in input order (null where no gradient flows).
  std::vector<std::shared_ptr<Node>> next_functions() const;

 protected:
  Node() = default;
};

// --- grad mode (thread-local) -------------------------------------------------------------------
bool is_grad_enabled();
void set_grad_enabled(bool enabled);

// No recording in this scope: inference, and parameter updates (`w -= lr * g`).
class NoGradGuard {
 public:
  NoGradGuard() : prev_(is_grad_enabled()) { set_grad_enabled(false); }
  ~NoGradGuard() { set_grad_enabled(prev_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

// Recording back on inside a NoGradGuard scope.
class EnableGradGuard {
 public:
  EnableGradGuard() : prev_(is_grad_enabled()) { set_grad_enabled(true); }
  ~EnableGradGuard() { set_grad_enabled(prev_); }
  EnableGradGuard(const EnableGradGuard&) = delete;
  EnableGradGuard& operator=(const EnableGradGuard&) = delete;

 private:
  bool prev_;
};

// While one is alive (thread-local), every op's output and every gradient the backward pass
// computes is checked for NaN and Inf; the first one found throws tg::Error naming the op, the
// phase (forward or backward) and the user's line of the forward op.
bool is_anomaly_enabled();
class AnomalyModeGuard {
 public:
  AnomalyModeGuard();
  ~AnomalyModeGuard();
  AnomalyModeGuard(const AnomalyModeGuard&) = delete;
  AnomalyModeGuard& operator=(const AnomalyModeGuard&) = delete;

 private:
  bool prev_;
};

// --- gradients ----------------------------------------------------------------------------------
struct GradOptions {
  // d(outputs)/d(outputs) seeds, one per output; may be left empty for scalar outputs (ones).
  std::vector<Tensor> grad_outputs = {};
  // Keep the saved tensors so the graph can be walked again; defaults to create_graph.
  std::optional<bool> retain_graph = std::nullopt;
  // Record the backward pass, so the gradients are differentiable again.
  bool create_graph = false;
  // An input the outputs do not depend on gets an undefined tensor instead of an error.
  bool allow_unused = false;
};

// d(Σ outputs·grad_outputs)/d(inputs), without touching any .grad(). `grad({loss}, {w, b})`.
std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const GradOptions& options = {}, Loc loc = Loc::current());

// Accumulates d(Σ outputs·grad_outputs)/d(leaf) into leaf.grad() for every leaf that requires
// grad (Tensor::backward is this with one output).
void backward(const std::vector<Tensor>& outputs, const std::vector<Tensor>& grad_outputs = {},
              bool retain_graph = false, bool create_graph = false, Loc loc = Loc::current());

// Sums x over the dims that broadcasting added or expanded, so that it has `shape`: the adjoint
// of broadcasting, used by every bprop of a broadcasting op.
Tensor sum_to(const Tensor& x, const Shape& shape, Loc loc = Loc::current());

// --- transforms of a function from Tensor to Tensor
// -----------------------------------------------
using TensorFn = std::function<Tensor(const Tensor&)>;
// J[i..., j...] = d f(x)[i...] / d x[j...]: shape f(x).shape + x.shape.
Tensor jacobian(const TensorFn& f, const Tensor& x, Loc loc = Loc::current());
// H[i..., j...] = d² f(x) / d x[i...] d x[j...] for a scalar f: shape x.shape + x.shape.
Tensor hessian(const TensorFn& f, const Tensor& x, Loc loc = Loc::current());
// vᵀ·J (the shape of x), with v of the shape of f(x).
Tensor vjp(const TensorFn& f, const Tensor& x, const Tensor& v, Loc loc = Loc::current());
// J·v (the shape of f(x)), with v of the shape of x: forward mode, by the double-vjp trick
// (Theano's R-operator).
Tensor jvp(const TensorFn& f, const Tensor& x, const Tensor& v, Loc loc = Loc::current());
// H·v for a scalar f, with v of the shape of x, without forming H.
Tensor hvp(const TensorFn& f, const Tensor& x, const Tensor& v, Loc loc = Loc::current());

// --- looking at the tape
// -------------------------------------------------------------------------- The tape that produced
// t, one node a line: id, backward name, output shape and dtype, the user's file:line, and where
// its inputs come from.
std::string graph_string(const Tensor& t);
void print_graph(const Tensor& t);  // to stdout
void print_graph(const Tensor& t, std::ostream& os);
std::string to_dot(const Tensor& t);  // Graphviz text: `dot -Tsvg`

}  // namespace tg
