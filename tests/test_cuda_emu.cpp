// The CUDA backend on the emulated GPU (Note [An emulated GPU], emu/runtime.cpp): what only the
// emulator can see or arrange. The waits and graph launches of a traced training step, the pinned
// staging of large copies, running out of memory at a size a test can reach, recordings that must
// be dropped, and the emulator's own strictness (host code that reads device memory faults).
// test_cuda.cpp's cases run here too, as on a GPU.
#include <dlfcn.h>
#include <doctest/doctest.h>
#include <sys/wait.h>
#include <tapegrad/tapegrad.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <thread>

#include "backend/backend.h"
#include "core/tensor_impl.h"
#include "emu/emu.h"
#include "gpu_checks.h"

using namespace tg;
using namespace tgtest;

namespace {

// Whether the library loaded as `name` is the emulator's (it has `symbol`).
bool emulated(const char* name, const char* symbol) {
  void* h = dlopen(name, RTLD_NOW | RTLD_NOLOAD);
  if (h == nullptr) return false;
  const bool r = dlsym(h, symbol) != nullptr;
  dlclose(h);
  return r;
}

// Runs `work` in a child process, its stderr kept: whether it exited cleanly, and what it said.
std::pair<bool, std::string> in_child(const std::function<void()>& work) {
  char path[] = "/tmp/tgemu_child_XXXXXX";
  const int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  std::fflush(stderr);
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    dup2(fd, 2);
    work();
    _exit(0);
  }
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  close(fd);
  std::ifstream in(path);
  std::string said(std::istreambuf_iterator<char>(in), {});
  std::remove(path);
  return {WIFEXITED(status) && WEXITSTATUS(status) == 0, said};
}

// `n` elements of f32 at `data` on the GPU, whatever was allocated there: a tensor that lies.
std::shared_ptr<TensorImpl> f32_at(const std::shared_ptr<Storage>& storage, int64_t n) {
  auto t = std::make_shared<TensorImpl>();
  t->storage = storage;
  t->sizes = {n};
  t->strides = {1};
  t->numel = n;
  t->dtype = kF32;
  return t;
}

}  // namespace

TEST_CASE("the emulated GPU: the backend's cuBLAS and NVRTC are the emulator's") {
  REQUIRE(cuda::is_available());
  Tensor a = randn({3, 4}).to(cuda()), b = randn({4, 2}).to(cuda());
  CHECK(close(a.matmul(b), a.to(kCPU).matmul(b.to(kCPU)), 1e-5));
  CHECK(emulated("libcublas.so.13", "tgemu_is_emulated_cublas"));
  // A traced elementwise chain makes a generated kernel.
  auto f = trace([](const Tensor& x) { return tanh(x * 2 + 1) * x; });
  Tensor x = randn({1000}).to(cuda());
  CHECK(close(f(x), tanh(x.to(kCPU) * 2 + 1) * x.to(kCPU), 1e-5));
  CHECK(emulated("libnvrtc.so.13", "nvrtcCreateProgram"));
  CHECK(tgemu::fault() == nullptr);
}

TEST_CASE("the emulated GPU: host code that reads device memory faults, as on a GPU") {
  Tensor t = ones({1024}, {.device = cuda()});
  cuda::synchronize();
  auto* p = static_cast<volatile float*>(t.raw_data_ptr());
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    std::signal(SIGSEGV, SIG_DFL);  // not the test framework's handler: die of it
    const float v = *p;             // a host read of device memory
    _exit(v == 1.0f ? 0 : 1);
  }
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGSEGV);
  CHECK(t.sum().item<float>() == 1024);
}

