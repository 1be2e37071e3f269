// CUDA benchmarks (issue: CUDA backend): elementwise ops on 16M elements as a fraction of the
// GPU's memory bandwidth, matmul 4096³ as a fraction of what cuBLAS itself reaches, the slides'
// training workloads at batch 60 and 1024, and a traced step against eager at batch 1.
// bench/torch_cuda.py times the same workloads in PyTorch on the same machine; run both:
//   build/release/bench/bench_cuda && python3 bench/torch_cuda.py
// Without a GPU it says so and exits 0. `--smoke` runs every workload once at small sizes and
// checks the results instead of timing them: the emulated GPU's test (tests/emu) runs it so, and a
// broken workload fails there rather than on a GPU machine's limited minutes.
#include <cuda_runtime_api.h>
#include <tapegrad/tapegrad.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string_view>
#include <vector>

#include "harness.h"

namespace F = tg::nn::functional;

namespace {

bool g_smoke = false;  // --smoke
int g_failed = 0;      // checks failed in --smoke

// --smoke: that a result is within tol * (1 + |want|) of the reference.
void check(const char* what, const tg::Tensor& got, const tg::Tensor& want, double tol = 1e-4) {
  if (!g_smoke) return;
  auto a = got.to(tg::kCPU).to(tg::kF64).to_vector<double>();
  auto b = want.to(tg::kCPU).to(tg::kF64).to_vector<double>();
  bool ok = a.size() == b.size();
  for (size_t i = 0; ok && i < a.size(); ++i)
    ok = std::abs(a[i] - b[i]) <= tol * (1 + std::abs(b[i]));
  std::printf("  check %-40s %s\n", what, ok ? "ok" : "FAILED");
  if (!ok) ++g_failed;
}
void check(const char* what, bool ok) {
  if (!g_smoke) return;
  std::printf("  check %-40s %s\n", what, ok ? "ok" : "FAILED");
  if (!ok) ++g_failed;
}

// Median seconds per call over 7 trials, the device drained at the end of each trial (not after
// each call: calls queue as they would in a program), exactly as bench/torch_cuda.py times.
double gpu_time(const std::function<void()>& f, double seconds = 0.3) {
  using Clock = std::chrono::steady_clock;
  if (g_smoke) {  // once: the code path, not the time
    auto t0 = Clock::now();
    f();
    tg::cuda::synchronize();
    return std::chrono::duration<double>(Clock::now() - t0).count();
  }
  auto timed = [&](int64_t reps) {
    auto t0 = Clock::now();
    for (int64_t i = 0; i < reps; ++i) f();
    tg::cuda::synchronize();
    return std::chrono::duration<double>(Clock::now() - t0).count();
  };
  timed(1);  // warm up
  int64_t reps = 1;
  for (;;) {
    double dt = timed(reps);
    if (dt >= seconds / 4) {
      reps = std::max<int64_t>(1, static_cast<int64_t>(reps * seconds / dt));
      break;
    }
    reps *= 4;
  }
  std::vector<double> trials;
  for (int t = 0; t < 7; ++t) trials.push_back(timed(reps) / reps);
  std::sort(trials.begin(), trials.end());
  return trials[3];
}

double peak_bandwidth_gbs() {
  int dev = 0, clock_khz = 0, bus_bits = 0;
  cudaGetDevice(&dev);
  // Memory clock (kHz) × bus width × 2 (double data rate).
  cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, dev);
  cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, dev);
  return 2.0 * clock_khz * 1e3 * (bus_bits / 8.0) / 1e9;
}

void elementwise() {
  const int64_t n = g_smoke ? int64_t{1} << 12 : int64_t{1} << 24;
  tg::Tensor a = tg::randn({n}).to(tg::cuda()), b = tg::randn({n}).to(tg::cuda());
  double peak = peak_bandwidth_gbs();
  std::printf("\nElementwise, 16M f32 elements (peak bandwidth from the device: %.0f GB/s)\n", peak);
  std::printf("%-28s %12s %12s %10s\n", "op", "ms", "GB/s", "of peak");
  auto report = [&](const char* name, double s, double bytes) {
    double gbs = bytes / s / 1e9;
    std::printf("%-28s %12.3f %12.1f %9.1f%%\n", name, s * 1e3, gbs, 100 * gbs / peak);
  };
  report("add (2 reads, 1 write)", gpu_time([&] { (void)(a + b); }), 12.0 * n);
  report("mul by a scalar", gpu_time([&] { (void)(a * 2.0); }), 8.0 * n);
  report("exp", gpu_time([&] { (void)tg::exp(a); }), 8.0 * n);
  report("gelu", gpu_time([&] { (void)tg::gelu(a); }), 8.0 * n);
  report("sum (1 read)", gpu_time([&] { (void)a.sum(); }), 4.0 * n);
  auto fused = tg::trace([&](const tg::Tensor& x) { return tg::tanh(x * a + b) * 0.5 + 0.5; });
  fused(a);
  report("traced tanh(x*a+b)*.5+.5", gpu_time([&] { (void)fused(a); }), 16.0 * n);
  tg::Tensor ca = a.to(tg::kCPU), cb = b.to(tg::kCPU);
  check("add", a + b, ca + cb);
  check("gelu", tg::gelu(a), tg::gelu(ca));
  check("sum", a.sum(), ca.sum(), 1e-3);
  check("traced tanh(x*a+b)*.5+.5", fused(a), tg::tanh(ca * ca + cb) * 0.5 + 0.5);
}

