// The tape's node, what ops call to record one (RecordScope), and what a bprop sees (BpropCtx).
#pragma once

#include <array>
#include <span>
#include <vector>

#include "core/pool.h"
#include "backend/backend.h"
#include "core/tensor_impl.h"
#include "tapegrad/autograd.h"

namespace tg {

// Scalar and shape attributes a bprop needs: reduced dims and keepdim, a permutation, a slice...
struct NodeAttrs {
  OpAttrs scalars;  // PowScalar exponent, Clamp bounds
  std::vector<int64_t>
      dims;                // reduced dims (wrapped), permutation (a heap list: most ops have none)
  int64_t dim = 0;         // the dim of slice/select/cat/gather/softmax...; diagonal: offset
  int64_t i1 = 0, i2 = 0;  // slice: start, step; select: index; diagonal: dim1, dim2
  bool keepdim = false;
  Tensor extra;  // a by-product of the forward (Note [Saved by-products])
};

// Note [Saved by-products]
// Some forwards compute something their bprop needs again: max_pool2d's argmax indices, conv2d's
// im2col columns. The node keeps it in attrs.extra (freed with the saved tensors) instead of
// recomputing it. Such a value is a constant of the tape: a bprop may use it only where it needs
// no gradient of its own (indices always; columns only when the backward pass is not recorded).

// A tensor kept for the bprop, with the version it had (see Note [Saved tensors]).
struct SavedTensor {
  Tensor value;
  uint64_t version = 0;
};

// One input of a node: where its gradient goes and what shape/dtype that gradient must have.
struct InputSlot {
  InputSlot() {}  // see Note [No zeroing on construction]
  std::shared_ptr<NodeImpl> fn;  // its grad_fn, its leaf's AccumulateGrad node, or null (no grad)
  uint32_t output_nr = 0;
  Shape shape;
  DType dtype = kF32;
  Device device;
  SavedTensor saved;  // set when the op's save mask asks for this input
};

// Note [Saved tensors]
// A node saves the inputs and output its bprop reads, with the storage version each had. An
// in-place op on a saved tensor bumps the version and the bprop refuses to read it (naming the op
// and where it was recorded). The output is saved as an alias without history, since the output's
// own grad_fn is this node (a cycle otherwise); when the backward pass is recorded (create_graph)
// the alias gets this node back as its grad_fn, so second derivatives flow through it.
// Note [No zeroing on construction]
// make_shared<T>() and vector::resize value-initialize, and for a class whose default
// constructor is not user-provided that means zero-filling the whole object first: the 16-dim
// inline Shapes make a node, its input slots and a TensorImpl several hundred bytes each, and
// zeroing them was a fifth of recording an op. Every member that needs a value has a default
// member initializer, so these classes declare an empty constructor and skip the fill.
class NodeImpl final : public Node, public std::enable_shared_from_this<NodeImpl> {
 public:
  NodeImpl() {}
  ~NodeImpl() override;

  OpKind op = OpKind::Neg;
  bool is_accumulator = false;  // AccumulateGrad: gradients go into `leaf`'s .grad()
  std::shared_ptr<TensorImpl> leaf;
  std::vector<InputSlot, pool::Allocator<InputSlot>> inputs;
  NodeAttrs attrs;
  Shape out_shape;
  DType out_dtype = kF32;
  Device out_device;
  bool saves_result = false;
  SavedTensor result;
  Loc loc;
  std::vector<std::function<Tensor(const Tensor&)>> hooks;  // on the output's gradient
  std::weak_ptr<TensorImpl> retained;                       // the output, when it retains its grad
  bool released = false;  // saved tensors freed by a backward pass

  // Engine scratch (see engine.cpp); valid during one pass only.
  uint64_t task = 0;
  int32_t deps = 0;
  bool needed = false;
  int32_t capture = -1;  // index of this node among grad()'s inputs
  Tensor buffer;         // the gradient of the output, summed over its uses

  std::string backward_name() const;
  void release_saved();
};

// The leaf's AccumulateGrad node, made on first use and shared by every op that reads the leaf.
std::shared_ptr<NodeImpl> accumulator_of(const Tensor& leaf);

// Records one primitive op. Made at the start of the op with its inputs: when grad mode is on and
// an input requires grad it is active, and it turns grad mode off until it ends, so the ops the
// forward calls internally (casts, views, composites) do not record. finish() then records one
// node for the whole op, and checks the output in anomaly mode.
class RecordScope {
 public:
  RecordScope(std::initializer_list<const Tensor*> inputs);
  explicit RecordScope(const std::vector<Tensor>& inputs);
  ~RecordScope();
  RecordScope(const RecordScope&) = delete;
  RecordScope& operator=(const RecordScope&) = delete;

  bool active() const { return active_; }
  // `out` was made by `kind` from the inputs; records it (when active) and returns it.
  const Tensor& finish(OpKind kind, const Tensor& out, NodeAttrs attrs = {});

 private:
  const Tensor* input(size_t i) const { return list_ ? &(*list_)[i] : few_[i]; }
  std::array<const Tensor*, 3> few_{};
  const std::vector<Tensor>* list_ = nullptr;
  size_t n_ = 0;
  bool active_ = false;
};

// The in-place ops under autograd: checks the op is allowed on `self`, writes `result`'s values
// into self and gives self result's history (see Note [In-place ops] in autograd/record.cpp).
bool inplace_needs_grad(const Tensor& self, const Tensor* other);
void check_inplace(const Tensor& self, const char* op);
void rebase_history(Tensor& self, const Tensor& result);

// What a bprop reads and writes. Bprops use public ops only, so they can be recorded themselves.
class BpropCtx {
 public:
  BpropCtx(NodeImpl& node, Tensor g, std::vector<Tensor>& grads, bool create_graph)
      : grad(std::move(g)), node_(node), grads_(grads), create_graph_(create_graph) {}

  const Tensor grad;             // of the output
  Tensor input(size_t i) const;  // saved input i, version-checked
  Tensor result() const;         // saved output, version-checked
  bool needs(size_t i) const { return node_.inputs[i].fn != nullptr; }
  const Shape& input_shape(size_t i) const { return node_.inputs[i].shape; }
  DType input_dtype(size_t i) const { return node_.inputs[i].dtype; }
  Device input_device(size_t i) const { return node_.inputs[i].device; }
  size_t num_inputs() const { return node_.inputs.size(); }
  const NodeAttrs& attrs() const { return node_.attrs; }
  bool create_graph() const { return create_graph_; }  // is this backward pass being recorded?
  // The gradient for input i (ignored when the input needs none).
  void set(size_t i, Tensor g) {
    if (needs(i)) grads_[i] = std::move(g);
  }

 private:
  Tensor unpack(const SavedTensor& s, const char* what, size_t index, bool is_result) const;
  NodeImpl& node_;
  std::vector<Tensor>& grads_;
  bool create_graph_;
};

// Turns anomaly mode's forward checks off for a scope (the engine, around a bprop).
class AnomalySuspend {
 public:
  AnomalySuspend();
  ~AnomalySuspend();
  AnomalySuspend(const AnomalySuspend&) = delete;
  AnomalySuspend& operator=(const AnomalySuspend&) = delete;

 private:
  bool prev_;
};

// Anomaly mode: throws when t holds a NaN or Inf, naming the op, the phase and the line.
void check_finite(const Tensor& t, std::string_view op, const char* phase, const Loc& loc);

}  // namespace tg