TEST_CASE("the emulated GPU: a replayed training step is one graph launch and one wait") {
  manual_seed(5);
  std::vector<Tensor> params{(randn({20, 16}) * 0.1).to(cuda()).requires_grad_(),
                             zeros({16}, {.device = cuda()}).requires_grad_(),
                             (randn({16, 4}) * 0.1).to(cuda()).requires_grad_(),
                             zeros({4}, {.device = cuda()}).requires_grad_()};
  auto step = [&params](const Tensor& x, const Tensor& y) {
    Tensor h = tanh(x.matmul(params[0]) + params[1]).matmul(params[2]) + params[3];
    Tensor loss = nn::functional::cross_entropy(h, y);
    auto grads = grad({loss}, params);
    NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) params[i].sub_(grads[i] * 0.1);
    return loss;
  };
  auto traced = trace(step);
  Tensor x = randn({8, 20}).to(cuda()), y = randint(0, 4, {8}).to(cuda());
  for (int i = 0; i < 3; ++i) (void)traced(x, y);  // traced, recorded, replayed
  cuda::synchronize();
  const tgemu::Counts before = tgemu::counts();
  Tensor loss = traced(x, y);
  const tgemu::Counts after = tgemu::counts();
  // Forward and backward, then the updates in the body of a conditional node, which runs where
  // the index ops' flags are clear (Note [Guarded updates]): one launch; the one wait is the
  // host's read of the flags at the end of the call. Nothing is recorded again.
  CHECK(after.graph_launches - before.graph_launches == 1);
  CHECK(after.syncs - before.syncs == 1);
  CHECK(after.captured == before.captured);
  CHECK(std::isfinite(loss.item<float>()));
  CHECK(traced.pass_summary().find("the last two launched as one") != std::string::npos);
  // Eager, the same step waits once too: for the targets' bounds, read on the host, after which
  // the gather and its gradient's scatter need no check of their own (Note [Indices checked
  // once]).
  const tgemu::Counts eager_before = tgemu::counts();
  (void)step(x, y);
  const tgemu::Counts eager_after = tgemu::counts();
  CHECK(eager_after.syncs - eager_before.syncs == 1);
  // The replay's fused groups launch fewer kernels than eager's ops, all from its graphs but the
  // few around them (the arguments copied into the graphs' buffers, the flags cleared).
  const int64_t eager_work = eager_after.launches - eager_before.launches;
  const int64_t graph_work = after.graph_work - before.graph_work;
  const int64_t loose = after.launches - before.launches;
  MESSAGE("kernels and products per step: eager " << eager_work << ", replayed " << graph_work
                                                  << " in 1 graph and " << loose << " alone");
  CHECK(graph_work + loose < eager_work);
  // An update's number is made on the device once, not at every step (Note [Scalars on a GPU]):
  // each parameter's `sub_(grad * 0.1)` is two kernels.
  auto grads =
      grad({nn::functional::cross_entropy(x.matmul(params[0]).tanh().matmul(params[2]), y)},
           {params[0], params[2]});
  const tgemu::Counts update_before = tgemu::counts();
  {
    NoGradGuard no_grad;
    params[0].sub_(grads[0] * 0.1);
    params[2].sub_(grads[1] * 0.1);
  }
  CHECK(tgemu::counts().launches - update_before.launches == 4);
  // Copying the batch to the GPU does not wait either (Note [Pinned staging]).
  Tensor xc = x.to(kCPU), yc = y.to(kCPU);
  const tgemu::Counts copies_before = tgemu::counts();
  (void)step(xc.to(cuda()), yc.to(cuda()));
  CHECK(tgemu::counts().syncs - copies_before.syncs == 1);
  // An index a user made is checked, and an error is still an error before anything is written.
  Tensor logits = randn({4, 3}).to(cuda()),
         index = tensor<int64_t>({{0}, {2}, {1}, {1}}).to(cuda());
  const tgemu::Counts gather_before = tgemu::counts();
  (void)logits.gather(1, index);
  CHECK(tgemu::counts().syncs - gather_before.syncs == 1);
  CHECK_THROWS_WITH_AS((void)logits.gather(1, tensor<int64_t>({{0}, {3}, {1}, {1}}).to(cuda())),
                       doctest::Contains("index 3 is out of bounds"), Error);
  CHECK_THROWS_WITH_AS(
      (void)nn::functional::cross_entropy(logits, tensor<int64_t>({0, 3, 1, 1}).to(cuda())),
      doctest::Contains("target 3 is out of range for 3 classes"), Error);
}