// 64 MiB between pageable host memory and the GPU, through the two halves of the pinned staging
// memory (Note [Pinned staging]): what tensor.to() costs a program.
void copies() {
  const int64_t n = g_smoke ? int64_t{5} << 20 : int64_t{1} << 24;
  tg::Tensor host = tg::randn({n});
  tg::Tensor dev = host.to(tg::cuda());
  std::printf("\nCopies, %ld MiB f32, pageable host memory\n", static_cast<long>(4 * n >> 20));
  std::printf("%-28s %12s %12s\n", "copy", "ms", "GB/s");
  auto report = [&](const char* name, double s) {
    std::printf("%-28s %12.3f %12.1f\n", name, s * 1e3, 4.0 * n / s / 1e9);
  };
  report("to the GPU", gpu_time([&] { (void)host.to(tg::cuda()); }));
  report("to the host", gpu_time([&] { (void)dev.to(tg::kCPU); }));
  check("a round trip", dev.to(tg::kCPU), host, 0);
}

// Rows of a classifier (1024 × 10) and of a language model's head (512 × 32000): one kernel
// each (Note [Softmax rows]); the bytes are one read and one write (logsumexp: one read).
void softmax_rows() {
  std::printf("\nsoftmax rows, f32\n");
  std::printf("%-28s %12s %12s\n", "op", "us", "GB/s");
  const std::pair<int64_t, int64_t> full[] = {{1024, 10}, {512, 32000}},
                                    small[] = {{64, 10}, {4, 3000}};
  for (auto [rows, cols] : g_smoke ? small : full) {
    tg::Tensor x = tg::randn({rows, cols}).to(tg::cuda());
    const double n = static_cast<double>(rows * cols);
    auto report = [&](const char* op, double s, double bytes) {
      char name[64];
      std::snprintf(name, sizeof name, "%s %ldx%ld", op, static_cast<long>(rows),
                    static_cast<long>(cols));
      std::printf("%-28s %12.1f %12.1f\n", name, s * 1e6, bytes / s / 1e9);
    };
    report("softmax", gpu_time([&] { (void)tg::softmax(x, 1); }), 8.0 * n);
    report("log_softmax", gpu_time([&] { (void)tg::log_softmax(x, 1); }), 8.0 * n);
    report("logsumexp", gpu_time([&] { (void)tg::logsumexp(x, 1); }), 4.0 * n);
    // Traced: the composite, fused (a max, a fused sum, the output's group).
    auto traced = tg::trace([](const tg::Tensor& t) { return tg::log_softmax(t, 1); });
    traced(x);
    report("traced log_softmax", gpu_time([&] { (void)traced(x); }), 8.0 * n);
    check("log_softmax, eager and traced", traced(x), tg::log_softmax(x.to(tg::kCPU), 1));
    check("softmax", tg::softmax(x, 1), tg::softmax(x.to(tg::kCPU), 1));
  }
}

void products() {
  const int64_t n = g_smoke ? 64 : 4096;
  tg::Tensor a = tg::randn({n, n}).to(tg::cuda()), b = tg::randn({n, n}).to(tg::cuda());
  check("matmul f32", a.matmul(b), a.to(tg::kCPU).matmul(b.to(tg::kCPU)));
  std::printf("\nmatmul %ldx%ldx%ld\n", static_cast<long>(n), static_cast<long>(n), static_cast<long>(n));
  double flop = 2.0 * n * n * n;
  for (bool tf32 : {false, true}) {
    tg::cuda::set_allow_tf32(tf32);
    double s = gpu_time([&] { (void)a.matmul(b); });
    std::printf("  f32%-6s %10.3f ms %10.1f TFLOP/s\n", tf32 ? "+tf32" : "", s * 1e3, flop / s / 1e12);
  }
  tg::cuda::set_allow_tf32(false);
  tg::Tensor a64 = a.to(tg::kF64), b64 = b.to(tg::kF64);
  double s = gpu_time([&] { (void)a64.matmul(b64); });
  std::printf("  f64       %10.3f ms %10.1f TFLOP/s\n", s * 1e3, flop / s / 1e12);
}

