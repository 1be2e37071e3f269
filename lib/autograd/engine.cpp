// The backward pass: backward() and grad() walk the tape from the outputs in reverse topological
// order, calling each node's bprop and summing the gradients that reach each node. No recursion.
#include "autograd/node.h"
#include "core/check.h"
#include "ops/ops_common.h"

namespace tg {

Tensor sum_to(const Tensor& x, const Shape& shape, Loc loc) {
  OpScope scope("sum_to", loc);
  check_defined(x, "sum_to");
  if (x.shape() == shape) return x;
  int64_t lead = x.dim() - static_cast<int64_t>(shape.size());
  TG_CHECK(lead >= 0, "sum_to: shape {} has more dims than the tensor's {}", shape, x.shape());
  Shape dims;
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (d < lead) {
      dims.push_back(d);
      continue;
    }
    int64_t want = shape[d - lead];
    TG_CHECK(want == x.shape()[d] || want == 1,
             "sum_to: shape {} is not a broadcast of the target {} (dim {})", x.shape(), shape, d);
    if (want == 1 && x.shape()[d] != 1) dims.push_back(d);
  }
  if (dims.empty()) return x.reshape(shape);
  return x.sum(dims, true).reshape(shape);
}

namespace {

std::atomic<uint64_t> g_next_task{1};

// Note [The backward pass]
// 1. discover: an iterative depth-first walk from the roots visits every node once, counts for
//    each node the edges that reach it (deps) and lists the nodes children-first.
// 2. needed: a node runs if it leads to something that wants a gradient: with backward() every
//    leaf; with grad() only the requested inputs, so unrelated branches cost nothing.
// 3. execute: a node is ready when every node that feeds it a gradient has run (deps reaches 0);
//    its bprop's gradients are summed into its inputs' nodes' buffers.
// The scratch lives in the nodes (task id, deps, buffer), so a pass allocates no hash maps; it is
// reset at the end, also when a bprop throws.
struct Pass {
  uint64_t id = g_next_task.fetch_add(1, std::memory_order_relaxed);
  bool accumulate = false;  // backward(): leaves accumulate into .grad()
  bool retain_graph = false;
  bool create_graph = false;
  std::vector<NodeImpl*> nodes;  // children first
  std::vector<Tensor> captured;  // grad(): per capture index
};

void visit(Pass& p, NodeImpl* n, std::vector<std::pair<NodeImpl*, size_t>>& stack) {
  if (n->task == p.id) return;
  n->task = p.id;
  n->deps = 0;
  n->needed = false;
  n->capture = -1;
  n->buffer = Tensor();
  stack.push_back({n, 0});
}

void discover(Pass& p, const std::vector<NodeImpl*>& roots) {
  std::vector<std::pair<NodeImpl*, size_t>> stack;
  for (NodeImpl* root : roots) {
    visit(p, root, stack);
    while (!stack.empty()) {
      auto [n, i] = stack.back();
      if (i < n->inputs.size()) {
        stack.back().second++;
        NodeImpl* child = n->inputs[i].fn.get();
        if (child == nullptr) continue;
        visit(p, child, stack);  // resets the scratch on first sight, so count after it
        child->deps++;           // once per edge: each node's inputs are scanned once
      } else {
        p.nodes.push_back(n);
        stack.pop_back();
      }
    }
  }
}

void mark_needed(Pass& p) {
  for (NodeImpl* n : p.nodes) {  // children first
    n->needed = n->capture >= 0 || (p.accumulate && n->is_accumulator);
    for (const auto& in : n->inputs) n->needed |= in.fn && in.fn->needed;
  }
}

bool owns_storage(const Tensor& g) {
  const TensorImpl& s = *g.impl();
  return g.impl_ptr().use_count() == 1 && s.storage.use_count() == 1 && !s.is_view &&
         s.offset == 0 && s.is_contiguous();
}

void accumulate_into(TensorImpl& target, Tensor g, bool create_graph) {
  AutogradMeta& meta = target.autograd_meta();
  if (!create_graph) g = g.detach();
  if (!meta.grad.defined()) {
    // A gradient may be a view (of an expand), the user's seed or a saved tensor: .grad() gets
    // storage of its own, so that zero_() on it touches nothing else.
    meta.grad = create_graph || owns_storage(g) ? g : g.clone();
  } else if (!create_graph && !meta.grad.requires_grad()) {
    NoGradGuard no_grad;
    meta.grad.add_(g);
  } else {
    meta.grad = meta.grad + g;
  }
}

Tensor run_hooks(const std::vector<std::function<Tensor(const Tensor&)>>& hooks, Tensor g,
                 const NodeImpl& n) {
  for (const auto& hook : hooks) {
    Tensor r = hook(g);
    if (!r.defined()) continue;
    TG_CHECK(r.shape() == g.shape(),
             "register_hook: a hook on the gradient of {} returned shape {}; expected {}",
             n.backward_name(), r.shape(), g.shape());
    g = r.dtype() == g.dtype() ? r : r.to(g.dtype());
  }
  return g;
}

void run_bprop(Pass& p, NodeImpl& n, const Tensor& g) {
  if (n.released) {
    throw_error(fmt::format(
        "backward: trying to walk the tape a second time through {} (recorded at {}:{}), whose "
        "saved tensors were freed by the first backward pass; pass retain_graph = true to the "
        "first backward() or grad() to walk it again",
        n.backward_name(), n.loc.file_name(), n.loc.line()));
  }
  const OpInfo& info = op_info(n.op);
  TG_INTERNAL_ASSERT(info.bprop != nullptr);
  bool anomaly = is_anomaly_enabled();
  std::vector<Tensor> grads(n.inputs.size());
  BpropCtx ctx(n, g, grads, p.create_graph);
  {
    // The bprop's own ops are not forward ops: anomaly mode checks what they produce below.
    AnomalySuspend suspend;
    info.bprop(ctx);
  }
  for (size_t i = 0; i < n.inputs.size(); ++i) {
    InputSlot& slot = n.inputs[i];
    Tensor& gi = grads[i];
    if (!slot.fn || !gi.defined() || !slot.fn->needed) continue;
    if (gi.dtype() != slot.dtype) gi = gi.to(slot.dtype);
    if (gi.device() != slot.device) gi = gi.to(slot.device);
    TG_CHECK(gi.shape() == slot.shape,
             "internal error: the bprop of {} gave a gradient of shape {} for its input {} of "
             "shape {}; please report",
             n.backward_name(), gi.shape(), i, slot.shape);
    if (anomaly) check_finite(gi, n.backward_name(), "backward", n.loc);
    NodeImpl& child = *slot.fn;
    child.buffer = child.buffer.defined() ? child.buffer + gi : gi;
  }
}

void execute(Pass& p, const std::vector<NodeImpl*>& roots) {
  std::vector<NodeImpl*> ready;
  for (NodeImpl* r : roots)
    if (r->deps == 0 && r->needed && std::find(ready.begin(), ready.end(), r) == ready.end())
      ready.push_back(r);
  while (!ready.empty()) {
    NodeImpl* n = ready.back();
    ready.pop_back();
    Tensor g = std::move(n->buffer);
    n->buffer = Tensor();
    if (g.defined()) {
      if (n->is_accumulator) {
        if (n->leaf->meta) g = run_hooks(n->leaf->meta->hooks, std::move(g), *n);
        if (n->capture >= 0) p.captured[n->capture] = g;
        if (p.accumulate) accumulate_into(*n->leaf, g, p.create_graph);
      } else {
        g = run_hooks(n->hooks, std::move(g), *n);
        if (n->capture >= 0) p.captured[n->capture] = g;
        if (auto kept = n->retained.lock(); kept && p.accumulate)
          accumulate_into(*kept, g, p.create_graph);
        run_bprop(p, *n, g);
        if (!p.retain_graph) n->release_saved();
      }
    }
    for (const auto& in : n->inputs) {
      NodeImpl* child = in.fn.get();
      if (child != nullptr && child->needed && --child->deps == 0) ready.push_back(child);
    }
  }
}

void reset(Pass& p) {
  for (NodeImpl* n : p.nodes) {
    n->buffer = Tensor();
    n->deps = 0;
    n->capture = -1;
    n->task = 0;
  }
}

std::shared_ptr<NodeImpl> node_of(const Tensor& t) {
  return t.impl()->grad_fn ? t.impl()->grad_fn : accumulator_of(t);
}

// The roots of a pass: each output's node and the gradient it starts with (grad_outputs, or ones
// for a one-element output).
struct Roots {
  std::vector<NodeImpl*> nodes;
  std::vector<Tensor> seeds;
  std::vector<std::shared_ptr<NodeImpl>> keep;  // accumulators made here live through the pass
};

Roots make_roots(const std::vector<Tensor>& outputs, const std::vector<Tensor>& grad_outputs,
                 const char* op) {
  TG_CHECK(!outputs.empty(), "{}: no outputs given", op);
  TG_CHECK(grad_outputs.empty() || grad_outputs.size() == outputs.size(),
           "{}: {} gradients given for {} outputs", op, grad_outputs.size(), outputs.size());
  Roots r;
  for (size_t i = 0; i < outputs.size(); ++i) {
    const Tensor& y = outputs[i];
    TG_CHECK(y.defined(), "{}: output {} is an undefined tensor", op, i);
    TG_CHECK(y.requires_grad(),
             "{}: output {} (shape {}) does not require grad and has no grad_fn: no tensor it was "
             "computed from requires grad, or it was computed under NoGradGuard",
             op, i, y.shape());
    Tensor g = i < grad_outputs.size() ? grad_outputs[i] : Tensor();
    if (!g.defined()) {
      TG_CHECK(y.numel() == 1,
               "{}: a gradient can be implied only for one-element outputs; output {} has shape "
               "{}: pass its gradient",
               op, i, y.shape());
      g = ones_like(y);
    } else {
      TG_CHECK(g.shape() == y.shape(), "{}: the gradient for output {} has shape {}; expected {}",
               op, i, g.shape(), y.shape());
      check_same_device(g, y, op);
      if (g.dtype() != y.dtype()) g = g.to(y.dtype());
    }
    std::shared_ptr<NodeImpl> n = node_of(y);
    r.nodes.push_back(n.get());
    r.keep.push_back(std::move(n));
    r.seeds.push_back(std::move(g));
  }
  return r;
}

void run(Pass& p, const Roots& roots, const std::vector<NodeImpl*>& captures) {
  discover(p, roots.nodes);
  try {
    for (size_t i = 0; i < captures.size(); ++i)
      if (captures[i]->task == p.id && captures[i]->capture < 0)
        captures[i]->capture = static_cast<int32_t>(i);
    mark_needed(p);
    for (size_t i = 0; i < roots.nodes.size(); ++i) {
      NodeImpl* n = roots.nodes[i];
      n->buffer = n->buffer.defined() ? n->buffer + roots.seeds[i] : roots.seeds[i];
    }
    execute(p, roots.nodes);
  } catch (...) {
    reset(p);
    throw;
  }
  reset(p);
}

}  // namespace

