// The host's one thread pool (Note [One thread pool]): CPU kernels, matmul blocks and a traced
// graph's row tiles all run their parallel chunks on it.
#pragma once

#include <cstdint>
#include <memory>
#include <type_traits>

namespace tg {

// Runs fn(ctx, c) for every chunk c in [0, chunks) on up to `threads` threads, the caller being
// one of them, and returns when all are done. Which thread runs a chunk may vary; what a chunk
// computes must depend only on c. The first exception a chunk throws is rethrown here, after the
// other chunks have run. Called from inside a chunk, or while another thread's job holds the
// pool, the chunks run one after another on the calling thread.
void run_chunks(int64_t chunks, int threads, void (*fn)(void*, int64_t), void* ctx);

template <class F>
void run_chunks(int64_t chunks, int threads, F&& f) {
  using Fn = std::remove_reference_t<F>;
  run_chunks(chunks, threads, [](void* ctx, int64_t c) { (*static_cast<Fn*>(ctx))(c); },
             const_cast<void*>(static_cast<const void*>(std::addressof(f))));
}

// True on a thread while it runs a chunk (kernels called there stay on that thread).
bool in_parallel_region();

// The default thread count: the CPUs this process may run on (its affinity mask, which taskset,
// cgroups' cpusets and containers narrow), not the machine's. More threads than those CPUs
// would make the caller wait on workers that cannot run until the scheduler preempts it.
int usable_cpus();

}  // namespace tg