TEST_CASE("the emulated GPU: a conditional node that fails is found, and the step is still right") {
  // Were the device to drop the guard's decision, the updates would silently not run. The host
  // reads, with the flags, a word only the body writes: clear flags and no mark mean the
  // decision failed. That call's updates then run as they are, and the pair is refused, so later
  // calls launch its two segments on their own (Note [Guarded updates]). A driver that refuses
  // the node when it is made or launched gets the two segments at once, with the same numbers.
  for (tgemu::Conditionals how :
       {tgemu::Conditionals::Ignored, tgemu::Conditionals::RefusedAtCreation,
        tgemu::Conditionals::RefusedAtLaunch}) {
    CAPTURE(static_cast<int>(how));
    manual_seed(12);
    std::vector<Tensor> pe{(randn({10, 8}) * 0.1).requires_grad_(),
                           (randn({8, 4}) * 0.1).requires_grad_()};
    std::vector<Tensor> pg;
    for (const Tensor& p : pe) pg.push_back(p.detach().to(cuda()).requires_grad_());
    auto step_with = [](std::vector<Tensor>& params) {
      return [&params](const Tensor& x, const Tensor& y) {
        Tensor h = nn::functional::dropout(tanh(x.matmul(params[0])), 0.25);
        Tensor loss = nn::functional::cross_entropy(h.matmul(params[1]), y);
        auto grads = grad({loss}, params);
        NoGradGuard no_grad;
        for (size_t i = 0; i < params.size(); ++i) params[i].sub_(grads[i] * 0.1);
        return loss;
      };
    };
    auto eager = step_with(pe);
    auto traced = trace(step_with(pg));
    struct Restore {
      ~Restore() { tgemu::set_conditionals(tgemu::Conditionals::Work); }
    } restore;
    tgemu::set_conditionals(how);
    for (int i = 0; i < 5; ++i) {
      CAPTURE(i);
      Tensor x = randn({6, 10}), y = randint(0, 4, {6});
      const uint64_t seed = 40 + static_cast<uint64_t>(i);
      manual_seed(seed);
      const tgemu::Counts before = tgemu::counts();
      Tensor lt = traced(x.to(cuda()), y.to(cuda()));
      const tgemu::Counts after = tgemu::counts();
      manual_seed(seed);  // the same dropout masks
      Tensor le = eager(x, y);
      CHECK(std::abs(lt.item<float>() - le.item<float>()) < 1e-5);
      for (size_t k = 0; k < pe.size(); ++k) CHECK(close(pg[k], pe[k], 1e-5));
      if (i == 2 && how == tgemu::Conditionals::Ignored)  // the first replay
        CHECK(after.graph_launches - before.graph_launches == 1);
      if (i == 4) CHECK(after.graph_launches - before.graph_launches == 2);
    }
    std::string summary = traced.pass_summary();
    CAPTURE(summary);
    CHECK(summary.find("the last two launched as one") == std::string::npos);
    CHECK(summary.find(" 1 segments refused (the last two as one: ") != std::string::npos);
    // Why, in the summary, so that a device's log says.
    const char* why = how == tgemu::Conditionals::Ignored
                          ? "its second part did not run, with no flag set"
                      : how == tgemu::Conditionals::RefusedAtCreation
                          ? "cudaGraphConditionalHandleCreate returned cudaErrorNotSupported"
                          : "its launch: replay: CUDA error cudaErrorNotSupported";
    CHECK(summary.find(why) != std::string::npos);
  }
}

TEST_CASE("the emulated GPU: a replayed step with a bad target runs no update and says so") {
  manual_seed(6);
  std::vector<Tensor> params{(randn({10, 8}) * 0.1).to(cuda()).requires_grad_(),
                             (randn({8, 4}) * 0.1).to(cuda()).requires_grad_()};
  // With a penalty, an update that ran would move the weights even where the skipped gather
  // and scatter left the loss's own gradient zero.
  auto loss_of = [](const std::vector<Tensor>& p, const Tensor& x, const Tensor& y) {
    return nn::functional::cross_entropy(tanh(x.matmul(p[0])).matmul(p[1]), y) +
           (p[0] * p[0]).sum() * 0.5;
  };
  auto step = [&params, &loss_of](const Tensor& x, const Tensor& y) {
    Tensor loss = loss_of(params, x, y);
    auto grads = grad({loss}, params);
    NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) params[i].sub_(grads[i] * 0.1);
    return loss;
  };
  auto traced = trace(step);
  Tensor x = randn({6, 10}).to(cuda()), y = randint(0, 4, {6}).to(cuda());
  for (int i = 0; i < 3; ++i) (void)traced(x, y);  // traced, recorded, replayed
  std::vector<Tensor> kept;
  for (const Tensor& p : params) kept.push_back(p.detach().clone());
  Tensor bad = y.clone();
  bad.select(0, 2).fill_(4);
  const tgemu::Counts before = tgemu::counts();
  CHECK_THROWS_WITH_AS((void)traced(x, bad),
                       doctest::Contains("target 4 is out of range for 4 classes"), Error);
  const tgemu::Counts after = tgemu::counts();
  // The same one launch as a good step: the body of the conditional node did not run.
  CHECK(after.graph_launches - before.graph_launches == 1);
  CHECK(after.captured == before.captured);
  for (size_t i = 0; i < params.size(); ++i) CHECK(close(params[i], kept[i], 0));
  // The next good step runs the updates, as eager.
  std::vector<Tensor> cpu;
  for (const Tensor& k : kept) cpu.push_back(k.to(kCPU).requires_grad_());
  Tensor want = loss_of(cpu, x.to(kCPU), y.to(kCPU));
  auto grads = grad({want}, cpu);
  Tensor got = traced(x, y);
  CHECK(std::abs(got.item<float>() - want.item<float>()) < 1e-5);
  for (size_t i = 0; i < params.size(); ++i)
    CHECK(close(params[i], cpu[i].detach() - grads[i] * 0.1, 1e-5));
}