struct Model {
  std::vector<tg::Tensor> params;
  explicit Model(const std::vector<int64_t>& widths) {
    tg::manual_seed(0);
    for (size_t i = 0; i + 1 < widths.size(); ++i) {
      double s = 1.0 / std::sqrt(static_cast<double>(widths[i]));
      params.push_back(((tg::rand({widths[i], widths[i + 1]}) * (2 * s) - s)).to(tg::cuda()).requires_grad_());
      params.push_back(tg::zeros({widths[i + 1]}, {.device = tg::cuda()}).requires_grad_());
    }
  }
  tg::Tensor step(const tg::Tensor& x, const tg::Tensor& y) {
    tg::Tensor h = x;
    for (size_t i = 0; i < params.size(); i += 2) {
      h = h.matmul(params[i]) + params[i + 1];
      if (i + 2 < params.size()) h = tg::tanh(h);
    }
    tg::Tensor loss = F::cross_entropy(h, y);
    auto grads = tg::grad({loss}, params);
    tg::NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) params[i].sub_(grads[i] * 0.01);
    return loss;
  }
};

void training() {
  std::printf("\nTraining steps (forward, backward, SGD), examples/s\n");
  std::printf("%-34s %12s %12s %10s\n", "workload", "eager", "traced", "traced/eager");
  struct Load {
    const char* name;
    std::vector<int64_t> widths;
  };
  const Load loads[] = {{"MLP 784-500-10", {784, 500, 10}},
                        {"deep MLP 784-3x1000-10", {784, 1000, 1000, 1000, 10}}};
  for (const Load& load : loads) {
    const int64_t full[] = {1, 60, 1024}, small[] = {1, 8};
    for (int64_t batch :
         g_smoke ? std::vector<int64_t>(small, small + 2) : std::vector<int64_t>(full, full + 3)) {
      tg::Tensor x = tg::randn({batch, 784}).to(tg::cuda());
      tg::Tensor y = tg::randint(0, 10, {batch}).to(tg::cuda());
      Model eager(load.widths), traced_model(load.widths);
      double e = gpu_time([&] { eager.step(x, y); });
      auto traced = tg::trace([&](const tg::Tensor& xx, const tg::Tensor& yy) { return traced_model.step(xx, yy); });
      traced(x, y);
      double t = gpu_time([&] { traced(x, y); });
      if (g_smoke) {  // as many steps on both, the traced replayed: the same weights
        for (int i = 0; i < 2; ++i) traced(x, y);
        for (int i = 0; i < 3; ++i) eager.step(x, y);
        std::vector<tg::Tensor> t, e;
        for (size_t i = 0; i < eager.params.size(); ++i) {
          t.push_back(traced_model.params[i].reshape({-1}));
          e.push_back(eager.params[i].reshape({-1}));
        }
        check("traced step's weights are eager's", tg::cat(t), tg::cat(e));
      }
      std::printf("%-24s batch %4ld %12.0f %12.0f %9.2fx\n", load.name, static_cast<long>(batch),
                  batch / e, batch / t, e / t);
      // How the traced step replays (Note [Captured replays]): one graph launch where the
      // updates' conditional node held (Note [Guarded updates]), else why not.
      const std::string summary = traced.pass_summary();
      const size_t at = summary.find("replay:");
      const std::string replay = at == std::string::npos
                                     ? "replay: node by node"
                                     : summary.substr(at, summary.find('\n', at) - at);
      if (batch == 1) std::printf("  %s\n", replay.c_str());
      check("traced step is one graph launch",
            replay.find("launched as one") != std::string::npos &&
                replay.find(" 0 recordings") == std::string::npos);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  bench::keep_freed_memory();
  for (int i = 1; i < argc; ++i) {
    if (std::string_view(argv[i]) == "--smoke") {
      g_smoke = true;
    } else {
      std::fprintf(stderr, "usage: bench_cuda [--smoke]\n");
      return 2;
    }
  }
  if (!tg::cuda::is_available()) {
    std::printf("bench_cuda: %s; nothing measured\n",
                tg::cuda::is_built() ? "no CUDA GPU is present" : "tapegrad was built without CUDA");
    return 0;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("bench_cuda on %s\n", prop.name);
  elementwise();
  copies();
  softmax_rows();
  products();
  training();
  if (g_smoke) std::printf("\n%s\n", g_failed == 0 ? "all checks passed" : "SOME CHECKS FAILED");
  return g_failed == 0 ? 0 : 1;
}
