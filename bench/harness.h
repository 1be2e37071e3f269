// Timing harness shared by the benchmarks: calibrated repetitions, median of 7 trials, and a
// table row with the ratio to LibTorch.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <vector>

namespace bench {

using Clock = std::chrono::steady_clock;

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