TEST_CASE("the emulated GPU: large copies go through the pinned buffer, in stream order") {
  manual_seed(6);
  // 20 MiB: three pieces each way through the two 8 MiB halves of the staging memory, the third
  // reusing the first half once its copy is done (Note [Pinned staging]).
  Tensor x = randn({5 << 20});
  const tgemu::Counts before = tgemu::counts();
  Tensor d = x.to(cuda());
  const Tensor original = x.clone();
  x.mul_(0);                           // the caller's memory is its own again at once
  Tensor back = (d * 2 - 1).to(kCPU);  // the kernels queued before the copy run first
  CHECK(tgemu::counts().pinned_copies - before.pinned_copies == 6);
  CHECK(same_bits(back, original * 2 - 1));
  // Copies queue behind each other: a second large copy waits only for the halves it reuses.
  Tensor d2 = original.to(cuda());
  CHECK(same_bits(d2.to(kCPU), original));
  // Small copies go straight from pageable memory, staged at the call.
  Tensor small = arange(0, 100).to(kF32);
  Tensor ds = small.to(cuda());
  small.mul_(0);  // the caller's buffer reused at once
  CHECK(same_bits(ds.to(kCPU), arange(0, 100).to(kF32)));
}

TEST_CASE("the emulated GPU: out of memory empties the cache and retries, then names the sizes") {
  cuda::synchronize();
  cuda::empty_cache();
  const size_t limit = tgemu::memory_limit();
  const int64_t base = tgemu::counts().device_bytes;
  tgemu::set_memory_limit(static_cast<size_t>(base) + (size_t{64} << 20));
  struct Restore {
    size_t limit;
    ~Restore() { tgemu::set_memory_limit(limit); }
  } restore{limit};
  {
    Tensor a = empty({10 << 20}, {.device = cuda()});  // 40 MiB, cached when freed
  }
  // (Or given back at once, where the cache is off: Note [Exact allocations].)
  CHECK((cuda::memory_stats().reserved >= (40 << 20)) == cuda::caching());
  // 48 MiB does not fit beside the cached 40: the cache is emptied and the allocation retried.
  Tensor b = ones({12 << 20}, {.device = cuda()});
  CHECK(b.sum().item<float>() == float(12 << 20));
  CHECK(cuda::memory_stats().reserved < (100 << 20));
  // 48 more cannot fit at all: an error with the sizes, and nothing lost.
  try {
    (void)empty({12 << 20}, {.device = cuda()});
    FAIL("no tg::Error thrown");
  } catch (const Error& e) {
    std::string msg = e.what();
    CAPTURE(msg);
    CHECK(msg.find("CUDA out of memory on cuda:0: tried to allocate 50331648 bytes") !=
          std::string::npos);
    CHECK(msg.find("free of") != std::string::npos);
  }
  CHECK(b.sum().item<float>() == float(12 << 20));
}

