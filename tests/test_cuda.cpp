// The CUDA backend against the CPU: every op-table sample on both devices (f32 within 1e-3, f64
// within 1e-6), gradients by central differences on the GPU, the RNG's streams, traced against
// eager, the caching allocator, and the errors (device mismatch, out of memory). Without a GPU
// every case says so and skips.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>

#include "backend/backend.h"
#include "fused_steps.h"
#include "gpu_checks.h"
#include "op_table.h"

using namespace tg;
using namespace tgtest;

namespace {

std::vector<Tensor> on(const std::vector<Tensor>& xs, Device d) {
  std::vector<Tensor> out;
  for (const Tensor& x : xs) out.push_back(x.to(d));
  return out;
}

std::string str(const Shape& s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + ")";
}

}  // namespace

TEST_CASE("cuda: every op-table sample gives the CPU's values") {
  if (!have_gpu()) return;
  int checked = 0;
  for (const auto& row : op_table()) {
    for (DType dt : {kF32, kF64}) {
      double tol = dt == kF32 ? 1e-3 : 1e-6;
      for (const auto& s : row.samples(dt)) {
        CAPTURE(row.op);
        CAPTURE(s.label);
        CAPTURE(dtype_name(dt));
        Tensor want = s.op(s.inputs);
        Tensor got;
        REQUIRE_NOTHROW(got = s.op(on(s.inputs, cuda())));
        if (row.op != "to_device") CHECK(got.device() == Device(cuda()));  // "to cpu" moves
        CHECK_MESSAGE(close(got, want, tol), row.op << " [" << s.label << "]");
        ++checked;
      }
    }
  }
  CHECK(checked > 300);
}

TEST_CASE("cuda: every op-table sample traced on the GPU gives the eager values") {
  if (!have_gpu()) return;
  // FastRun: fused groups as generated kernels, replays in CUDA graphs from the second call.
  // The index samples move an index they hold (a CPU tensor) to the GPU inside the function, and
  // "to cpu" moves the result back: transfers, which the graph keeps as nodes, so every sample
  // traces.
  int checked = 0, refused = 0;
  for (const auto& row : op_table()) {
    for (const auto& s : row.samples(kF32)) {
      CAPTURE(row.op);
      CAPTURE(s.label);
      std::vector<Tensor> x = on(s.inputs, cuda());
      Tensor want = s.op(x);
      TracedFunction traced(
          [&s](const std::vector<Tensor>& in) { return std::vector<Tensor>{s.op(in)}; }, {});
      bool skip = false;
      for (int call = 0; call < 2 && !skip; ++call) {
        CAPTURE(call);
        std::vector<Tensor> got;
        try {
          got = traced.call(x);
        } catch (const Error& e) {
          const bool host_read = std::string(e.what()).find(
                                     "reads a tensor's value on the host "
                                     "while tg::trace records") != std::string::npos;
          CHECK_MESSAGE(host_read, e.what());
          ++refused;
          MESSAGE("left out: " << row.op << " [" << s.label << "]");
          skip = true;
          continue;
        }
        REQUIRE(got.size() == 1);
        CHECK(got[0].device() == want.device());
        CHECK_MESSAGE(close(got[0], want.to(kCPU), 1e-5), row.op << " [" << s.label << "]");
      }
      checked += skip ? 0 : 1;
    }
  }
  CHECK(checked > 150);
  CHECK(refused == 0);
}

