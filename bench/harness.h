// Timing harness shared by the benchmarks: calibrated repetitions, median of 7 trials, and a
// table row with the ratio to LibTorch.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <vector>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace bench {

using Clock = std::chrono::steady_clock;

// Note [The peer's allocator]
// glibc gives blocks above its mmap threshold (128 KB to a few MB) straight back to the kernel
// on free, so a LibTorch step that allocates a weight-sized gradient pays page faults and zeroing
// for it every time. In some VMs a page fault costs microseconds, and then LibTorch's MLP steps
// run 4-8x below its best (measured: 350 vs 1470 examples/s at batch 1). tapegrad caches its
// blocks (Note [CPU allocator]), so every benchmark starts by keeping freed memory in the
// process, for both libraries alike: the peer is compared at its best configuration.
inline void keep_freed_memory() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  std::printf("malloc: freed memory kept in the process (Note [The peer's allocator])\n");
#endif
}

// Median seconds per call of f.
inline double measure(const std::function<void()>& f, double trial_seconds = 0.05) {
  f();  // warm up
  int64_t reps = 1;
  for (;;) {
    auto t0 = Clock::now();
    for (int64_t i = 0; i < reps; ++i) f();
    double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    if (dt >= trial_seconds / 4) {
      reps = std::max<int64_t>(1, static_cast<int64_t>(reps * trial_seconds / dt));
      break;
    }
    reps *= 4;
  }
  std::vector<double> trials;
  for (int t = 0; t < 7; ++t) {
    auto t0 = Clock::now();
    for (int64_t i = 0; i < reps; ++i) f();
    trials.push_back(std::chrono::duration<double>(Clock::now() - t0).count() / reps);
  }
  std::sort(trials.begin(), trials.end());
  return trials[3];
}

// One table row; `theirs` <= 0 means LibTorch was not measured.
inline void row(const char* name, double ours, double theirs, const char* unit,
                bool lower_is_better) {
  if (theirs > 0) {
    double ratio = lower_is_better ? theirs / ours : ours / theirs;
    std::printf("%-40s %12.3f %12.3f  %-10s %6.2fx\n", name, ours, theirs, unit, ratio);
  } else {
    std::printf("%-40s %12.3f %12s  %-10s\n", name, ours, "-", unit);
  }
}

}  // namespace bench