TEST_CASE(
    "the emulated GPU: a model that does not fit stays whole on the CPU, the error says where") {
  cuda::synchronize();
  cuda::empty_cache();
  const size_t limit = tgemu::memory_limit();
  const int64_t base = tgemu::counts().device_bytes;
  tgemu::set_memory_limit(static_cast<size_t>(base) + (size_t{64} << 20));
  struct Restore {
    size_t limit;
    ~Restore() { tgemu::set_memory_limit(limit); }
  } restore{limit};
  // 4 KiB, then 48 MiB, then 48 MiB more: the third does not fit.
  nn::Sequential model{nn::Linear(32, 32), nn::Linear(1024, 12 << 10), nn::Linear(12 << 10, 1024)};
  std::vector<Tensor> before;
  for (const Tensor& p : model.parameters()) before.push_back(p.detach().clone());
  const int line = __LINE__ + 2;
  try {
    model.to(cuda());
    FAIL("no tg::Error thrown");
  } catch (const Error& e) {
    std::string msg = e.what();
    CAPTURE(msg);
    CHECK(msg.find("CUDA out of memory") != std::string::npos);
    CHECK(msg.find(fmt::format("in tg::Module::to called at {}:{}", __FILE__, line)) !=
          std::string::npos);
  }
  auto params = model.parameters();
  REQUIRE(params.size() == before.size());
  for (size_t i = 0; i < params.size(); ++i) {
    CHECK(params[i].device() == Device(kCPU));
    CHECK(same_bits(params[i], before[i]));
  }
  // Nothing it made is held: the memory is the driver's again after the cache is emptied.
  cuda::empty_cache();
  CHECK(tgemu::counts().device_bytes == base);
}

TEST_CASE("the emulated GPU: a recording that must be dropped runs nothing and keeps no memory") {
  Backend& gpu = cuda_backend(0);
  Tensor x = randn({256}).to(cuda());
  cuda::synchronize();
  const int64_t allocated = cuda::memory_stats().allocated;
  const tgemu::Counts before = tgemu::counts();
  // Waiting for the device cannot be recorded: refused, so the recording is dropped.
  auto work = gpu.capture([&] {
    Tensor y = x * 3;
    (void)y.sum().item<float>();
  });
  CHECK(work == nullptr);
  CHECK(gpu.capture_refusal().find("not allowed while a replay is being captured") !=
        std::string::npos);
  CHECK(tgemu::counts().kernels_run == before.kernels_run);  // recorded, never run
  CHECK(cuda::memory_stats().allocated == allocated);
  // A recording that holds: nothing runs until it is launched, then all of it at each launch.
  Tensor out = zeros({256}, {.device = cuda()});
  auto ok = gpu.capture([&] { out.add_(x * 3); });
  REQUIRE(ok != nullptr);
  CHECK(gpu.capture_refusal().empty());
  CHECK(same_bits(out, zeros({256})));
  ok->launch();
  ok->launch();
  CHECK(close(out, x.to(kCPU) * 6, 1e-6));
  CHECK(tgemu::fault() == nullptr);
}

TEST_CASE(
    "the emulated GPU: a replayed Adam step with a scheduler is one launch and one wait, as "
    "eager") {
  auto make = [] {
    manual_seed(8);
    return nn::Sequential{nn::Linear(6, 8), nn::Tanh(), nn::Linear(8, 3)};
  };
  nn::Sequential cpu = make(), gpu = make();
  gpu.to(cuda());
  optim::Adam oc(cpu.parameters(), {.lr = 0.05}), og(gpu.parameters(), {.lr = 0.05});
  optim::StepLR sc(oc, 1, 0.5), sg(og, 1, 0.5);  // the rate halves at every step
  auto step_of = [](nn::Sequential& m, optim::Optimizer& o) {
    return [&m, &o](const Tensor& x, const Tensor& y) {
      o.zero_grad();
      Tensor loss = nn::functional::cross_entropy(m(x), y);
      loss.backward();
      o.step();
      return loss;
    };
  };
  auto eager = step_of(cpu, oc);
  auto traced = trace(step_of(gpu, og));
  manual_seed(9);
  Tensor x = randn({16, 6}), y = randint(0, 3, {16});
  Tensor xg = x.to(cuda()), yg = y.to(cuda());
  for (int i = 0; i < 6; ++i) {
    CAPTURE(i);
    const tgemu::Counts before = tgemu::counts();
    Tensor lt = traced(xg, yg);
    const tgemu::Counts after = tgemu::counts();
    Tensor le = eager(x, y);
    sc.step();
    sg.step();
    CHECK(std::abs(lt.item<float>() - le.item<float>()) < 1e-5);
    if (i >= 2) {  // replayed: the learning rate written before the graph, no wait for it
      CHECK(after.graph_launches - before.graph_launches == 1);
      CHECK(after.syncs - before.syncs == 1);
    }
  }
  auto pc = cpu.parameters(), pg = gpu.parameters();
  for (size_t i = 0; i < pc.size(); ++i) CHECK(close(pg[i], pc[i], 1e-5));
}

