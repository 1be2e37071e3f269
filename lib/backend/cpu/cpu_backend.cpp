// The CPU backend: a caching allocator (see Note [CPU allocator]) and the kernels of cpu_kernels.h
// behind the Backend interface.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "backend/cpu/cpu_kernels.h"
#include "backend/cpu/loops.h"
#include "backend/parallel.h"

namespace tg::cpu {

namespace {
std::atomic<int> g_threads{0};
}

// Inside a parallel region (the traced graph's row tiles run one per thread) kernels run on
// their caller's thread.
int num_threads() {
  if (in_parallel_region()) return 1;
  int n = g_threads.load(std::memory_order_relaxed);
  return n > 0 ? n : 1;
}

// Note [CPU allocator]
// glibc hands blocks of a few MB straight back to the kernel on free, so a training loop that
// allocates the same activations every step pays page faults and zeroing each time. Freed blocks
// are kept here by size (rounded up to a size class) and reused; small blocks use the same path.
// The cache holds at most kCacheLimit bytes; past that, blocks go back to the system.
class CachingAllocator {
 public:
  static constexpr size_t kAlign = 64;
#ifdef __SANITIZE_ADDRESS__
  static constexpr size_t kCacheLimit = 0;  // let ASan see every use after free
  static constexpr int kLocalPerClass = 0;
#else
  static constexpr size_t kCacheLimit = size_t{1} << 30;
  static constexpr int kLocalPerClass = 16;
#endif
  static constexpr size_t kSmall = 4096;  // blocks up to this size use per-thread caches
  static constexpr int kSmallClasses = kSmall / kAlign;

  void* allocate(size_t nbytes) {
    size_t size = size_class(nbytes);
    if (size <= kSmall) {
      LocalCache& lc = local();
      auto& slot = lc.blocks[size / kAlign - 1];
      if (lc.count[size / kAlign - 1] > 0) return slot[--lc.count[size / kAlign - 1]];
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(size);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        cached_ -= size;
        return p;
      }
    }
    void* p = std::aligned_alloc(kAlign, size);
    TG_CHECK(p != nullptr, "out of memory allocating {} bytes on the CPU", nbytes);
    return p;
  }

  void deallocate(void* p, size_t nbytes) {
    size_t size = size_class(nbytes);
    if (size <= kSmall && kLocalPerClass > 0) {
      LocalCache& lc = local();
      int c = static_cast<int>(size / kAlign - 1);
      if (lc.count[c] < kLocalPerClass) {
        lc.blocks[c][lc.count[c]++] = p;
        return;
      }
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_ + size <= kCacheLimit) {
        free_[size].push_back(p);
        cached_ += size;
        return;
      }
    }
    std::free(p);
  }

 private:
  // Multiples of 64 bytes up to 4 KiB, then four classes per power of two.
  static size_t size_class(size_t n) {
    if (n <= kSmall) return (n + kAlign - 1) / kAlign * kAlign;
    size_t p = size_t{1} << (63 - __builtin_clzll(n - 1));  // highest power of two below n
    size_t step = p / 4;
    return (n + step - 1) / step * step;
  }

  // A lock-free cache of small blocks per thread: the common case of a tight loop of small ops
  // never touches the mutex. Blocks go back to the system when the thread ends.
  struct LocalCache {
    void* blocks[kSmallClasses][kLocalPerClass > 0 ? kLocalPerClass : 1];
    int count[kSmallClasses] = {};
    ~LocalCache() {
      for (int c = 0; c < kSmallClasses; ++c)
        for (int i = 0; i < count[c]; ++i) std::free(blocks[c][i]);
    }
  };
  static LocalCache& local() {
    thread_local LocalCache cache;
    return cache;
  }

  std::mutex mutex_;
  std::map<size_t, std::vector<void*>> free_;
  size_t cached_ = 0;
};

class CpuBackend final : public Backend {
 public:
  CpuBackend() { set_threads(usable_cpus()); }
  void set_threads(int n) {
    g_threads = n;
    set_blas_threads(n);
  }