TEST_CASE("cuda: gradients of every differentiable sample, f64 central differences on the GPU") {
  if (!have_gpu()) return;
  // Along a random direction d per input: (f(x + εd) - f(x - εd)) / 2ε, weighted by a random v,
  // against Σ <grad_x(v·f), d>. Out of place, so any layout works.
  int checked = 0;
  for (const auto& row : op_table()) {
    for (const auto& s : row.samples(kF64)) {
      if (!s.differentiable) continue;
      if (std::find(row.no_gradient.begin(), row.no_gradient.end(), s.label) != row.no_gradient.end())
        continue;
      CAPTURE(row.op);
      CAPTURE(s.label);
      std::vector<Tensor> x = on(s.inputs, cuda());
      std::vector<Tensor> wrt, dirs;
      for (Tensor& t : x) {
        if (!is_floating(t.dtype())) continue;
        t = t.detach().requires_grad_();
        wrt.push_back(t);
        dirs.push_back(randn(t.shape(), {.dtype = kF64}).to(cuda()));
      }
      if (wrt.empty()) continue;
      Tensor out = s.op(x);
      if (out.dtype() != kF64 || !out.requires_grad()) continue;
      Tensor v = randn(out.shape(), {.dtype = kF64}).to(out.device());
      std::vector<Tensor> g = grad({(out * v).sum()}, wrt, {.allow_unused = true});
      double analytic = 0;
      for (size_t i = 0; i < wrt.size(); ++i)
        if (g[i].defined()) analytic += (g[i] * dirs[i]).sum().item<double>();
      const double eps = 1e-6;
      auto shifted = [&](double sign) {
        NoGradGuard no_grad;
        std::vector<Tensor> y = x;
        size_t k = 0;
        for (Tensor& t : y)
          if (is_floating(t.dtype())) t = t.detach() + dirs[k++] * (sign * eps);
        return (s.op(y) * v).sum().item<double>();
      };
      double numeric = (shifted(1) - shifted(-1)) / (2 * eps);
      // NaN where NaN (var of one element), as the forward comparison takes it.
      const bool agree = (std::isnan(numeric) && std::isnan(analytic)) ||
                         std::abs(numeric - analytic) <= 1e-5 + 1e-3 * std::abs(numeric);
      CHECK_MESSAGE(agree,
                    row.op << " [" << s.label << "]: numeric " << numeric << ", analytic "
                           << analytic);
      ++checked;
    }
  }
  CHECK(checked > 100);
}

TEST_CASE("cuda: manual_seed then rand/randn/randint give the CPU's numbers") {
  if (!have_gpu()) return;
  for (DType dt : {kF32, kF64}) {
    manual_seed(42);
    Tensor a = randn({1001}, {.dtype = dt});
    Tensor u = rand({77}, {.dtype = dt});
    manual_seed(42);
    Tensor b = randn({1001}, {.dtype = dt, .device = cuda()});
    Tensor w = rand({77}, {.dtype = dt, .device = cuda()});
    CHECK(close(b, a, dt == kF32 ? 1e-6 : 1e-12));
    CHECK(close(w, u, dt == kF32 ? 1e-6 : 1e-12));
  }
  manual_seed(7);
  Tensor i = randint(-5, 9, {500});
  manual_seed(7);
  Tensor j = randint(-5, 9, {500}, {.device = cuda()});
  CHECK(j.to(kCPU).to_vector<int64_t>() == i.to_vector<int64_t>());
}

TEST_CASE("cuda: reductions on every kernel's shapes give the CPU's values, the same on every run") {
  if (!have_gpu()) return;
  // Short rows (a warp each), long rows (a block each), few very long rows (in pieces), columns
  // (in one part or several), and reduced dims that do not merge.
  struct Case {
    Shape shape;
    Shape dims;
    bool transpose;
  };
  const std::vector<Case> cases = {
      {{64, 10}, {1}, false},    {{3, 5000}, {1}, false},  {{2, 70000}, {1}, false},
      {{70000}, {}, false},      {{5000, 37}, {0}, false}, {{100, 40}, {0}, false},
      {{30, 40, 50}, {0, 2}, false}, {{20, 300, 40}, {1}, false}, {{300, 50}, {1}, true},
      {{7, 1, 9}, {1, 2}, false},
  };
  manual_seed(5);
  for (const Case& c : cases) {
    for (DType dt : {kF32, kF64, kI64}) {
      CAPTURE(str(c.shape));
      CAPTURE(str(c.dims));
      CAPTURE(dtype_name(dt));
      // Small integers: ties for the arg reductions, exact integer sums.
      Tensor x = randint(-4, 5, c.shape).to(dt);
      if (dt == kF32) {  // values with rounding, and a NaN
        std::vector<float> v = (x + randn(c.shape) * 0.25).to_vector<float>();
        if (v.size() > 100) v[77] = NAN;
        x = tensor(v, c.shape);
      }
      Tensor near1 = dt == kI64 ? x : 1 + x * 0.001;
      if (c.transpose) {  // the same values, stored column-major
        x = x.t().contiguous().t();
        near1 = near1.t().contiguous().t();
      }
      Tensor gx = x.to(cuda()), gn = near1.to(cuda());
      const double tol = dt == kF32 ? 1e-3 : 1e-6;
      CHECK(close(sum(gx, c.dims), sum(x, c.dims), tol));
      CHECK(close(prod(gn, c.dims), prod(near1, c.dims), tol));
      CHECK(close(amax(gx, c.dims), amax(x, c.dims), 0));
      CHECK(close(amin(gx, c.dims), amin(x, c.dims), 0));
      if (c.dims.size() == 1) {
        CHECK(argmax(gx, c.dims[0]).to(kCPU).to_vector<int64_t>() ==
              argmax(x, c.dims[0]).to_vector<int64_t>());
        CHECK(argmin(gx, c.dims[0]).to(kCPU).to_vector<int64_t>() ==
              argmin(x, c.dims[0]).to_vector<int64_t>());
      }
      CHECK(same_bits(sum(gx, c.dims), sum(gx, c.dims)));
    }
  }
}