std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const GradOptions& options, Loc loc) {
  OpScope scope("grad", loc);
  Pass p;
  p.create_graph = options.create_graph;
  p.retain_graph = options.retain_graph.value_or(options.create_graph);
  Roots roots = make_roots(outputs, options.grad_outputs, "grad");
  TG_CHECK(!inputs.empty(), "grad: no inputs given");
  std::vector<NodeImpl*> captures;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& x = inputs[i];
    TG_CHECK(x.defined(), "grad: input {} is an undefined tensor", i);
    TG_CHECK(x.requires_grad(),
             "grad: input {} (shape {}) does not require grad; call requires_grad_() on it before "
             "computing the outputs",
             i, x.shape());
    std::shared_ptr<NodeImpl> n = node_of(x);
    captures.push_back(n.get());
    roots.keep.push_back(std::move(n));
  }
  p.captured.resize(captures.size());
  {
    EnableGradGuard mode_guard;
    set_grad_enabled(p.create_graph);
    run(p, roots, captures);
  }
  std::vector<Tensor> result(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    // An input given twice shares one capture slot: the first index.
    size_t slot = static_cast<size_t>(std::find(captures.begin(), captures.end(), captures[i]) -
                                      captures.begin());
    result[i] = p.captured[slot];
    TG_CHECK(result[i].defined() || options.allow_unused,
             "grad: input {} (shape {}) was not used to compute the outputs; pass .allow_unused = "
             "true to get an undefined tensor for it",
             i, inputs[i].shape());
  }
  return result;
}

void backward(const std::vector<Tensor>& outputs, const std::vector<Tensor>& grad_outputs,
              bool retain_graph, bool create_graph, Loc loc) {
  OpScope scope("backward", loc);
  Pass p;
  p.accumulate = true;
  p.create_graph = create_graph;
  p.retain_graph = retain_graph || create_graph;
  Roots roots = make_roots(outputs, grad_outputs, "backward");
  EnableGradGuard mode_guard;
  set_grad_enabled(create_graph);
  run(p, roots, {});
}

}  // namespace tg
