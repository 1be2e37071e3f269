// Storage and TensorImpl: the data behind a Tensor handle.
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tapegrad/tensor.h"

namespace tg {

// A block of device memory. Views share one Storage, and with it the version counter that
// in-place ops bump (autograd compares it against the version a saved tensor had).
struct Storage {
  Storage(void* data, size_t nbytes, Device device) : data(data), nbytes(nbytes), device(device) {}
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data;
  size_t nbytes;
  Device device;
  std::atomic<uint64_t> version{0};
  bool owns_data = true;  // false: a slice of a traced graph's arena (Note [Memory plan])
  // Note [Indices checked once]
  // Where code knows the i64 indices that fill this storage to be in range, it says so: every
  // index lies in [0, index_bound) while `version` is index_version. Eager cross_entropy has just
  // read its targets' bounds on the host; max pooling's kernel wrote positions in its input's
  // plane. A backend whose own check would wait for the device (CUDA) then skips it, for the
  // gather and for the scatter of its gradient, so an eager CNN step waits once, not three times.
  // Only set on storages the setter made; any write through an op bumps the version, ending it
  // (the CPU, where a host pointer could write without one, checks anyway: it costs no wait).
  int64_t index_bound = -1;
  uint64_t index_version = 0;
};

std::shared_ptr<Storage> allocate_storage(size_t nbytes, Device device);

class NodeImpl;

// The rarely used autograd state of a tensor, allocated on first use (see Note [Autograd state]).
struct AutogradMeta {
  Tensor grad;                                           // accumulated by backward()
  std::vector<std::function<Tensor(const Tensor&)>> hooks;  // of a leaf (a non-leaf's sit on its node)
  std::weak_ptr<NodeImpl> accumulator;                   // a leaf's AccumulateGrad node, while alive
  bool retains_grad = false;
  std::string name;
};

// Note [Autograd state]
// Every op output that is recorded needs requires_grad, its grad_fn and its output index, so those
// live inline in TensorImpl: recording allocates the node and nothing else. The grad, hooks, name
// and a leaf's accumulator are rare and live in AutogradMeta, allocated when first set.
struct TensorImpl {
  // User-provided on purpose (Note [No zeroing on construction]).
  TensorImpl() {}

  std::shared_ptr<Storage> storage;
  Shape sizes;
  Shape strides;  // in elements
  int64_t offset = 0;  // in elements
  int64_t numel = 1;
  DType dtype = kF32;
  bool is_view = false;        // shares storage with the tensor it was viewed from
  bool requires_grad = false;  // a leaf that asked for it, or the output of a recorded op
  uint32_t output_nr = 0;      // which output of grad_fn this is
  std::shared_ptr<NodeImpl> grad_fn;
  std::unique_ptr<AutogradMeta> meta;

  AutogradMeta& autograd_meta() {
    if (!meta) meta = std::make_unique<AutogradMeta>();
    return *meta;
  }
  Device device() const { return storage->device; }
  // The first element; byte arithmetic since the dtype is erased here.
  char* data() const {
    return static_cast<char*>(storage->data) + offset * static_cast<int64_t>(element_size(dtype));
  }
  bool is_contiguous() const;
  void bump_version() { storage->version.fetch_add(1, std::memory_order_relaxed); }
};

// Note [Indices checked once]: mark t's storage as holding indices in [0, bound) only, and ask
// whether it is known to (for a dim of `size`: [0, bound) within [-size, size)).
inline void mark_indices_below(const TensorImpl& t, int64_t bound) {
  t.storage->index_bound = bound;
  t.storage->index_version = t.storage->version.load(std::memory_order_relaxed);
}
inline bool indices_known_within(const TensorImpl& t, int64_t size) {
  const Storage& s = *t.storage;
  return s.index_bound >= 0 && s.index_bound <= size &&
         s.index_version == s.version.load(std::memory_order_relaxed);
}

// Row-major strides for a shape.
Shape contiguous_strides(const Shape& sizes);
// Product of sizes; throws if it overflows int64 or a size is negative.
int64_t checked_numel(const Shape& sizes);

// A fresh contiguous tensor (uninitialized) and a view sharing `base`'s storage.
Tensor make_tensor(const Shape& sizes, DType dtype, Device device);
Tensor make_view(const Tensor& base, Shape sizes, Shape strides, int64_t offset);

}  // namespace tg