TEST_CASE("cuda: softmax, log_softmax and logsumexp rows give the CPU's values, the same bits") {
  if (!have_gpu()) return;
  // Rows a warp or a block takes in one kernel (Note [Softmax rows]), and the shapes that keep
  // the composite: few very long rows, columns. Large values, a row of -inf, an inf, a NaN.
  struct Case {
    Shape shape;
    int64_t dim;
    bool transpose;
  };
  const std::vector<Case> cases = {
      {{64, 10}, 1, false},   {{3, 5000}, 1, false},    {{2, 70000}, 1, false},
      {{5000, 37}, 0, false}, {{30, 40, 50}, 2, false}, {{30, 40, 50}, 1, false},
      {{300, 50}, 1, true},   {{7, 1, 9}, 2, false},
  };
  manual_seed(7);
  for (const Case& c : cases) {
    for (DType dt : {kF32, kF64}) {
      CAPTURE(str(c.shape));
      CAPTURE(c.dim);
      CAPTURE(dtype_name(dt));
      Tensor x = (randn(c.shape) * 3).to(dt);
      if (c.transpose) x = x.t().contiguous().t();
      if (c.dim == 1 && x.dim() == 2 && x.shape()[0] >= 4) {
        x = x.clone();
        x.select(0, 0).fill_(1000.0);
        x.select(0, 1).fill_(-INFINITY);
        x.select(0, 2).narrow(0, 1, 1).fill_(INFINITY);
        x.select(0, 3).narrow(0, 0, 1).fill_(NAN);
      }
      Tensor gx = x.to(cuda());
      const double tol = dt == kF32 ? 1e-3 : 1e-6;
      CHECK(close(softmax(gx, c.dim), softmax(x, c.dim), tol));
      CHECK(close(log_softmax(gx, c.dim), log_softmax(x, c.dim), tol));
      CHECK(close(logsumexp(gx, c.dim), logsumexp(x, c.dim), tol));
      CHECK(same_bits(softmax(gx, c.dim), softmax(gx, c.dim)));
      CHECK(same_bits(logsumexp(gx, c.dim), logsumexp(gx, c.dim)));
      // A traced graph records the composite, and the kernel gives the composite's bits, so a
      // FastCompile replay is the eager run, bit for bit.
      const int64_t d = c.dim;
      auto traced = trace(
          [d](const Tensor& t) {
            return std::vector<Tensor>{softmax(t, d), log_softmax(t, d), logsumexp(t, d)};
          },
          {.mode = Mode::FastCompile});
      for (int call = 0; call < 2; ++call) {  // recorded, then replayed
        std::vector<Tensor> tv = traced(gx);
        CHECK(same_bits(tv[0], softmax(gx, d)));
        CHECK(same_bits(tv[1], log_softmax(gx, d)));
        CHECK(same_bits(tv[2], logsumexp(gx, d)));
      }
      // The gradient through what the kernel wrote.
      Tensor w = randn(c.shape, {.dtype = dt});
      Tensor lx = x.detach().requires_grad_(true), lg = gx.detach().requires_grad_(true);
      (log_softmax(lx, c.dim) * w).sum().backward();
      (log_softmax(lg, c.dim) * w.to(cuda())).sum().backward();
      CHECK(close(lg.grad(), lx.grad(), tol));
    }
  }
}

