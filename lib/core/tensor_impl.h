// Storage and TensorImpl: the data behind a Tensor handle.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>

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
};

std::shared_ptr<Storage> allocate_storage(size_t nbytes, Device device);

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape sizes;
  Shape strides;  // in elements
  int64_t offset = 0;  // in elements
  int64_t numel = 1;
  DType dtype = kF32;

  Device device() const { return storage->device; }
  // The first element; byte arithmetic since the dtype is erased here.
  char* data() const {
    return static_cast<char*>(storage->data) + offset * static_cast<int64_t>(element_size(dtype));
  }
  bool is_contiguous() const;
  void bump_version() { storage->version.fetch_add(1, std::memory_order_relaxed); }
};

// Row-major strides for a shape.
Shape contiguous_strides(const Shape& sizes);
// Product of sizes; throws if it overflows int64 or a size is negative.
int64_t checked_numel(const Shape& sizes);

// A fresh contiguous tensor (uninitialized) and a view sharing `base`'s storage.
Tensor make_tensor(const Shape& sizes, DType dtype, Device device);
Tensor make_view(const Tensor& base, Shape sizes, Shape strides, int64_t offset);

}  // namespace tg
