// The node pool: freed node blocks are kept per thread by size class and reused.
#include "core/pool.h"

#include <new>

namespace tg::pool {

// Note [Node pool]
// Every recorded op allocates a node and its input list, and a backward pass or a dropped tape
// frees a whole chain at once, which overflows glibc's small per-thread caches and sends each
// free through the locked general path. Freed blocks up to kMaxBytes are kept on a per-thread
// list per 64-byte class (at most kPerClass each) and handed out again. The lists are plain
// pointers threaded through the free blocks, so they need no destructor at thread exit (a thread
// that ends keeps its few cached blocks until the process does). Under AddressSanitizer every
// block goes straight to the system, so use-after-free is still caught.
namespace {
constexpr size_t kClass = 64;
constexpr size_t kMaxBytes = 2048;
constexpr size_t kClasses = kMaxBytes / kClass;
#ifdef __SANITIZE_ADDRESS__
constexpr unsigned kPerClass = 0;
#else
constexpr unsigned kPerClass = 8192;
#endif

struct FreeBlock {
  FreeBlock* next;
};
struct Lists {
  FreeBlock* head[kClasses];
  unsigned count[kClasses];
};
constinit thread_local Lists t_lists{};

size_t class_of(size_t nbytes) { return (nbytes + kClass - 1) / kClass - 1; }
}  // namespace

void* allocate(size_t nbytes) {
  if (nbytes == 0 || nbytes > kMaxBytes) return ::operator new(nbytes);
  size_t c = class_of(nbytes);
  Lists& l = t_lists;
  if (FreeBlock* b = l.head[c]) {
    l.head[c] = b->next;
    --l.count[c];
    return b;
  }
  return ::operator new((c + 1) * kClass);
}

void deallocate(void* p, size_t nbytes) {
  if (nbytes == 0 || nbytes > kMaxBytes) return ::operator delete(p);
  size_t c = class_of(nbytes);
  Lists& l = t_lists;
  if (l.count[c] >= kPerClass) return ::operator delete(p);
  auto* b = static_cast<FreeBlock*>(p);
  b->next = l.head[c];
  l.head[c] = b;
  ++l.count[c];
}

}  // namespace tg::pool
