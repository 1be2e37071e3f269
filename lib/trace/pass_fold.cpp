// Constant folding: values computed only from constants made inside the function are computed
// once, when the graph is compiled.
#include "trace/passes.h"

namespace tg::trace_detail {

// Note [Constant folding]
// A constant is a temp written once, whole, by a node that reads only constants: fills, iotas,
// literal tensors (tg::tensor({...}) inside the function), and what is computed from them. Inputs
// and state are never constants (state is read by reference at every replay), nor is anything
// random. The folded node runs once here and its buffer is kept by the graph; replays skip it.
// Only values up to kMaxFoldBytes are folded: a constant is memory held for the graph's life,
// while a large fill (zeros for a gradient) costs little to redo and shares the arena.
inline constexpr size_t kMaxFoldBytes = 64 * 1024;

namespace {

std::unique_ptr<TensorImpl> impl_of(const Operand& o, std::shared_ptr<Storage> storage) {
  auto impl = std::make_unique<TensorImpl>();
  impl->storage = std::move(storage);
  impl->sizes = o.view.sizes;
  impl->strides = o.view.strides;
  impl->offset = o.view.offset;
  impl->numel = o.view.numel();
  impl->dtype = o.view.dtype;
  return impl;
}

}  // namespace

std::string fold_constants(Program& p) {
  std::vector<int> writes = write_counts(p);
  std::vector<Node> kept;
  size_t folded = 0, bytes = 0;
  for (Node& n : p.nodes) {
    Buffer& out = p.buffers[n.out.buf];
    bool foldable = n.call != Call::Random && n.call != Call::Fused && n.out2.buf < 0 &&
                    out.kind == BufKind::Temp && !out.persistent() && writes[n.out.buf] == 1 &&
                    p.full_write(n) && out.nbytes <= kMaxFoldBytes;
    for (const Operand& o : n.in) foldable = foldable && p.buffers[o.buf].constant;
    if (!foldable) {
      kept.push_back(std::move(n));
      continue;
    }
    auto storage = allocate_storage(out.nbytes, out.device);
    auto result = impl_of(n.out, storage);
    std::vector<std::unique_ptr<TensorImpl>> ins;
    std::vector<const TensorImpl*> in_ptrs;
    for (const Operand& o : n.in) {
      ins.push_back(impl_of(o, p.buffers[o.buf].kept));
      in_ptrs.push_back(ins.back().get());
    }
    run_call(n, *result, in_ptrs.data(), nullptr);
    out.constant = true;
    out.kept = std::move(storage);
    ++folded;
    bytes += out.nbytes;
  }
  p.nodes = std::move(kept);
  return fmt::format("fold: {} nodes computed at compile time ({} bytes of constants)", folded,
                     bytes);
}

}  // namespace tg::trace_detail