TEST_CASE("the emulated GPU: another thread's work is never recorded into a replay's graph") {
  // One thread records and replays a traced step while another computes eagerly on the same
  // device: the recording thread's work goes to a capture stream of its own, the other's to the
  // device's stream, so neither sees the other's kernels (Note [Captured replays]).
  manual_seed(10);
  Tensor w = randn({32, 32}).to(cuda());
  auto f = trace([&w](const Tensor& x) { return tanh(x.matmul(w)) * 2 + 1; });
  Tensor x = randn({16, 32}).to(cuda());
  Tensor want = tanh(x.matmul(w)) * 2 + 1;
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0}, rounds{0};
  std::thread other([&] {
    Tensor a = arange(0, 1000).to(kF32).to(cuda());
    while (!stop) {
      try {
        Tensor b = (a * 3 - a).sum();
        if (b.item<float>() != 999000.0f) ++bad;
      } catch (const std::exception&) {
        ++bad;
      }
      ++rounds;
    }
  });
  while (rounds < 1) std::this_thread::yield();  // the other thread is at work
  std::vector<Tensor> outs;
  for (int i = 0; i < 20; ++i) outs.push_back(f(x));
  while (rounds < 5) std::this_thread::yield();
  stop = true;
  other.join();
  CHECK(bad == 0);
  for (const Tensor& o : outs) CHECK(close(o, want, 1e-6));
  CHECK(f.pass_summary().find("captured CUDA graphs") != std::string::npos);
}

TEST_CASE("the emulated GPU: an eager CNN step with Adam waits once, for the loss's targets") {
  manual_seed(13);
  nn::Sequential model{nn::Conv2d(1, 4, 3, {.padding = 1}),
                       nn::BatchNorm2d(4),
                       nn::ReLU(),
                       nn::MaxPool2d(2),
                       nn::Flatten(),
                       nn::Dropout(0.2),
                       nn::Linear(4 * 4 * 4, 3)};
  model.to(cuda());
  optim::Adam opt(model.parameters(), {.lr = 1e-3, .weight_decay = 1e-4});
  Tensor x = randn({6, 1, 8, 8}), y = randint(0, 3, {6});
  auto step = [&] {
    Tensor loss = nn::functional::cross_entropy(model(x.to(cuda())), y.to(cuda()));
    opt.zero_grad();
    loss.backward();
    nn::utils::clip_grad_value_(model.parameters(), 1.0);
    opt.step();
    return loss;
  };
  (void)step();  // the optimizer's state is made
  cuda::synchronize();
  const tgemu::Counts before = tgemu::counts();
  Tensor loss = step();
  CHECK(tgemu::counts().syncs - before.syncs == 1);
  CHECK(std::isfinite(loss.item<float>()));
}

TEST_CASE("the emulated GPU: a traced step that takes CPU batches is still one graph launch") {
  // The batches move to the GPU inside the function and the loss comes back: transfers, which
  // run around the graph (Note [Captured replays]), reading each call's arguments.
  manual_seed(21);
  nn::Sequential model{nn::Linear(12, 16), nn::Tanh(), nn::Linear(16, 3)};
  model.to(cuda());
  optim::SGD opt(model.parameters(), {.lr = 0.1});
  auto step = trace([&](const Tensor& x, const Tensor& y) {
    opt.zero_grad();
    Tensor loss = nn::functional::cross_entropy(model(x.to(cuda())), y.to(cuda()));
    loss.backward();
    opt.step();
    return loss.to(kCPU);
  });
  Tensor x = randn({8, 12}), y = randint(0, 3, {8});
  for (int i = 0; i < 3; ++i) (void)step(x, y);
  const tgemu::Counts before = tgemu::counts();
  Tensor loss = step(x, y);
  const tgemu::Counts after = tgemu::counts();
  CHECK(loss.device() == Device(kCPU));
  CHECK(std::isfinite(loss.item<float>()));
  CHECK(after.graph_launches - before.graph_launches == 1);
  CHECK(after.syncs - before.syncs == 1);  // the loss's copy to the host; the flags read then
  std::string summary = step.pass_summary();
  CAPTURE(summary);
  CHECK(summary.find("the last two launched as one") != std::string::npos);
}