TEST_CASE("cuda: scatter_add with repeated indices gives the same bits on every run") {
  if (!have_gpu()) return;
  // An embedding's gradient: 4096 tokens of a 50-word vocabulary, rows of 256, and one column
  // scatter where every element goes to the same place (Note [Scatter without atomics]).
  manual_seed(11);
  for (DType dt : {kF32, kF64}) {
    Tensor tokens = randint(0, 50, {4096});
    Tensor index = tokens.unsqueeze(1).expand({4096, 256});
    Tensor grad = randn({4096, 256}, {.dtype = dt});
    Tensor base = zeros({50, 256}, {.dtype = dt});
    Tensor want = base.scatter_add(0, index, grad);
    Tensor gi = index.to(cuda()), gg = grad.to(cuda()), gb = base.to(cuda());
    Tensor first = gb.scatter_add(0, gi, gg).to(kCPU);
    CHECK(close(first, want, dt == kF32 ? 1e-3 : 1e-6));
    for (int run = 0; run < 5; ++run) CHECK(same_bits(gb.scatter_add(0, gi, gg), first));
    Tensor all = zeros({100000}, {.dtype = kI64}), ones_ = randn({100000}, {.dtype = dt});
    Tensor one = zeros({3}, {.dtype = dt});
    Tensor want1 = one.scatter_add(0, all, ones_);
    Tensor got1 = one.to(cuda()).scatter_add(0, all.to(cuda()), ones_.to(cuda())).to(kCPU);
    CHECK(close(got1, want1, dt == kF32 ? 1e-3 : 1e-6));
    CHECK(same_bits(one.to(cuda()).scatter_add(0, all.to(cuda()), ones_.to(cuda())), got1));
  }
}

TEST_CASE("cuda: a traced training step equals the eager one, and replays as CUDA graphs") {
  if (!have_gpu()) return;
  manual_seed(3);
  auto make = [] {
    return std::vector<Tensor>{(randn({20, 16}) * 0.1).to(cuda()).requires_grad_(),
                               zeros({16}, {.device = cuda()}).requires_grad_(),
                               (randn({16, 4}) * 0.1).to(cuda()).requires_grad_(),
                               zeros({4}, {.device = cuda()}).requires_grad_()};
  };
  std::vector<Tensor> pe = make(), pt;
  for (const Tensor& p : pe) pt.push_back(p.detach().clone().requires_grad_());
  auto step_with = [](std::vector<Tensor>& params) {
    return [&params](const Tensor& x, const Tensor& y) {
      Tensor h = tanh(x.matmul(params[0]) + params[1]).matmul(params[2]) + params[3];
      Tensor loss = nn::functional::cross_entropy(h, y);
      auto grads = grad({loss}, params);
      NoGradGuard no_grad;
      for (size_t i = 0; i < params.size(); ++i) params[i].sub_(grads[i] * 0.1);
      return loss;
    };
  };
  auto eager = step_with(pe);
  auto traced = trace(step_with(pt));
  std::vector<Tensor> losses;
  for (int it = 0; it < 5; ++it) {
    CAPTURE(it);
    Tensor x = randn({8, 20}).to(cuda()), y = randint(0, 4, {8}).to(cuda());
    Tensor le = eager(x, y), lt = traced(x, y);
    losses.push_back(lt);
    CHECK(close(lt, le.to(kCPU), 1e-5));
    for (size_t i = 0; i < pe.size(); ++i) CHECK(close(pt[i], pe[i].to(kCPU), 1e-5));
  }
  CHECK(traced.num_compiles() == 1);
  // From the second call every node runs in CUDA graphs (Note [Captured replays]), recorded
  // once: forward and backward, then the updates, cut where the flags of the gather and the
  // scatter are read (Note [Device-side arguments]), launched as one graph whose conditional
  // node runs the updates where the flags are clear (Note [Guarded updates]). Each call's loss
  // is its own tensor.
  std::string summary = traced.pass_summary();
  CAPTURE(summary);
  CHECK(summary.find("captured CUDA graphs") != std::string::npos);
  const int64_t nodes = traced.graph().num_nodes();
  CHECK(summary.find(fmt::format("{} of {} nodes run as 2 captured", nodes, nodes)) !=
        std::string::npos);
  CHECK(summary.find("2 index ops checked on the device") != std::string::npos);
  CHECK(summary.find("the last two launched as one") != std::string::npos);
  CHECK(summary.find(" 0 segments refused") != std::string::npos);
  CHECK(summary.find(" 0 recordings so far") == std::string::npos);
  for (size_t i = 0; i + 1 < losses.size(); ++i)
    CHECK(losses[i].to(kCPU).item<float>() != losses[i + 1].to(kCPU).item<float>());
  // A bad target: the eager error, the weights as they were; the next step goes on as eager's.
  Tensor x = randn({8, 20}).to(cuda());
  std::vector<Tensor> before;
  for (const Tensor& p : pt) before.push_back(p.detach().to(kCPU));
  try {
    (void)traced(x, tensor({0L, 1L, 2L, 3L, 4L, 0L, 1L, 2L}).to(cuda()));
    FAIL("no tg::Error thrown");
  } catch (const Error& e) {
    std::string msg = e.what();
    CAPTURE(msg);
    CHECK(msg.find("cross_entropy: target 4 is out of range for 4 classes") != std::string::npos);
    CHECK(e.op() == "cross_entropy");
  }
  for (size_t i = 0; i < pt.size(); ++i) CHECK(same_bits(pt[i].to(kCPU), before[i]));
  Tensor y = randint(0, 4, {8}).to(cuda());
  Tensor le = eager(x, y), lt = traced(x, y);
  CHECK(close(lt, le.to(kCPU), 1e-5));
  for (size_t i = 0; i < pe.size(); ++i) CHECK(close(pt[i], pe[i].to(kCPU), 1e-5));
}

