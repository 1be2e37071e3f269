// The host thread pool (backend/parallel.h: every chunk once, errors to the caller, nesting and
// concurrent callers), results independent of the thread count, and the vectorized select and
// 2x2 max pooling (vec_kernels.h) on every ISA this CPU runs, against plain loops.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <thread>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include "backend/cpu/vec_kernels.h"
#include "backend/parallel.h"

using namespace tg;

namespace {
// The largest |a - b| over all elements (same shape).
double max_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  return (a.detach() - b.detach()).abs().amax().item<double>();
}

// Restores the thread count a test changed.
struct ThreadsGuard {
  int saved = get_num_threads();
  ~ThreadsGuard() { set_num_threads(saved); }
};
}  // namespace

TEST_CASE("run_chunks runs every chunk exactly once, on any thread count") {
  for (int threads : {1, 2, 3, 8}) {
    for (int64_t chunks : {0, 1, 2, 5, 64}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(chunks));
      run_chunks(chunks, threads, [&](int64_t c) { hits[static_cast<size_t>(c)].fetch_add(1); });
      for (int64_t c = 0; c < chunks; ++c) CHECK(hits[static_cast<size_t>(c)].load() == 1);
    }
  }
}

TEST_CASE("run_chunks rethrows a chunk's exception after the other chunks ran") {
  std::atomic<int> ran{0};
  auto body = [&](int64_t c) {
    ran.fetch_add(1);
    if (c == 3) throw std::runtime_error("chunk 3 failed");
  };
  CHECK_THROWS_WITH_AS(run_chunks(8, 4, body), "chunk 3 failed", std::runtime_error);
  CHECK(ran.load() == 8);
  CHECK_FALSE(in_parallel_region());
  // The pool still works afterwards.
  std::atomic<int> again{0};
  run_chunks(8, 4, [&](int64_t) { again.fetch_add(1); });
  CHECK(again.load() == 8);
}

TEST_CASE("run_chunks nests and serves several calling threads") {
  std::atomic<int> inner{0};
  run_chunks(4, 2, [&](int64_t) {
    CHECK(in_parallel_region());
    run_chunks(3, 2, [&](int64_t) { inner.fetch_add(1); });  // runs on this thread
  });
  CHECK(inner.load() == 12);
  std::vector<std::thread> callers;
  std::atomic<int64_t> total{0};
  for (int t = 0; t < 4; ++t)
    callers.emplace_back([&] {
      for (int rep = 0; rep < 200; ++rep)
        run_chunks(5, 2, [&](int64_t c) { total.fetch_add(c + 1); });
    });
  for (auto& t : callers) t.join();
  CHECK(total.load() == 4 * 200 * 15);
}

