// Core benchmark: per-op dispatch overhead, elementwise throughput and matmul, tapegrad beside
// LibTorch in one process, both on one thread. Each figure is the median of 7 trials of a
// calibrated number of repetitions. Run: scripts/tg bench  (or build/release/bench/bench_core).
#include <tapegrad/tapegrad.h>

#include "harness.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#ifdef TG_BENCH_TORCH
#include <ATen/Parallel.h>
#include <torch/torch.h>
#endif

namespace {

using bench::measure;
using bench::row;

// STREAM-style add with plain loops: the memory bandwidth an elementwise op can reach.
double stream_add_gbs(int64_t n) {
  std::vector<float> a(n, 1.0f), b(n, 2.0f), c(n);
  double t = measure([&] {
    float* __restrict pc = c.data();
    const float* __restrict pa = a.data();
    const float* __restrict pb = b.data();
    for (int64_t i = 0; i < n; ++i) pc[i] = pa[i] + pb[i];
  });
  return 3.0 * 4.0 * static_cast<double>(n) / t / 1e9;
}

}  // namespace

int main() {
  bench::keep_freed_memory();
  tg::set_num_threads(1);
#ifdef TG_BENCH_TORCH
  at::set_num_threads(1);
  at::set_num_interop_threads(1);
  torch::NoGradGuard no_grad;
#endif
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  std::printf("tapegrad core benchmark, 1 thread; OPENBLAS_CORETYPE=%s; TAPEGRAD_ISA=%s\n",
              coretype ? coretype : "(unset)", std::getenv("TAPEGRAD_ISA") ? std::getenv("TAPEGRAD_ISA") : "(best)");
  std::printf("%-34s %12s %12s  %-8s %7s\n", "figure", "tapegrad", "libtorch", "unit", "ours is");

  // 1. Dispatch overhead: one small op, no grad.
  for (int64_t n : {1, 16, 1024, 65536}) {
    auto a = tg::randn({n}), b = tg::randn({n});
    double ta = measure([&] { auto c = a + b; });
    double tm = measure([&] { auto c = a * b; });
    double ra = 0, rm = 0;
#ifdef TG_BENCH_TORCH
    auto ta_ = torch::randn({n}), tb_ = torch::randn({n});
    ra = measure([&] { auto c = ta_ + tb_; });
    rm = measure([&] { auto c = ta_ * tb_; });
#endif
    char name[64];
    std::snprintf(name, sizeof name, "add, %lld elements", static_cast<long long>(n));
    row(name, ta * 1e6, ra * 1e6, "us/op", true);
    std::snprintf(name, sizeof name, "mul, %lld elements", static_cast<long long>(n));
    row(name, tm * 1e6, rm * 1e6, "us/op", true);
  }

  // 2. Elementwise throughput on 1M contiguous floats.
  const int64_t n = 1 << 20;
  auto x = tg::randn({n}), y = tg::randn({n});
  double tt = measure([&] { auto r = tg::tanh(x); });
  double te = measure([&] { auto r = tg::exp(x); });
  double tadd = measure([&] { auto r = x + y; });
  double rt = 0, re = 0, radd = 0;
#ifdef TG_BENCH_TORCH
  auto tx = torch::randn({n}), ty = torch::randn({n});
  rt = measure([&] { auto r = torch::tanh(tx); });
  re = measure([&] { auto r = torch::exp(tx); });
  radd = measure([&] { auto r = tx + ty; });
#endif
  row("tanh, 1M f32", tt / n * 1e9, rt / n * 1e9, "ns/elem", true);
  row("exp, 1M f32", te / n * 1e9, re / n * 1e9, "ns/elem", true);
  row("add, 1M f32", tadd / n * 1e9, radd / n * 1e9, "ns/elem", true);
  double stream = stream_add_gbs(n);
  double ours_gbs = 12.0 * n / tadd / 1e9;
  std::printf("%-34s %12.1f %12.1f  %-8s (plain-loop STREAM add: %.1f GB/s; ours %.0f%%%s)\n",
              "add, 1M f32, bandwidth", ours_gbs, radd > 0 ? 12.0 * n / radd / 1e9 : 0.0, "GB/s",
              stream, 100 * ours_gbs / stream, radd > 0 ? "" : "");

  // 3. Matmul.
  struct Shape3 { int64_t m, k, n; };
  for (auto s : {Shape3{1, 784, 500}, Shape3{60, 784, 500}, Shape3{1024, 1024, 1024}}) {
    auto a = tg::randn({s.m, s.k}), b = tg::randn({s.k, s.n});
    double flop = 2.0 * s.m * s.k * s.n;
    double tmm = measure([&] { auto c = a.matmul(b); }, 0.2);
    double rmm = 0;
#ifdef TG_BENCH_TORCH
    auto ta_ = torch::randn({s.m, s.k}), tb_ = torch::randn({s.k, s.n});
    rmm = measure([&] { auto c = ta_.matmul(tb_); }, 0.2);
#endif
    char name[64];
    std::snprintf(name, sizeof name, "matmul (%lldx%lld)(%lldx%lld)", static_cast<long long>(s.m),
                  static_cast<long long>(s.k), static_cast<long long>(s.k), static_cast<long long>(s.n));
    row(name, flop / tmm / 1e9, rmm > 0 ? flop / rmm / 1e9 : 0, "GFLOP/s", false);
  }
  return 0;
}