TEST_CASE("cuda: random draws in a CUDA graph take the eager numbers at every replay") {
  if (!have_gpu()) return;
  // The draw reads its seed and offset from a slot written before each launch (Note
  // [Device-side arguments]): dropout's mask is eager's, bit for bit, and fresh at each call.
  auto fn = [](const Tensor& x) {
    return nn::functional::dropout(ones_like(x), 0.5) * 3 + tanh(x) * 0;
  };
  auto traced = trace(fn);
  Tensor x = randn({64, 33}).to(cuda());
  std::vector<Tensor> masks;
  for (int it = 0; it < 5; ++it) {
    CAPTURE(it);
    manual_seed(200 + it);
    Tensor want = fn(x);
    manual_seed(200 + it);
    Tensor got = traced(x);
    CHECK(same_bits(got, want));
    masks.push_back(got.to(kCPU));
  }
  CHECK_FALSE(same_bits(masks[3], masks[4]));
  std::string summary = traced.pass_summary();
  CAPTURE(summary);
  const int64_t nodes = traced.graph().num_nodes();
  CHECK(summary.find(fmt::format("{} of {} nodes run as 1 captured", nodes, nodes)) !=
        std::string::npos);
}

TEST_CASE("cuda: generated kernels for fused groups give the reference's values") {
  if (!have_gpu()) return;
  // Note [Generated fused kernels]: the backend's fused() (one NVRTC kernel) against the
  // reference the base class runs (the steps one by one through the eager kernels), on random
  // groups over broadcast, transposed and contiguous inputs, into contiguous and strided outputs.
  Backend& gpu = cuda_backend(0);
  std::mt19937 rng(5);
  const std::vector<OpKind> un = {OpKind::Exp,  OpKind::Tanh, OpKind::Neg, OpKind::Sigmoid,
                                  OpKind::Abs,  OpKind::Relu, OpKind::Gelu, OpKind::Sign,
                                  OpKind::Softplus, OpKind::Rsqrt};
  const std::vector<OpKind> bin = {OpKind::Add, OpKind::Sub, OpKind::Mul, OpKind::Maximum,
                                   OpKind::Div, OpKind::Minimum};
  for (DType dt : {kF32, kF64}) {
    for (int trial = 0; trial < 24; ++trial) {
      CAPTURE(trial);
      Shape shape{static_cast<int64_t>(1 + rng() % 40), static_cast<int64_t>(1 + rng() % 700)};
      std::vector<Tensor> views;
      for (int k = 0; k < 4; ++k) {
        Tensor t;
        switch (rng() % 4) {
          case 0: t = randn(shape, {.dtype = dt}).to(cuda()); break;
          case 1: t = randn({shape[1]}, {.dtype = dt}).to(cuda()).expand(shape); break;
          case 2: t = randn({shape[0], 1}, {.dtype = dt}).to(cuda()).expand(shape); break;
          default: t = randn({shape[1], shape[0]}, {.dtype = dt}).to(cuda()).t(); break;
        }
        views.push_back(t);
      }
      std::vector<FusedStep> steps = tgtest::random_steps(rng, 4, 8, un, bin, dt);
      TensorOptions o{.dtype = dt, .device = cuda()};
      Tensor got = trial % 3 == 0 ? empty({shape[1], shape[0]}, o).t() : empty(shape, o);
      Tensor want = empty(shape, o);
      std::vector<const TensorImpl*> in;
      for (auto& v : views) in.push_back(v.impl());
      gpu.fused(steps, *got.impl(), in.data(), in.size());
      gpu.Backend::fused(steps, *want.impl(), in.data(), in.size());
      // The same CUDA math functions in the same order: equal up to the last bit of a
      // transcendental the compiler may inline differently.
      CHECK(close(got, want.to(kCPU), dt == kF32 ? 1e-6 : 1e-12));
    }
  }
}