TEST_CASE(
    "the emulated GPU: a kernel that reads past a tensor's end, or freed memory, is stopped") {
  // Note [Checked device memory]: these reads would pass silently on a GPU without memcheck.
  if (!tgemu_checked()) {
    MESSAGE("skipped: the emulator was built without AddressSanitizer");
    return;
  }
  Tensor src = ones({128}, {.device = cuda()});  // 512 bytes: a block of its exact size
  Tensor dst = zeros({129}, {.device = cuda()});
  cuda::synchronize();
  Backend& gpu = backend_for(cuda());
  SUBCASE("one element past the end") {
    auto [clean, said] = in_child([&] {
      gpu.copy(*dst.impl(), *f32_at(src.impl()->storage, 129));  // src says 129 elements
      cuda::synchronize();
    });
    CAPTURE(said);
    CHECK(!clean);
    CHECK(said.find("AddressSanitizer") != std::string::npos);
    CHECK(said.find("bytes of device memory 0 bytes past the end of a 512-byte allocation") !=
          std::string::npos);
    CHECK(said.find("emulated GPU: device work elementwise on cuda:0 read") != std::string::npos);
  }
  SUBCASE("a freed block") {
    auto [clean, said] = in_child([&] {
      auto freed = std::make_shared<Storage>(src.raw_data_ptr(), 512, cuda());
      freed->owns_data = false;
      src = Tensor();
      cuda::empty_cache();  // the block back to the driver
      gpu.copy(*f32_at(dst.impl()->storage, 128), *f32_at(freed, 128));
      cuda::synchronize();
    });
    CAPTURE(said);
    CHECK(!clean);
    CHECK(said.find("of device memory inside a freed allocation of 512 bytes, at its byte") !=
          std::string::npos);
  }
  SUBCASE("the same copy within bounds is clean") {  // the check itself is not what fails
    auto [clean, said] = in_child([&] {
      gpu.copy(*f32_at(dst.impl()->storage, 128), *f32_at(src.impl()->storage, 128));
      cuda::synchronize();
    });
    CAPTURE(said);
    CHECK(clean);
  }
  CHECK(dst.sum().item<float>() == 0);  // the parent's tensors are untouched
}

