// The host thread pool behind run_chunks (Note [One thread pool], Note [Waking the pool]).
#include "backend/parallel.h"

#include <atomic>
#include <chrono>
#include <exception>
#include <mutex>
#include <pthread.h>
#include <sched.h>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace tg {
namespace {

thread_local bool t_in_chunk = false;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

// Note [Waking the pool]
// A training step runs hundreds of short parallel loops. OpenMP's workers (what the pool used
// to be) fell asleep between them under libgomp's default spin policy, and waking a sleeping
// thread is a futex call plus an interrupt, which in a VM costs tens of microseconds: LeNet ran
// slower on 2 threads than on 1 (5.4 vs 4.0 ms a step), and 2.5 ms once libgomp was told to
// spin (OMP_WAIT_POLICY=active), which a library cannot set for its user. So the pool is ours:
// each worker has its own mailbox, spins on it for kSpin after each job (back-to-back loops
// then start in well under a microsecond), and only then sleeps on it (std::atomic::wait);
// the caller notifies only a worker that said it sleeps. Idle workers so burn at most kSpin of
// CPU after the last loop, as OpenMP's do.
constexpr auto kSpin = std::chrono::microseconds(1000);

struct Worker {
  std::atomic<uint32_t> job{0};  // bumped by the caller to hand this worker a job
  std::atomic<bool> sleeping{false};
  std::thread thread;
};

class Pool {
 public:
  void run(int64_t chunks, int threads, void (*fn)(void*, int64_t), void* ctx) {
    if (chunks <= 0) return;
    std::unique_lock<std::mutex> lock(mutex_, std::defer_lock);
    if (threads <= 1 || chunks == 1 || t_in_chunk || !lock.try_lock())
      return serial(chunks, fn, ctx);
    int helpers = static_cast<int>(std::min<int64_t>(threads - 1, chunks - 1));
    while (static_cast<int>(workers_.size()) < helpers) start_worker();
    fn_ = fn;
    ctx_ = ctx;
    chunks_ = chunks;
    next_.store(0, std::memory_order_relaxed);
    arrived_.store(0, std::memory_order_relaxed);
    error_ = nullptr;
    for (int i = 0; i < helpers; ++i) {
      Worker& w = *workers_[static_cast<size_t>(i)];
      w.job.fetch_add(1, std::memory_order_seq_cst);
      if (w.sleeping.load(std::memory_order_seq_cst)) w.job.notify_one();
    }
    work();
    while (arrived_.load(std::memory_order_acquire) < helpers) cpu_relax();
    if (error_) std::rethrow_exception(error_);
  }

 private:
  static void serial(int64_t chunks, void (*fn)(void*, int64_t), void* ctx) {
    bool outer = t_in_chunk;
    t_in_chunk = true;
    try {
      for (int64_t c = 0; c < chunks; ++c) fn(ctx, c);
    } catch (...) {
      t_in_chunk = outer;
      throw;
    }
    t_in_chunk = outer;
  }

  // Takes chunks until none is left; errors are kept for the caller.
  void work() {
    t_in_chunk = true;
    for (;;) {
      int64_t c = next_.fetch_add(1, std::memory_order_relaxed);
      if (c >= chunks_) break;
      try {
        fn_(ctx_, c);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex_);
        if (!error_) error_ = std::current_exception();
      }
    }
    t_in_chunk = false;
  }

  void start_worker() {
    auto w = std::make_unique<Worker>();
    Worker* self = w.get();
    w->thread = std::thread([this, self] { loop(*self); });
    w->thread.detach();  // the pool lives as long as the process (see instance())
    workers_.push_back(std::move(w));
  }

  void loop(Worker& w) {
    uint32_t seen = 0;
    for (;;) {
      uint32_t now = w.job.load(std::memory_order_acquire);
      auto until = std::chrono::steady_clock::now() + kSpin;
      for (int i = 0; now == seen; ++i) {
        cpu_relax();
        now = w.job.load(std::memory_order_acquire);
        if (now == seen && (i & 255) == 255 && std::chrono::steady_clock::now() > until) {
          w.sleeping.store(true, std::memory_order_seq_cst);
          while ((now = w.job.load(std::memory_order_seq_cst)) == seen) w.job.wait(seen);
          w.sleeping.store(false, std::memory_order_relaxed);
        }
      }
      seen = now;
      work();
      arrived_.fetch_add(1, std::memory_order_release);
    }
  }

  std::mutex mutex_;  // one job at a time; a second caller runs its chunks itself
  std::vector<std::unique_ptr<Worker>> workers_;
  void (*fn_)(void*, int64_t) = nullptr;
  void* ctx_ = nullptr;
  int64_t chunks_ = 0;
  std::atomic<int64_t> next_{0};
  std::atomic<int> arrived_{0};
  std::mutex error_mutex_;
  std::exception_ptr error_;
};

// Never destroyed: its detached workers may still be parked in it while the process exits.
// A child of fork() has none of the parent's workers (and maybe a mutex a parent thread held):
// it starts over with a new pool and leaves the copied one alone.
std::atomic<Pool*> g_pool{nullptr};

Pool& instance() {
  static const bool once = [] {
    g_pool.store(new Pool);
    pthread_atfork(nullptr, nullptr, [] { g_pool.store(new Pool); });
    return true;
  }();
  (void)once;
  return *g_pool.load(std::memory_order_acquire);
}

}  // namespace

void run_chunks(int64_t chunks, int threads, void (*fn)(void*, int64_t), void* ctx) {
  instance().run(chunks, threads, fn, ctx);
}

bool in_parallel_region() { return t_in_chunk; }

int usable_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  int hw = static_cast<int>(std::thread::hardware_concurrency());
  return hw > 0 ? hw : 1;
}

}  // namespace tg