TEST_CASE("cuda: generated fused sums give the reference's bits") {
  if (!have_gpu()) return;
  // Note [Generated fused sums]: the backend's fused_sum() (one NVRTC kernel, a warp or a block
  // per row) against the reference (the group into a temporary, then reduce), which folds in the
  // same order: the same bits. Rows for a warp, for a block, and cut into pieces (the reference
  // runs), over broadcast, transposed and contiguous inputs, one or two reduced dims.
  Backend& gpu = cuda_backend(0);
  std::mt19937 rng(8);
  const std::vector<OpKind> un = {OpKind::Exp,     OpKind::Tanh, OpKind::Neg,
                                  OpKind::Sigmoid, OpKind::Abs,  OpKind::Gelu};
  const std::vector<OpKind> bin = {OpKind::Add, OpKind::Sub, OpKind::Mul, OpKind::Maximum};
  const std::vector<Shape> shapes = {{64, 10}, {7, 3, 40}, {3, 5000}, {2, 70000}, {5, 30, 41}};
  for (DType dt : {kF32, kF64}) {
    for (int trial = 0; trial < 20; ++trial) {
      CAPTURE(trial);
      const Shape& shape = shapes[static_cast<size_t>(trial) % shapes.size()];
      const int nreduced = shape.size() == 3 && trial % 2 ? 2 : 1;
      CAPTURE(str(shape));
      CAPTURE(nreduced);
      std::vector<Tensor> views;
      for (int k = 0; k < 3; ++k) views.push_back(tgtest::random_sum_input(rng, shape, dt, cuda()));
      std::vector<FusedStep> steps = tgtest::random_steps(rng, 3, 6, un, bin, dt);
      Shape kept(shape.begin(), shape.end() - nreduced);
      TensorOptions o{.dtype = dt, .device = cuda()};
      Tensor got = empty(kept, o), want = empty(kept, o);
      std::vector<const TensorImpl*> in;
      for (auto& v : views) in.push_back(v.impl());
      gpu.fused_sum(steps, *got.impl(), in.data(), in.size(), nreduced);
      gpu.Backend::fused_sum(steps, *want.impl(), in.data(), in.size(), nreduced);
      CHECK(close(got, want.to(kCPU), dt == kF32 ? 1e-6 : 1e-12));
      CHECK(same_bits(got, want));
    }
  }
}

TEST_CASE("cuda: the caching allocator reuses blocks and reports its bytes") {
  if (!have_gpu()) return;
  cuda::synchronize();
  cuda::empty_cache();
  auto before = cuda::memory_stats();
  {
    Tensor a = zeros({1 << 20}, {.device = cuda()});
    auto during = cuda::memory_stats();
    CHECK(during.allocated >= before.allocated + (4 << 20));
    CHECK(during.reserved >= during.allocated);
    CHECK(during.peak >= during.allocated);
  }
  auto after = cuda::memory_stats();
  CHECK(after.allocated == before.allocated);
  if (!cuda::caching()) {
    // TAPEGRAD_CUDA_CACHING=0 (Note [Exact allocations]): a tensor's exact bytes, given back.
    MESSAGE("the cache is off (TAPEGRAD_CUDA_CACHING=0): checking exact allocations instead");
    CHECK(after.reserved == before.reserved);
    Tensor c = zeros({1001}, {.device = cuda()});
    CHECK(cuda::memory_stats().allocated == before.allocated + 4004);
    CHECK(cuda::memory_stats().reserved == before.reserved + 4004);
    return;
  }
  CHECK(after.reserved > before.reserved);  // cached, not given back
  { Tensor b = zeros({1 << 20}, {.device = cuda()}); }
  CHECK(cuda::memory_stats().reserved == after.reserved);  // the same block again
  cuda::empty_cache();
  CHECK(cuda::memory_stats().reserved == before.reserved);
}

