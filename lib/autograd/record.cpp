// Recording: grad mode, the nodes ops append, saved tensors, in-place ops under autograd, and the
// autograd methods of Tensor.
#include <cmath>

#include "autograd/node.h"
#include "core/check.h"
#include "ops/ops_common.h"

namespace tg {
namespace {
thread_local bool t_grad_enabled = true;
thread_local bool t_anomaly = false;

// A view of t's data with no autograd state.
Tensor alias_of(const Tensor& t) {
  const TensorImpl& s = *t.impl();
  auto impl = std::allocate_shared<TensorImpl>(pool::Allocator<TensorImpl>());
  impl->storage = s.storage;
  impl->sizes = s.sizes;
  impl->strides = s.strides;
  impl->offset = s.offset;
  impl->numel = s.numel;
  impl->dtype = s.dtype;
  impl->is_view = s.is_view;
  return Tensor(std::move(impl));
}

const TensorImpl& checked_impl(const Tensor& t, const char* what) {
  if (!t.defined())
    throw_error(fmt::format("{}: the tensor is undefined (default-constructed)", what));
  return *t.impl();
}
}  // namespace

bool is_grad_enabled() { return t_grad_enabled; }
void set_grad_enabled(bool enabled) { t_grad_enabled = enabled; }
bool is_anomaly_enabled() { return t_anomaly; }
AnomalyModeGuard::AnomalyModeGuard() : prev_(t_anomaly) { t_anomaly = true; }
AnomalyModeGuard::~AnomalyModeGuard() { t_anomaly = prev_; }
AnomalySuspend::AnomalySuspend() : prev_(t_anomaly) { t_anomaly = false; }
AnomalySuspend::~AnomalySuspend() { t_anomaly = prev_; }

// --- nodes
// ----------------------------------------------------------------------------------------

std::string NodeImpl::backward_name() const {
  if (is_accumulator) return "AccumulateGrad";
  std::string out;
  bool upper = true;
  for (char c : op_name(op)) {
    if (c == '_') {
      upper = true;
      continue;
    }
    out += upper ? static_cast<char>(std::toupper(static_cast<unsigned char>(c))) : c;
    upper = false;
  }
  return out + "Backward";
}

void NodeImpl::release_saved() {
  for (auto& in : inputs) in.saved.value = Tensor();
  result.value = Tensor();
  attrs.extra = Tensor();
  released = true;
}

// Note [Destroying long tapes]
// A tape is a chain of shared_ptrs (node -> input's node -> ...), so freeing the last handle to
// a chain of 10^6 ops would recurse 10^6 destructors deep. The outermost ~NodeImpl on a thread
// owns a list; every node destroyed while it runs moves its own references there instead of
// dropping them, and the outermost one drops them one at a time.
namespace {
struct Pending {
  std::shared_ptr<NodeImpl> node;
  Tensor tensor;
};
thread_local std::vector<Pending>* t_pending = nullptr;  // trivially destructible on purpose
}  // namespace

NodeImpl::~NodeImpl() {
  std::vector<Pending> local;
  bool outermost = t_pending == nullptr;
  std::vector<Pending>& out = outermost ? local : *t_pending;
  for (auto& in : inputs) {
    if (in.fn) out.push_back({std::move(in.fn), {}});
    if (in.saved.value.defined()) out.push_back({nullptr, std::move(in.saved.value)});
  }
  if (leaf) out.push_back({nullptr, Tensor(std::move(leaf))});
  if (buffer.defined()) out.push_back({nullptr, std::move(buffer)});
  if (!outermost) return;
  t_pending = &local;
  while (!local.empty()) {
    Pending p = std::move(local.back());
    local.pop_back();
  }  // p's references drop here; nodes they free append to `local`
  t_pending = nullptr;
}

std::string Node::name() const { return static_cast<const NodeImpl*>(this)->backward_name(); }
std::string_view Node::op() const {
  auto* n = static_cast<const NodeImpl*>(this);
  return n->is_accumulator ? std::string_view() : op_name(n->op);
}
Loc Node::where() const { return static_cast<const NodeImpl*>(this)->loc; }
std::vector<std::shared_ptr<Node>> Node::next_functions() const {
  std::vector<std::shared_ptr<Node>> out;
  for (const auto& in : static_cast<const NodeImpl*>(this)->inputs) out.push_back(in.fn);
  return out;
}

std::shared_ptr<NodeImpl> accumulator_of(const Tensor& leaf) {
  AutogradMeta& meta = leaf.impl()->autograd_meta();
  if (auto acc = meta.accumulator.lock()) return acc;
  auto acc = std::allocate_shared<NodeImpl>(pool::Allocator<NodeImpl>());
  acc->is_accumulator = true;
  acc->leaf = leaf.impl_ptr();
  acc->out_shape = leaf.shape();
  acc->out_dtype = leaf.dtype();
  acc->out_device = leaf.device();
  acc->loc = OpScope::current_loc();
  meta.accumulator = acc;
  return acc;
}

// --- recording
// ------------------------------------------------------------------------------------

RecordScope::RecordScope(std::initializer_list<const Tensor*> inputs) {
  if (!t_grad_enabled) return;
  for (const Tensor* t : inputs) {
    few_[n_++] = t;
    active_ |= t->defined() && t->impl()->requires_grad;
  }
  if (active_) t_grad_enabled = false;
}

RecordScope::RecordScope(const std::vector<Tensor>& inputs) {
  if (!t_grad_enabled) return;
  list_ = &inputs;
  n_ = inputs.size();
  for (const Tensor& t : inputs) active_ |= t.defined() && t.impl()->requires_grad;
  if (active_) t_grad_enabled = false;
}

RecordScope::~RecordScope() {
  if (active_) t_grad_enabled = true;
}

const Tensor& RecordScope::finish(OpKind kind, const Tensor& out, NodeAttrs attrs) {
  if (t_anomaly && is_floating(out.dtype()))
    check_finite(out, op_name(kind), "forward", OpScope::current_loc());
  if (!active_ || !is_floating(out.dtype())) return out;
  const OpInfo& info = op_info(kind);
  if (info.bprop == nullptr) return out;
  for (size_t i = 0; i < n_; ++i)
    if (input(i)->impl() == out.impl()) return out;  // the op returned its input (a no-op view)
  auto node = std::allocate_shared<NodeImpl>(pool::Allocator<NodeImpl>());
  node->op = kind;
  node->attrs = std::move(attrs);
  node->loc = OpScope::current_loc();
  node->inputs.resize(n_);
  for (size_t i = 0; i < n_; ++i) {
    const Tensor& t = *input(i);
    InputSlot& slot = node->inputs[i];
    const TensorImpl& ti = *t.impl();
    slot.shape = ti.sizes;
    slot.dtype = ti.dtype;
    slot.device = ti.device();
    if (ti.requires_grad) {
      if (ti.grad_fn) {
        slot.fn = ti.grad_fn;
        slot.output_nr = ti.output_nr;
      } else {
        slot.fn = accumulator_of(t);
      }
    }
    if (i < 7 && (info.save & (1u << i))) slot.saved = {t, ti.storage->version.load()};
  }
  if (info.save & kSaveResult) {
    node->saves_result = true;
    node->result = {alias_of(out), out.impl()->storage->version.load()};
  }
  node->out_shape = out.shape();
  node->out_dtype = out.dtype();
  node->out_device = out.device();
  TensorImpl& o = *out.impl();
  o.requires_grad = true;
  o.output_nr = 0;
  o.grad_fn = std::move(node);
  return out;
}

// --- saved tensors
// --------------------------------------------------------------------------------

Tensor BpropCtx::input(size_t i) const { return unpack(node_.inputs[i].saved, "input", i, false); }
Tensor BpropCtx::result() const { return unpack(node_.result, "output", 0, true); }

Tensor BpropCtx::unpack(const SavedTensor& s, const char* what, size_t index,
                        bool is_result) const {
  TG_INTERNAL_ASSERT(s.value.defined());  // the op's save mask does not cover what its bprop reads
  uint64_t now = s.value.version();
  if (now != s.version) {
    throw_error(fmt::format(
        "backward: a tensor that {} needs was modified by an in-place op: the {} {} of {} "
        "(shape {}, {}) is at version {}; expected version {}. It was saved by {} at {}:{}. "
        "Modify a clone() instead, or modify it after backward.",
        node_.backward_name(), what, is_result ? std::string() : std::to_string(index),
        op_name(node_.op), s.value.shape(), dtype_name(s.value.dtype()), now, s.version,
        op_name(node_.op), node_.loc.file_name(), node_.loc.line()));
  }
  if (is_result && create_graph_) {  // see Note [Saved tensors]
    Tensor a = alias_of(s.value);
    a.impl()->requires_grad = true;
    a.impl()->grad_fn = node_.shared_from_this();
    return a;
  }
  return s.value;
}

void check_finite(const Tensor& t, std::string_view op, const char* phase, const Loc& loc) {
  if (t.numel() == 0) return;
  NoGradGuard no_grad;
  Tensor v = t.to(kF64).to(kCPU).contiguous();
  const double* p = v.data_ptr<double>();
  for (int64_t i = 0; i < v.numel(); ++i) {
    if (std::isfinite(p[i])) continue;
    throw Error(fmt::format("anomaly: the {} of {} produced {} (shape {}, {}, element {})\n  the "
                            "{} op was called at {}:{}",
                            phase, op, std::isnan(p[i]) ? "NaN" : "Inf", t.shape(),
                            dtype_name(t.dtype()), i, op, loc.file_name(), loc.line()),
                std::string(op), loc);
  }
}

// --- in-place ops
// ---------------------------------------------------------------------------------

// Note [In-place ops]
// Under autograd, `self.op_(other)` computes `result = op(self, other)` out of place (recorded as
// usual), writes result's values into self's storage, and moves self onto result's node. The old
// self stays on the tape as that node's input: a bprop that needs its value gets a clone made
// before the write (mul_, div_). Views are refused: the viewed tensor would keep a history that
// no longer matches its values.
bool inplace_needs_grad(const Tensor& self, const Tensor* other) {
  return t_grad_enabled &&
         (self.impl()->requires_grad || (other != nullptr && other->impl()->requires_grad));
}

void check_inplace(const Tensor& self, const char* op) {
  const TensorImpl& s = *self.impl();
  TG_CHECK(!(s.requires_grad && !s.grad_fn),
           "{}: a leaf tensor that requires grad (shape {}) cannot be modified in place while grad "
           "mode is on; update it inside a NoGradGuard (as an optimizer step does), or modify a "
           "clone()",
           op, self.shape());
  TG_CHECK(!s.is_view,
           "{}: an in-place op on a view (shape {}) cannot be recorded by autograd: the tensor it "
           "views would not see the change; use the out-of-place op",
           op, self.shape());
}

void rebase_history(Tensor& self, const Tensor& result_in) {
  Tensor result = result_in;
  if (result.impl()->requires_grad && !result.impl()->grad_fn) result = result.clone();
  TG_INTERNAL_ASSERT(result.shape() == self.shape() && result.dtype() == self.dtype());
  if (self.numel() > 0) backend_of(self).copy(impl_of(self), impl_of(result));
  self.impl()->bump_version();
  TensorImpl& s = *self.impl();
  s.requires_grad = result.impl()->requires_grad;
  s.grad_fn = result.impl()->grad_fn;
  s.output_nr = result.impl()->output_nr;
}

// --- Tensor's autograd methods
// --------------------------------------------------------------------

Tensor& Tensor::requires_grad_(bool requires_grad, Loc loc) {
  OpScope scope("requires_grad_", loc);
  TensorImpl& s = const_cast<TensorImpl&>(checked_impl(*this, "requires_grad_"));
  if (s.grad_fn) {
    TG_CHECK(requires_grad,
             "requires_grad_: only leaf tensors can stop requiring grad; this one (shape {}) was "
             "made by {}; use detach()",
             shape(), s.grad_fn->backward_name());
    return *this;
  }
  TG_CHECK(!requires_grad || is_floating(s.dtype),
           "requires_grad_: only floating tensors can require grad, this one is {} (shape {})",
           dtype_name(s.dtype), shape());
  s.requires_grad = requires_grad;
  return *this;
}

bool Tensor::requires_grad() const { return checked_impl(*this, "requires_grad").requires_grad; }
bool Tensor::is_leaf() const { return checked_impl(*this, "is_leaf").grad_fn == nullptr; }

Tensor Tensor::grad() const {
  const TensorImpl& s = checked_impl(*this, "grad");
  return s.meta ? s.meta->grad : Tensor();
}

void Tensor::set_grad(const Tensor& grad, Loc loc) {
  OpScope scope("set_grad", loc);
  TensorImpl& s = const_cast<TensorImpl&>(checked_impl(*this, "set_grad"));
  if (grad.defined()) {
    TG_CHECK(grad.shape() == shape() && grad.dtype() == dtype() && grad.device() == device(),
             "set_grad: the gradient ({}, {}, {}) must match the tensor ({}, {}, {})", grad.shape(),
             dtype_name(grad.dtype()), grad.device().str(), shape(), dtype_name(dtype()),
             device().str());
  }
  if (!grad.defined() && !s.meta) return;
  s.autograd_meta().grad = grad;
}

std::shared_ptr<Node> Tensor::grad_fn() const { return checked_impl(*this, "grad_fn").grad_fn; }

Tensor Tensor::detach() const {
  checked_impl(*this, "detach");
  return alias_of(*this);
}

void Tensor::set_data(const Tensor& src, Loc loc) {
  OpScope scope("set_data", loc);
  TensorImpl& s = const_cast<TensorImpl&>(checked_impl(*this, "set_data"));
  const TensorImpl& from = checked_impl(src, "set_data");
  TG_CHECK(!s.grad_fn, "set_data: only a leaf's data can be replaced (this tensor was made by {})",
           s.grad_fn ? s.grad_fn->name() : "");
  TG_CHECK(!s.requires_grad || is_floating(from.dtype),
           "set_data: a tensor that requires grad cannot hold {} data", dtype_name(from.dtype));
  bool same_kind = s.sizes == from.sizes && s.dtype == from.dtype && device() == src.device();
  if (&s == &from) return;
  s.storage = from.storage;
  s.sizes = from.sizes;
  s.strides = from.strides;
  s.offset = from.offset;
  s.numel = from.numel;
  s.dtype = from.dtype;
  s.is_view = from.is_view;
  if (!same_kind && s.meta) s.meta->grad = Tensor();
}

void Tensor::retain_grad(Loc loc) {
  OpScope scope("retain_grad", loc);
  TensorImpl& s = const_cast<TensorImpl&>(checked_impl(*this, "retain_grad"));
  TG_CHECK(s.requires_grad,
           "retain_grad: the tensor (shape {}) does not require grad, so it gets no gradient",
           shape());
  if (!s.grad_fn) return;  // a leaf keeps its gradient anyway
  s.autograd_meta().retains_grad = true;
  s.grad_fn->retained = impl_ptr();
}

bool Tensor::retains_grad() const {
  const TensorImpl& s = checked_impl(*this, "retains_grad");
  return s.meta && s.meta->retains_grad;
}

void Tensor::add_hook(std::function<Tensor(const Tensor&)> hook, Loc loc) {
  OpScope scope("register_hook", loc);
  TensorImpl& s = const_cast<TensorImpl&>(checked_impl(*this, "register_hook"));
  TG_CHECK(s.requires_grad,
           "register_hook: the tensor (shape {}) does not require grad, so no gradient will reach "
           "the hook",
           shape());
  if (s.grad_fn) {
    s.grad_fn->hooks.push_back(std::move(hook));
  } else {
    s.autograd_meta().hooks.push_back(std::move(hook));
  }
}

void Tensor::backward(const Tensor& gradient, bool retain_graph, bool create_graph, Loc loc) const {
  std::vector<Tensor> seeds;
  if (gradient.defined()) seeds.push_back(gradient);
  tg::backward({*this}, seeds, retain_graph, create_graph, loc);
}

Tensor& Tensor::set_name(std::string name) {
  const_cast<TensorImpl&>(checked_impl(*this, "set_name")).autograd_meta().name = std::move(name);
  return *this;
}

std::string Tensor::name() const {
  const TensorImpl& s = checked_impl(*this, "name");
  return s.meta ? s.meta->name : std::string();
}

}  // namespace tg
