// A per-thread free list for the memory of tape nodes, tensor handles and storages (see Note [Node pool] in pool.cpp).
#pragma once

#include <cstddef>

namespace tg::pool {

void* allocate(size_t nbytes);
void deallocate(void* p, size_t nbytes);

// An allocator for std::allocate_shared and std::vector that takes its blocks from the pool.
template <class T> struct Allocator {
  using value_type = T;
  Allocator() = default;
  template <class U> Allocator(const Allocator<U>&) {}  // NOLINT: rebinding
  T* allocate(size_t n) { return static_cast<T*>(pool::allocate(n * sizeof(T))); }
  void deallocate(T* p, size_t n) { pool::deallocate(p, n * sizeof(T)); }
  template <class U> bool operator==(const Allocator<U>&) const { return true; }
};

}  // namespace tg::pool