TEST_CASE("a forked child has a working pool") {
  run_chunks(4, 2, [](int64_t) {});  // the parent's workers exist now
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    alarm(20);  // a pool waiting on the parent's workers would hang here
    std::atomic<int> hits{0};
    for (int rep = 0; rep < 10; ++rep) run_chunks(4, 2, [&](int64_t) { hits.fetch_add(1); });
    _exit(hits.load() == 40 ? 0 : 1);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("the default thread count follows the process's CPU affinity") {
  cpu_set_t set;
  CPU_ZERO(&set);
  REQUIRE(sched_getaffinity(0, sizeof set, &set) == 0);
  CHECK(usable_cpus() == CPU_COUNT(&set));
  // Narrowed to one CPU (as taskset -c 0 does), a child counts one.
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    int first = 0;
    while (!CPU_ISSET(first, &set)) ++first;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    if (sched_setaffinity(0, sizeof one, &one) != 0) _exit(2);
    _exit(usable_cpus() == 1 ? 0 : 1);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("a training step gives the same numbers on 1 and 2 threads") {
  ThreadsGuard restore;
  auto run = [](int threads) {
    set_num_threads(threads);
    manual_seed(3);
    nn::Sequential net{nn::Conv2d(1, 6, 5, {.padding = 2}), nn::ReLU(), nn::MaxPool2d(2),
                       nn::Flatten(), nn::Linear(6 * 14 * 14, 10)};
    Tensor x = randn({16, 1, 28, 28}), y = randint(0, 10, {16});
    optim::Adam opt(net.parameters(), {.lr = 1e-2});
    for (int i = 0; i < 3; ++i) {
      Tensor loss = nn::functional::cross_entropy(net(x), y);
      opt.zero_grad();
      loss.backward();
      opt.step();
    }
    std::vector<float> out;
    for (auto& p : net.parameters()) {
      auto v = p.to_vector<float>();
      out.insert(out.end(), v.begin(), v.end());
    }
    return out;
  };
  CHECK(run(1) == run(2));
}

TEST_CASE("vectorized f32 sums keep their documented order bit for bit on every ISA") {
  // vec_kernels.cpp, sum(): 32 f64 sums of pairwise f32 quads, then of single elements, then a
  // tree. Written out plainly here; sums of every length up to 300 and a few longer ones, with
  // values of wildly different sizes so that any other order rounds differently.
  auto reference = [](const float* x, int64_t n) {
    double acc[32] = {};
    int64_t i = 0;
    for (; i + 128 <= n; i += 128)
      for (int k = 0; k < 32; ++k)
        acc[k] += static_cast<double>((x[i + k] + x[i + k + 32]) + (x[i + k + 64] + x[i + k + 96]));
    for (; i + 32 <= n; i += 32)
      for (int k = 0; k < 32; ++k) acc[k] += static_cast<double>(x[i + k]);
    for (int k = 0; i < n; ++i, ++k) acc[k] += static_cast<double>(x[i]);
    for (int w = 16; w >= 1; w /= 2)
      for (int k = 0; k < w; ++k) acc[k] += acc[k + w];
    return acc[0];
  };
  std::mt19937 rng(21);
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<int64_t> lengths;
  for (int64_t n = 0; n <= 300; ++n) lengths.push_back(n);
  for (int64_t n : {1000, 1023, 1024, 1025, 4099}) lengths.push_back(n);
  for (const cpu::VecKernels* table : cpu::available_vec_kernels()) {
    CAPTURE(table->isa);
    for (int64_t n : lengths) {
      CAPTURE(n);
      std::vector<float> x(static_cast<size_t>(n) + 16);
      for (auto& v : x) v = u(rng) * std::ldexp(1.0f, static_cast<int>(rng() % 60) - 30);
      double got = table->sum_f32(x.data(), n), want = reference(x.data(), n);
      REQUIRE(std::memcmp(&got, &want, sizeof got) == 0);
    }
    // Zeros of both signs, infinities and NaN.
    std::vector<float> z(100, -0.0f);
    double zs = table->sum_f32(z.data(), 100);
    CHECK(zs == 0.0);
    CHECK_FALSE(std::signbit(zs));
    z[7] = std::numeric_limits<float>::infinity();
    CHECK(table->sum_f32(z.data(), 100) == std::numeric_limits<double>::infinity());
    z[90] = std::numeric_limits<float>::quiet_NaN();
    CHECK(std::isnan(table->sum_f32(z.data(), 100)));
  }
}

TEST_CASE("vectorized where matches the plain select on every ISA") {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1, 1);
  for (const cpu::VecKernels* table : cpu::available_vec_kernels()) {
    CAPTURE(table->isa);
    for (int64_t n : {0, 1, 15, 16, 17, 33, 1000}) {
      CAPTURE(n);
      std::vector<float> a(static_cast<size_t>(n) + 1), b(a.size());
      std::vector<uint8_t> mask(a.size());
      for (size_t i = 0; i < a.size(); ++i) a[i] = u(rng), b[i] = u(rng), mask[i] = rng() & 1;
      const bool* c = reinterpret_cast<const bool*>(mask.data());
      for (int form = 0; form < 4; ++form) {
        bool av = form & 1, bv = form & 2;
        std::vector<float> out(a.size(), -7.0f);
        table->where_f32(out.data(), c, a.data(), av, b.data(), bv, n);
        for (int64_t i = 0; i < n; ++i) {
          float want = mask[i] ? (av ? a[i] : a[0]) : (bv ? b[i] : b[0]);
          REQUIRE(out[i] == want);
        }
        CHECK(out[static_cast<size_t>(n)] == -7.0f);  // nothing past n is written
      }
      // In place: the output is one of the operands.
      std::vector<float> self = a;
      table->where_f32(self.data(), c, self.data(), true, b.data(), true, n);
      for (int64_t i = 0; i < n; ++i) REQUIRE(self[i] == (mask[i] ? a[i] : b[i]));
    }
  }
}

TEST_CASE("vectorized 2x2 max pooling matches the plain loop on every ISA (NaN and ties)") {
  std::mt19937 rng(9);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (const cpu::VecKernels* table : cpu::available_vec_kernels()) {
    CAPTURE(table->isa);
    for (auto [H, W] : {std::pair<int64_t, int64_t>{2, 2}, {28, 28}, {10, 10}, {5, 33}, {6, 64},
                        {4, 70}}) {
      CAPTURE(H);
      CAPTURE(W);
      int64_t OH = H / 2, OW = W / 2;
      std::vector<float> x(static_cast<size_t>(H * W));
      // Small integers make ties common; a few NaNs win their windows.
      for (auto& v : x) v = static_cast<float>(rng() % 4);
      for (int k = 0; k < 3; ++k) x[rng() % x.size()] = nan;
      std::vector<float> out(static_cast<size_t>(OH * OW) + 1, -1.0f);
      std::vector<int64_t> idx(out.size(), -1);
      table->max_pool_2x2_f32(out.data(), idx.data(), x.data(), OH, OW, W);
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          int64_t best = 2 * oh * W + 2 * ow;
          for (int64_t pos : {best + 1, best + W, best + W + 1}) {
            float v = x[pos], b = x[best];
            if (v > b || (std::isnan(v) && !std::isnan(b))) best = pos;
          }
          size_t o = static_cast<size_t>(oh * OW + ow);
          REQUIRE(idx[o] == best);
          if (std::isnan(x[best])) REQUIRE(std::isnan(out[o]));
          else REQUIRE(out[o] == x[best]);
        }
      CHECK(out.back() == -1.0f);
      CHECK(idx.back() == -1);
    }
  }
}

TEST_CASE("the gradient of a transposed weight is laid out like the weight") {
  // Note [Gradients in their operand's layout]: linear's weight.t() gets (gᵀ·x)ᵀ.
  manual_seed(1);
  Tensor w = randn({7, 5}, {.dtype = kF64}).requires_grad_();
  Tensor x = randn({4, 5}, {.dtype = kF64}).requires_grad_();
  Tensor g = randn({4, 7}, {.dtype = kF64});
  x.matmul(w.t()).backward(g);
  CHECK(w.grad().is_contiguous());
  Tensor want_w = g.t().matmul(x.detach()), want_x = g.matmul(w.detach());
  CHECK(max_diff(w.grad(), want_w) < 1e-12);
  CHECK(max_diff(x.grad(), want_x) < 1e-12);
  // The same through a transposed first operand.
  Tensor a = randn({5, 4}, {.dtype = kF64}).requires_grad_();
  Tensor b = randn({5, 3}, {.dtype = kF64});
  Tensor gy = randn({4, 3}, {.dtype = kF64});
  a.t().matmul(b).backward(gy);
  CHECK(a.grad().is_contiguous());
  CHECK(max_diff(a.grad(), b.matmul(gy.t())) < 1e-12);
}