  void* allocate(size_t nbytes) override { return allocator_.allocate(nbytes); }
  void deallocate(void* p, size_t nbytes) override { allocator_.deallocate(p, nbytes); }
  void synchronize() override {}
  void copy(const TensorImpl& dst, const TensorImpl& src) override { copy_kernel(dst, src); }
  void copy_from_host(const TensorImpl& dst, const void* src) override {
    if (dst.numel == 0) return;
    std::memcpy(dst.data(), src, static_cast<size_t>(dst.numel) * element_size(dst.dtype));
  }
  void copy_to_host(void* dst, const TensorImpl& src) override {
    if (src.numel == 0) return;
    std::memcpy(dst, src.data(), static_cast<size_t>(src.numel) * element_size(src.dtype));
  }
  void fill(const TensorImpl& dst, Scalar value) override { fill_kernel(dst, value); }
  void iota(const TensorImpl& dst, double start, double step) override {
    iota_kernel(dst, start, step);
  }
  void random(RandomKind kind, const TensorImpl& dst, uint64_t seed, uint64_t offset, double a,
              double b) override {
    random_kernel(kind, dst, seed, offset, a, b);
  }
  void unary(OpKind kind, const TensorImpl& out, const TensorImpl& x,
             const OpAttrs& attrs) override {
    unary_kernel(kind, out, x, attrs);
  }
  void binary(OpKind kind, const TensorImpl& out, const TensorImpl& a,
              const TensorImpl& b) override {
    binary_kernel(kind, out, a, b);
  }
  void where(const TensorImpl& out, const TensorImpl& cond, const TensorImpl& a,
             const TensorImpl& b) override {
    where_kernel(out, cond, a, b);
  }
  void reduce(OpKind kind, const TensorImpl& out, const TensorImpl& x, int nreduced) override {
    reduce_kernel(kind, out, x, nreduced);
  }
  void matmul(const TensorImpl& out, const TensorImpl& a, const TensorImpl& b) override {
    matmul_kernel(out, a, b);
  }
  void matmul_update(const TensorImpl& out, const TensorImpl& a, const TensorImpl& b, double alpha,
                     double beta, const TensorImpl* scale) override {
    matmul_update_kernel(out, a, b, alpha, beta, scale);
  }
  void index(OpKind kind, const TensorImpl& out, const TensorImpl& x, int dim,
             const TensorImpl& index) override {
    index_kernel(kind, out, x, dim, index);
  }
  void window(OpKind kind, const TensorImpl& out, const TensorImpl& x, const Window2d& w,
              const TensorImpl* indices) override {
    window_kernel(kind, out, x, w, indices);
  }
  // Device-side arguments are host memory here: the CPU's stand-in for a recording (tests)
  // replays index ops and random draws as CUDA's would.
  bool has_device_arguments() const override { return true; }
  void index_flagged(OpKind kind, const TensorImpl& out, const TensorImpl& x, int dim,
                     const TensorImpl& index, const TensorImpl& flag) override {
    const TensorImpl& target = kind == OpKind::ScatterAdd ? out : x;
    int64_t bad = 0;
    if (find_bad_index(index, target.sizes.empty() ? 1 : target.sizes[dim], bad)) {
      auto* f = reinterpret_cast<int64_t*>(flag.data());
      f[0] = 1;
      f[1] = bad;
      return;
    }
    index_kernel(kind, out, x, dim, index);
  }
  void random_from(RandomKind kind, const TensorImpl& dst, const TensorImpl& slot, double a,
                   double b) override {
    const auto* s = reinterpret_cast<const int64_t*>(slot.data());
    random_kernel(kind, dst, static_cast<uint64_t>(s[0]), static_cast<uint64_t>(s[1]), a, b);
  }
  void fused(const std::vector<FusedStep>& steps, const TensorImpl& out,
             const TensorImpl* const* inputs, size_t ninputs) override {
    fused_kernel(steps, out, inputs, ninputs);
  }
  void fused_sum(const std::vector<FusedStep>& steps, const TensorImpl& out,
                 const TensorImpl* const* inputs, size_t ninputs, int nreduced) override {
    if (!fused_sum_kernel(steps, out, inputs, ninputs, nreduced))
      Backend::fused_sum(steps, out, inputs, ninputs, nreduced);
  }

 private:
  CachingAllocator allocator_;
};

CpuBackend& instance() {
  // Never destroyed: tensors in static storage may outlive any destruction order we could pick.
  static CpuBackend* backend = new CpuBackend();
  return *backend;
}

}  // namespace tg::cpu

namespace tg {

Backend& cpu_backend() { return cpu::instance(); }

void set_num_threads(int n, Loc loc) {
  OpScope scope("set_num_threads", loc);
  TG_CHECK(n >= 1, "set_num_threads: expected at least 1 thread, got {}", n);
  cpu::instance().set_threads(n);
}
int get_num_threads() { return cpu::num_threads(); }

}  // namespace tg