TEST_CASE("cuda: errors name the op and the devices, out of memory gives the sizes") {
  if (!have_gpu()) return;
  Tensor a = ones({3}), b = ones({3}).to(cuda());
  CHECK_THROWS_WITH_AS((void)(a + b), doctest::Contains("cuda:0"), Error);
  CHECK_THROWS_WITH_AS((void)a.matmul(ones({3, 2}).to(cuda())), doctest::Contains("cpu"), Error);
  // A terabyte: more than any GPU has.
  CHECK_THROWS_WITH_AS((void)empty({int64_t{1} << 38}, {.device = cuda()}),
                       doctest::Contains("out of memory"), Error);
  // The device still works afterwards, and the CPU tensor is untouched.
  CHECK((b * 2).sum().item<float>() == 6);
  CHECK(a.sum().item<float>() == 3);
  // An index out of range is caught before anything is written.
  Tensor x = arange(0, 6).to(cuda()).reshape({2, 3}).to(kF32);
  CHECK_THROWS_WITH_AS((void)x.gather(1, tensor({int64_t{0}, int64_t{7}}).reshape({2, 1}).to(cuda())),
                       doctest::Contains("out of bounds"), Error);
  CHECK(cuda::device_count() >= 1);
  CHECK_THROWS_AS((void)zeros({2}, {.device = cuda(cuda::device_count())}), Error);
}

TEST_CASE("cuda: f32 products stay f32 unless TF32 is allowed") {
  if (!have_gpu()) return;
  manual_seed(1);
  Tensor a = randn({256, 512}), b = randn({512, 128});
  Tensor want = a.to(kF64).matmul(b.to(kF64));
  CHECK_FALSE(cuda::allow_tf32());
  Tensor got = a.to(cuda()).matmul(b.to(cuda())).to(kF64);
  // Exact f32 products: within f32 rounding of the f64 product (TF32 would be ~1e-3 off).
  CHECK(close(got, want, 1e-4));
  cuda::set_allow_tf32(true);
  Tensor fast = a.to(cuda()).matmul(b.to(cuda())).to(kF64);
  cuda::set_allow_tf32(false);
  // TF32 keeps 10 bits of each factor: sums of 512 products are off by a few hundredths, and
  // visibly so (TF32 does take effect).
  CHECK(close(fast, want, 1e-1));
  CHECK_FALSE(close(fast, want, 1e-4));
}

TEST_CASE("cuda: a traced value made on the CPU and on the GPU alike stays two values") {
  // Common subexpressions once merged equal nodes without inputs (a fill, a constant) on two
  // devices, so a GPU kernel read the CPU's buffer: an illegal address on a GPU.
  if (!have_gpu()) return;
  auto f = [](const Tensor& x) {
    Tensor on_cpu = full({4}, 2.0), on_gpu = full({4}, 2.0, {.device = cuda()});
    return std::vector<Tensor>{(x.to(cuda()) * on_gpu).exp().to(kCPU) + on_cpu, x * on_cpu.exp()};
  };
  auto traced = trace(f);
  Tensor x = randn({4});
  for (int i = 0; i < 2; ++i) {
    std::vector<Tensor> got = traced(x), want = f(x);
    for (size_t k = 0; k < 2; ++k) CHECK(close(got[k], want[k], 1e-5));
  }
  const std::string summary = traced.pass_summary();
  CAPTURE(summary);
  auto count = [&](const std::string& what) {
    size_t n = 0;
    for (size_t at = summary.find(what); at != std::string::npos; at = summary.find(what, at + 1))
      ++n;
    return n;
  };
  CHECK(count("cse: merged") >= 1);
  CHECK(count("cse: merged 0 nodes") == count("cse: merged"));
}