TEST_CASE("the emulated GPU: two devices, strict as CUDA is about them") {
  // Note [Two emulated GPUs]: what a program for several GPUs gets wrong fails here, as there.
  int count = 0;
  REQUIRE(cudaGetDeviceCount(&count) == cudaSuccess);
  REQUIRE(count == 2);
  struct Back {  // device 0 current again, whatever happens
    ~Back() { (void)cudaSetDevice(0); }
  } back;
  REQUIRE(cudaSetDevice(1) == cudaSuccess);
  cudaStream_t s1 = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking) == cudaSuccess);
  void* on1 = nullptr;
  REQUIRE(cudaMalloc(&on1, 256) == cudaSuccess);
  REQUIRE(cudaSetDevice(0) == cudaSuccess);
  cudaStream_t s0 = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&s0, cudaStreamNonBlocking) == cudaSuccess);
  cudaEvent_t e0 = nullptr;
  REQUIRE(cudaEventCreateWithFlags(&e0, cudaEventDisableTiming) == cudaSuccess);
  // A kernel into cuda:1's stream while cuda:0 is current fails, and runs nothing.
  bool ran = false;
  (void)cudaGetLastError();
  tgemu_launch(s1, dim3(1), dim3(1), new std::function<void()>([&ran] { ran = true; }), "probe");
  CHECK(cudaGetLastError() == cudaErrorInvalidResourceHandle);
  // A copy may go to any device's stream.
  float host = 0;
  CHECK(cudaMemcpyAsync(on1, &host, sizeof host, cudaMemcpyHostToDevice, s1) == cudaSuccess);
  // An event of cuda:0 recorded on cuda:1's stream fails.
  CHECK(cudaEventRecord(e0, s1) == cudaErrorInvalidResourceHandle);
  (void)cudaGetLastError();
  CHECK(cudaEventRecord(e0, s0) == cudaSuccess);
  // With cuda:1 current, its stream takes the kernel.
  REQUIRE(cudaSetDevice(1) == cudaSuccess);
  tgemu_launch(s1, dim3(1), dim3(1), new std::function<void()>([&ran] { ran = true; }), "probe");
  CHECK(cudaGetLastError() == cudaSuccess);
  CHECK(cudaStreamSynchronize(s1) == cudaSuccess);
  CHECK(ran);
  REQUIRE(cudaSetDevice(0) == cudaSuccess);
  // A tensor moved between the GPUs goes without a wait on the host, in order on both streams
  // (Note [Copies between GPUs]): after the work that wrote it on cuda:0, and before the work
  // that reuses its block there once it is freed.
  {
    Tensor a = randn({1000});
    const tgemu::Counts before = tgemu::counts();
    Tensor moved;
    {
      Tensor x0 = a.to(cuda(0)) * 2;
      moved = x0.to(cuda(1));
    }  // x0's block back to cuda:0's cache, free for the next tensor there
    Tensor reuse = full({1000}, 5.0, {.device = cuda(0)});
    CHECK(tgemu::counts().syncs == before.syncs);
    cuda::synchronize(0);  // cuda:0's stream first: its fill may run only after the copy
    CHECK(same_bits(moved, a * 2));
    CHECK(reuse.amin().item<float>() == 5.0f);
    // Read on cuda:1 first: its copy may run only after the product on cuda:0.
    Tensor x0 = a.to(cuda(0)) * 3;
    CHECK(same_bits(x0.to(cuda(1)), a * 3));
  }
  // A kernel on cuda:0 that touches cuda:1's memory faults (no peer access here).
  REQUIRE(cudaSetDevice(0) == cudaSuccess);
  auto [clean, said] = in_child([&] {
    std::signal(SIGSEGV, SIG_DFL);
    tgemu_launch(s0, dim3(1), dim3(1),
                 new std::function<void()>([on1] { *static_cast<volatile float*>(on1) = 1; }),
                 "trespass");
    (void)cudaStreamSynchronize(s0);
  });
  CAPTURE(said);
  CHECK(!clean);
  CHECK(cudaEventDestroy(e0) == cudaSuccess);
  CHECK(cudaStreamDestroy(s0) == cudaSuccess);
  CHECK(cudaFree(on1) == cudaSuccess);
  CHECK(cudaStreamDestroy(s1) == cudaSuccess);
  CHECK(tgemu::fault() == nullptr);
}

TEST_CASE("the emulated GPU: each op puts the caller's device back") {
  // Note [Device guard]: a program that set its own device finds it as it set it after any op,
  // a move between the GPUs, a product, a traced replay and an op that throws.
  struct Back {
    ~Back() { (void)cudaSetDevice(0); }
  } back;
  auto current = [] {
    int d = -1;
    REQUIRE(cudaGetDevice(&d) == cudaSuccess);
    return d;
  };
  Tensor a = randn({64, 64});
  for (int mine : {0, 1}) {
    CAPTURE(mine);
    const int other = 1 - mine;
    REQUIRE(cudaSetDevice(mine) == cudaSuccess);
    Tensor x = a.to(cuda(other));  // the first use of a device, too
    CHECK(current() == mine);
    Tensor y = (x * 2).exp().sum({1});
    CHECK(current() == mine);
    Tensor p = x.matmul(x);
    CHECK(current() == mine);
    Tensor across = p.to(cuda(mine)).to(cuda(other));
    CHECK(current() == mine);
    CHECK(close(across, a.matmul(a), 1e-4));
    CHECK(close(y, (a * 2).exp().sum({1}), 1e-4));
    CHECK(current() == mine);
    auto f = trace([](const Tensor& t) { return (t * t + 1).log().sum(); });
    for (int k = 0; k < 3; ++k) {
      Tensor r = f(x);
      CHECK(current() == mine);
      CHECK(close(r, (a * a + 1).log().sum(), 1e-4));
    }
    CHECK_THROWS_AS(x.index_select(0, full({2}, 99, {.dtype = DType::I64, .device = cuda(other)})),
                    Error);
    CHECK(current() == mine);
    // Blocks go back to the driver with their own device current (the cache emptied, or each
    // tensor as it is freed where the cache is off), and the caller's after.
    const int64_t elsewhere = tgemu::counts().frees_elsewhere;
    x = y = p = across = Tensor();
    cuda::empty_cache(other);
    CHECK(current() == mine);
    CHECK(tgemu::counts().frees_elsewhere == elsewhere);
  }
  CHECK(tgemu::fault() == nullptr);
}
