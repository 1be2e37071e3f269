// Models on CUDA against the same models on the CPU: layers, losses and their gradients, every
// optimizer's steps eager and traced, and weight files written from the GPU. Without a GPU each
// case says so and skips; the emulated GPU (tests/emu) runs them too.
#include <doctest/doctest.h>
#include <tapegrad/format.h>
#include <tapegrad/tapegrad.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>

#include "gpu_checks.h"

using namespace tg;
using namespace tgtest;
namespace F = tg::nn::functional;

namespace {

// The same module twice from one seed: one stays on the CPU, one goes to the GPU.
template <class M, class Make>
std::pair<M, M> twins(Make make) {
  manual_seed(11);
  M cpu = make();
  manual_seed(11);
  M gpu = make();
  gpu.to(cuda());
  return {cpu, gpu};
}

// Every parameter of a against b's, and their gradients.
void same_params(const nn::Module& a, const nn::Module& b, double tol, bool grads = true) {
  auto pa = a.named_parameters(), pb = b.named_parameters();
  REQUIRE(pa.size() == pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    CAPTURE(pa[i].first);
    CHECK(pa[i].second.device() == Device(cuda()));
    CHECK(close(pa[i].second, pb[i].second, tol));
    if (grads && pb[i].second.grad().defined()) {
      REQUIRE(pa[i].second.grad().defined());
      CHECK(pa[i].second.grad().device() == Device(cuda()));
      CHECK(close(pa[i].second.grad(), pb[i].second.grad(), tol));
    }
  }
}

}  // namespace

TEST_CASE("cuda: layers give the CPU's outputs and gradients") {
  if (!have_gpu()) return;
  manual_seed(1);
  struct Case {
    const char* name;
    std::function<nn::Sequential()> make;
    Tensor x;
  };
  const Case cases[] = {
      {"mlp",
       [] {
         return nn::Sequential{nn::Linear(12, 16), nn::Tanh(), nn::Linear(16, 5)};
       },
       randn({7, 12})},
      {"cnn",
       [] {
         return nn::Sequential{nn::Conv2d(3, 4, 3, {.padding = 1}),
                               nn::BatchNorm2d(4),
                               nn::ReLU(),
                               nn::MaxPool2d(2),
                               nn::Conv2d(4, 6, 3, {.stride = 2}),
                               nn::AdaptiveAvgPool2d(1),
                               nn::Flatten(),
                               nn::Linear(6, 3)};
       },
       randn({2, 3, 10, 10})},
      {"norms and pooling",
       [] {
         return nn::Sequential{nn::LayerNorm({5, 6}), nn::AvgPool2d(2), nn::Flatten(),
                               nn::BatchNorm1d(12),   nn::Dropout(0.3), nn::Linear(12, 2)};
       },
       randn({4, 2, 5, 6})},
  };
  for (const Case& c : cases) {
    CAPTURE(std::string(c.name));
    for (bool training : {true, false}) {
      CAPTURE(training);
      auto [cpu, gpu] = twins<nn::Sequential>(c.make);
      cpu.train(training);
      gpu.train(training);
      // Dropout draws from the same Philox stream on both devices.
      manual_seed(2);
      Tensor want = cpu(c.x);
      manual_seed(2);
      Tensor got = gpu(c.x.to(cuda()));
      CHECK(got.device() == Device(cuda()));
      CHECK(close(got, want, 1e-4));
      (want * want).sum().backward();
      (got * got).sum().backward();
      same_params(gpu, cpu, 1e-3);
      // Buffers too (BatchNorm's running statistics).
      auto bg = gpu.state_dict(), bc = cpu.state_dict();
      for (auto& [k, v] : bc) {
        CAPTURE(k);
        CHECK(bg.at(k).device() == Device(cuda()));
        CHECK(close(bg.at(k), v, 1e-4));
      }
    }
  }
}

TEST_CASE("cuda: an embedding and recurrent layers give the CPU's outputs and gradients") {
  if (!have_gpu()) return;
  auto [ce, ge] = twins<nn::Embedding>([] { return nn::Embedding(10, 4); });
  Tensor idx = tensor<int64_t>({3, 1, 9, 3, 0});
  Tensor want = ce(idx), got = ge(idx.to(cuda()));
  CHECK(close(got, want, 1e-6));
  want.sum().backward();
  got.sum().backward();
  same_params(ge, ce, 1e-6);
  Tensor x = randn({5, 3, 4});  // (time, batch, features)
  for (int kind = 0; kind < 3; ++kind) {
    CAPTURE(kind);
    nn::RNNOptions o{.num_layers = 2};
    auto run = [&](auto make) {
      auto [cpu, gpu] = twins<decltype(make())>(make);
      Tensor w = cpu(x), g = gpu(x.to(cuda()));
      CHECK(g.device() == Device(cuda()));
      CHECK(close(g, w, 1e-4));
      w.pow(2).sum().backward();
      g.pow(2).sum().backward();
      same_params(gpu, cpu, 1e-3);
    };
    if (kind == 0) run([&] { return nn::RNN(4, 6, o); });
    if (kind == 1) run([&] { return nn::GRU(4, 6, o); });
    if (kind == 2) run([&] { return nn::LSTM(4, 6, o); });
  }
}

TEST_CASE("cuda: losses give the CPU's values and gradients") {
  if (!have_gpu()) return;
  manual_seed(3);
  Tensor logits = randn({6, 5}), target = tensor<int64_t>({0, 4, 2, -100, 1, 4});
  Tensor probs = sigmoid(randn({6, 5})), soft = softmax(randn({6, 5}), 1);
  Tensor weight = rand({5}) + 0.5, y = randn({6, 5});
  using Loss = std::function<Tensor(const Tensor& x, Device d)>;
  const std::pair<const char*, Loss> losses[] = {
      {"cross_entropy",
       [&](const Tensor& x, Device d) { return F::cross_entropy(x, target.to(d)); }},
      {"cross_entropy, weights, smoothing, sum",
       [&](const Tensor& x, Device d) {
         return F::cross_entropy(
             x, target.to(d),
             {.weight = weight.to(d), .reduction = F::Reduction::Sum, .label_smoothing = 0.1});
       }},
      {"cross_entropy, probabilities",
       [&](const Tensor& x, Device d) { return F::cross_entropy(x, soft.to(d)); }},
      {"nll_loss",
       [&](const Tensor& x, Device d) {
         return F::nll_loss(log_softmax(x, 1), target.to(d), {.weight = weight.to(d)});
       }},
      {"mse_loss", [&](const Tensor& x, Device d) { return F::mse_loss(x, y.to(d)); }},
      {"huber_loss", [&](const Tensor& x, Device d) { return F::huber_loss(x, y.to(d)); }},
      {"binary_cross_entropy",
       [&](const Tensor& x, Device d) { return F::binary_cross_entropy(sigmoid(x), probs.to(d)); }},
      {"binary_cross_entropy_with_logits",
       [&](const Tensor& x, Device d) {
         return F::binary_cross_entropy_with_logits(x, probs.to(d));
       }},
  };
  for (const auto& [name, loss] : losses) {
    CAPTURE(std::string(name));
    Tensor xc = logits.clone().requires_grad_(), xg = logits.to(cuda()).requires_grad_();
    Tensor want = loss(xc, kCPU), got = loss(xg, cuda());
    CHECK(got.device() == Device(cuda()));
    CHECK(close(got, want, 1e-5));
    want.backward();
    got.backward();
    CHECK(close(xg.grad(), xc.grad(), 1e-5));
  }
}

TEST_CASE("cuda: every optimizer's steps equal the CPU's, eager and traced") {
  if (!have_gpu()) return;
  using Make = std::function<std::unique_ptr<optim::Optimizer>(std::vector<Tensor>)>;
  const std::pair<const char*, Make> optimizers[] = {
      {"SGD", [](auto p) { return std::make_unique<optim::SGD>(p, optim::SGDOptions{.lr = 0.1}); }},
      {"SGD, Nesterov momentum, weight decay",
       [](auto p) {
         return std::make_unique<optim::SGD>(
             p,
             optim::SGDOptions{.lr = 0.1, .momentum = 0.9, .weight_decay = 0.01, .nesterov = true});
       }},
      {"Adam",
       [](auto p) { return std::make_unique<optim::Adam>(p, optim::AdamOptions{.lr = 0.01}); }},
      {"Adam, amsgrad",
       [](auto p) {
         return std::make_unique<optim::Adam>(p, optim::AdamOptions{.lr = 0.01, .amsgrad = true});
       }},
      {"AdamW",
       [](auto p) { return std::make_unique<optim::AdamW>(p, optim::AdamWOptions{.lr = 0.01}); }},
      {"RMSprop, centered, momentum",
       [](auto p) {
         return std::make_unique<optim::RMSprop>(
             p, optim::RMSpropOptions{.lr = 0.01, .momentum = 0.5, .centered = true});
       }},
      {"Adagrad",
       [](auto p) {
         return std::make_unique<optim::Adagrad>(
             p, optim::AdagradOptions{.lr = 0.1, .lr_decay = 0.01});
       }},
  };
  manual_seed(4);
  Tensor x = randn({16, 6}), y = randint(0, 3, {16});
  for (const auto& [name, make] : optimizers) {
    CAPTURE(std::string(name));
    for (bool traced : {false, true}) {
      CAPTURE(traced);
      auto [cpu, gpu] = twins<nn::Sequential>([] {
        return nn::Sequential{nn::Linear(6, 8), nn::Tanh(), nn::Linear(8, 3)};
      });
      auto oc = make(cpu.parameters()), og = make(gpu.parameters());
      auto step = [](nn::Sequential& m, optim::Optimizer& o) {
        return [&m, &o](const Tensor& xb, const Tensor& yb) {
          o.zero_grad();
          Tensor loss = F::cross_entropy(m(xb), yb);
          loss.backward();
          o.step();
          return loss;
        };
      };
      std::function<Tensor(const Tensor&, const Tensor&)> sc = step(cpu, *oc), sg = step(gpu, *og);
      if (traced) sg = trace(sg);
      Tensor xg = x.to(cuda()), yg = y.to(cuda());
      for (int i = 0; i < 4; ++i) {
        CAPTURE(i);
        Tensor lc = sc(x, y), lg = sg(xg, yg);
        CHECK(close(lg, lc, 1e-5));
      }
      same_params(gpu, cpu, 1e-4, /*grads=*/false);
      // The optimizer's state lives with the parameters.
      for (auto& [k, v] : og->state_dict())
        if (k.rfind("state.", 0) == 0) {
          CAPTURE(k);
          CHECK(v.device() == Device(cuda()));
          CHECK(close(v, oc->state_dict().at(k), 1e-4));
        }
    }
  }
}

TEST_CASE("cuda: weights saved from the GPU load on the CPU, and back") {
  if (!have_gpu()) return;
  auto [cpu, gpu] = twins<nn::Sequential>([] {
    return nn::Sequential{nn::Linear(5, 4), nn::BatchNorm1d(4), nn::Linear(4, 2)};
  });
  gpu(randn({8, 5}).to(cuda()));  // running statistics move on the GPU only
  const std::string path =
      (std::filesystem::temp_directory_path() / "tg_cuda_weights.safetensors").string();
  gpu.save(path);
  cpu.load(path);
  std::filesystem::remove(path);
  for (auto& [k, v] : gpu.state_dict()) {
    CAPTURE(k);
    CHECK(close(cpu.state_dict().at(k), v, 0));
    CHECK(cpu.state_dict().at(k).device() == Device(kCPU));
  }
  // And a CPU state into the GPU model: the tensors stay on the GPU.
  for (auto& p : cpu.parameters()) {
    NoGradGuard g;
    p.mul_(2);
  }
  gpu.load_state_dict(cpu.state_dict());
  for (auto& [k, v] : cpu.state_dict()) {
    CAPTURE(k);
    CHECK(gpu.state_dict().at(k).device() == Device(cuda()));
    CHECK(close(gpu.state_dict().at(k), v, 0));
  }
}

TEST_CASE("cuda: a graph traced on the GPU saves to a file that runs on the CPU") {
  if (!have_gpu()) return;
  auto [cpu, gpu] = twins<nn::Sequential>(
      [] { return nn::Sequential{nn::Linear(6, 8), nn::Tanh(), nn::Linear(8, 3)}; });
  optim::Adam og(gpu.parameters(), {.lr = 0.01});
  auto step = trace([&](const Tensor& x, const Tensor& y) {
    og.zero_grad();
    Tensor loss = F::cross_entropy(gpu(x), y);
    loss.backward();
    og.step();
    return loss;
  });
  manual_seed(5);
  Tensor x = randn({16, 6}), y = randint(0, 3, {16});
  for (int i = 0; i < 3; ++i) (void)step(x.to(cuda()), y.to(cuda()));
  const std::string path =
      (std::filesystem::temp_directory_path() / "tg_cuda_step.tgraph").string();
  step.save(path);
  TracedFunction loaded = load_traced(path);
  std::filesystem::remove(path);
  // The file's copy of the state goes on from where the GPU's model is, on the CPU.
  for (int i = 0; i < 2; ++i) {
    CAPTURE(i);
    Tensor want = step(x.to(cuda()), y.to(cuda()));
    std::vector<Tensor> got = loaded(x, y);
    REQUIRE(got.size() == 1);
    CHECK(got[0].device() == Device(kCPU));
    CHECK(close(got[0], want, 1e-5));
  }
}

TEST_CASE("cuda: Jacobians, Hessians and products of them give the CPU's") {
  if (!have_gpu()) return;
  manual_seed(6);
  Tensor x = randn({4}, {.dtype = kF64}), v = randn({4}, {.dtype = kF64});
  auto f = [](const Tensor& t) { return tanh(t * t.sum()) + t.pow(3) * 0.5; };
  auto s = [](const Tensor& t) { return (t.exp() * t).sum() + t.sum() * t.sum(); };
  auto constant = [](const Tensor& t) { return ones_like(t) * 3; };  // x does not reach it
  Tensor xg = x.to(cuda()), vg = v.to(cuda());
  CHECK(close(jacobian(f, xg), jacobian(f, x), 1e-12));
  CHECK(jacobian(f, xg).device() == Device(cuda()));
  CHECK(close(jacobian(constant, xg), jacobian(constant, x), 0));
  CHECK(jacobian(constant, xg).device() == Device(cuda()));
  CHECK(close(hessian(s, xg), hessian(s, x), 1e-12));
  CHECK(close(vjp(f, xg, vg), vjp(f, x, v), 1e-12));
  CHECK(close(jvp(f, xg, vg), jvp(f, x, v), 1e-12));
  CHECK(close(hvp(s, xg, vg), hvp(s, x, v), 1e-12));
}

TEST_CASE("cuda: gradient clipping, tensor files and printing take CUDA tensors") {
  if (!have_gpu()) return;
  manual_seed(7);
  std::vector<Tensor> pc{randn({5, 3}).requires_grad_(), randn({3}).requires_grad_()}, pg;
  for (const Tensor& p : pc) pg.push_back(p.detach().to(cuda()).requires_grad_());
  for (size_t i = 0; i < pc.size(); ++i) {
    (pc[i] * pc[i] * 4).sum().backward();
    (pg[i] * pg[i] * 4).sum().backward();
  }
  CHECK(std::abs(nn::utils::clip_grad_norm_(pg, 1.0) - nn::utils::clip_grad_norm_(pc, 1.0)) < 1e-4);
  nn::utils::clip_grad_value_(pg, 0.05);
  nn::utils::clip_grad_value_(pc, 0.05);
  for (size_t i = 0; i < pc.size(); ++i) CHECK(close(pg[i].grad(), pc[i].grad(), 1e-5));
  namespace fs = std::filesystem;
  const std::string npy = (fs::temp_directory_path() / "tg_cuda.npy").string();
  const std::string st = (fs::temp_directory_path() / "tg_cuda.safetensors").string();
  save_npy(npy, pg[0].detach());
  save_safetensors(st, {{"w", pg[0].detach()}, {"b", pg[1].detach()}});
  CHECK(close(load_npy(npy), pc[0], 0));
  CHECK(close(load_safetensors(st).at("b"), pc[1], 0));
  fs::remove(npy);
  fs::remove(st);
  Tensor t = arange(0, 6).reshape({2, 3}).to(kF32);
  std::string on_gpu = fmt::format("{}", t.to(cuda())), on_cpu = fmt::format("{}", t);
  CAPTURE(on_gpu);
  CHECK(on_gpu.find("cuda:0") != std::string::npos);
  CHECK(on_gpu.find("[[0.0, 1.0, 2.0],") != std::string::npos);
  CHECK(on_cpu.find("[[0.0, 1.0, 2.0],") != std::string::npos);
}

TEST_CASE("cuda: Mode::Debug replays a training step on the GPU, checking it node by node") {
  if (!have_gpu()) return;
  auto [cpu, gpu] = twins<nn::Sequential>([] {
    return nn::Sequential{nn::Linear(6, 8), nn::Tanh(), nn::Linear(8, 3)};
  });
  optim::Adam oc(cpu.parameters(), {.lr = 0.01}), og(gpu.parameters(), {.lr = 0.01});
  auto step_of = [](nn::Sequential& m, optim::Optimizer& o) {
    return [&m, &o](const Tensor& x, const Tensor& y) {
      o.zero_grad();
      Tensor loss = F::cross_entropy(m(x), y);
      loss.backward();
      o.step();
      return loss;
    };
  };
  auto eager = step_of(cpu, oc);
  auto debug = trace(step_of(gpu, og), {.mode = Mode::Debug});
  manual_seed(12);
  Tensor x = randn({16, 6}), y = randint(0, 3, {16});
  for (int i = 0; i < 3; ++i) {
    CAPTURE(i);
    Tensor lg = debug(x.to(cuda()), y.to(cuda())), lc = eager(x, y);
    CHECK(close(lg, lc, 1e-5));
  }
  // The state was put back between the two runs of each replay: the weights took one step each.
  same_params(gpu, cpu, 1e-5, /*grads=*/false);
}

TEST_CASE("cuda: a 0-d CPU tensor works beside a GPU tensor, as PyTorch's CPU scalars") {
  if (!have_gpu()) return;
  manual_seed(14);
  Tensor s = tensor(2.5).requires_grad_();  // f64, 0-d, on the CPU
  Tensor xc = randn({3, 4});
  Tensor x = xc.to(cuda()).requires_grad_();
  Tensor y = x * s + s;
  CHECK(y.device() == Device(cuda()));
  CHECK(y.dtype() == kF32);  // promotion as with the tensor on the GPU: 0-d f64 does not lift f32
  CHECK(close(y, xc * 2.5 + 2.5, 1e-6));
  y.sum().backward();
  REQUIRE(s.grad().defined());
  CHECK(s.grad().device() == Device(kCPU));  // the gradient goes back to the CPU tensor
  CHECK(std::abs(s.grad().item<double>() - (xc.sum().item<double>() + 12)) < 1e-4);
  CHECK(close(x.grad(), full({3, 4}, 2.5), 1e-6));
  Tensor z = xc.to(cuda());
  z.mul_(tensor(2.0f));
  CHECK(close(z, xc * 2, 0));
  // where takes them too, as a value or as the condition; the gradient comes back to the CPU.
  Tensor fill = tensor(-1.5).requires_grad_();
  Tensor w = where(x > 0, x, fill);
  CHECK(w.device() == Device(cuda()));
  CHECK(close(w, where(xc > 0, xc, -1.5), 0));
  w.sum().backward();
  REQUIRE(fill.grad().defined());
  CHECK(fill.grad().device() == Device(kCPU));
  CHECK(fill.grad().item<double>() == doctest::Approx((xc <= 0).sum().item<double>()));
  Tensor picked = where(tensor(true), xc.to(cuda()), x.detach() * 0);
  CHECK(picked.device() == Device(cuda()));
  CHECK(close(picked, xc, 0));
  // More than a scalar still has to be on one device.
  CHECK_THROWS_WITH_AS((void)(x + tensor({1.0f, 2.0f, 3.0f, 4.0f})),
                       doctest::Contains("expected all tensors on one device"), Error);
  CHECK_THROWS_WITH_AS((void)where(x > 0, x, tensor({1.0f, 2.0f, 3.0f, 4.0f})),
                       doctest::Contains("expected all tensors on one device"), Error);
}

TEST_CASE("cuda: a traced step moves CPU batches in and its loss out, as eager does") {
  if (!have_gpu()) return;
  // x.to(cuda()) of an argument, and of a tensor the function holds, inside the function: a
  // transfer of what they hold at each call (not a value kept from the first), and the loss
  // back on the CPU.
  auto make = [] {
    manual_seed(22);
    return nn::Sequential{nn::Linear(10, 12), nn::ReLU(), nn::Linear(12, 4)};
  };
  nn::Sequential cpu = make(), gpu = make();
  gpu.to(cuda());
  optim::SGD oc(cpu.parameters(), {.lr = 0.05, .momentum = 0.9}),
      og(gpu.parameters(), {.lr = 0.05, .momentum = 0.9});
  Tensor shift = zeros({10});  // on the CPU, changed between calls
  auto step_of = [&shift](nn::Sequential& m, optim::Optimizer& o, Device d) {
    return [&m, &o, &shift, d](const Tensor& x, const Tensor& y) {
      o.zero_grad();
      Tensor logits = m(x.to(d) + shift.to(d));
      Tensor loss = nn::functional::cross_entropy(logits, y.to(d));  // moved in after the forward
      loss.backward();
      o.step();
      return loss.to(kCPU);
    };
  };
  auto eager = step_of(cpu, oc, kCPU);
  auto traced = trace(step_of(gpu, og, cuda()));
  for (int i = 0; i < 6; ++i) {
    CAPTURE(i);
    manual_seed(100 + static_cast<uint64_t>(i));
    Tensor x = randn({16, 10}), y = randint(0, 4, {16});
    shift.fill_(0.1 * i);
    Tensor lt = traced(x, y), le = eager(x, y);
    CHECK(lt.device() == Device(kCPU));
    CHECK(std::abs(lt.item<float>() - le.item<float>()) < 1e-5);
  }
  auto pc = cpu.parameters(), pg = gpu.parameters();
  for (size_t i = 0; i < pc.size(); ++i) CHECK(close(pg[i], pc[i], 1e-5));
  std::string summary = traced.pass_summary();
  CAPTURE(summary);
  // The transfers of what the function was given run first, so the forward is not cut where y
  // arrives: two segments, launched as one.
  CHECK(summary.find("run as 2 captured CUDA graphs") != std::string::npos);
  CHECK(summary.find("the last two launched as one") != std::string::npos);
  CHECK(summary.find(" 0 segments refused") != std::string::npos);
  // Mode::Debug checks the same step node by node, transfers and all.
  {
    nn::Sequential a = make(), b = make();
    b.to(cuda());
    optim::SGD oa(a.parameters(), {.lr = 0.05}), ob(b.parameters(), {.lr = 0.05});
    auto debug = trace(step_of(b, ob, cuda()), {.mode = Mode::Debug});
    auto plain = step_of(a, oa, kCPU);
    for (int i = 0; i < 3; ++i) {
      CAPTURE(i);
      Tensor x = randn({16, 10}), y = randint(0, 4, {16});
      Tensor ld = debug(x, y), lp = plain(x, y);
      CHECK(ld.device() == Device(kCPU));
      CHECK(std::abs(ld.item<float>() - lp.item<float>()) < 1e-5);
    }
  }
  // A graph with transfers saves as one with copies, and runs from its file on the CPU.
  const std::string path =
      (std::filesystem::temp_directory_path() / "tg_cuda_transfers.tgraph").string();
  traced.save(path);
  TracedFunction loaded = load_traced(path);
  std::filesystem::remove(path);
  Tensor x = randn({16, 10}), y = randint(0, 4, {16});
  Tensor want = traced(x, y);
  std::vector<Tensor> got = loaded(x, y);
  REQUIRE(got.size() == 1);
  CHECK(got[0].device() == Device(kCPU));
  CHECK(close(got[0], want, 1e-5));
}

TEST_CASE("cuda: two GPUs: each tensor's work runs on its own device, and models train on either") {
  if (!have_gpu()) return;
  if (cuda::device_count() < 2) {
    MESSAGE("one GPU: the two-GPU case skipped");
    return;
  }
  const Device g0 = cuda(0), g1 = cuda(1);
  manual_seed(3);
  Tensor a = randn({37, 19}), b = randn({19, 23});
  Tensor a1 = a.to(g1), b1 = b.to(g1);
  CHECK(a1.device() == g1);
  // Kernels, a product and a reduction on cuda:1 give the CPU's values.
  Tensor c1 = (a1.matmul(b1) + 1).tanh().sum({1});
  CHECK(c1.device() == g1);
  CHECK(close(c1, (a.matmul(b) + 1).tanh().sum({1}), 1e-5));
  // Between the GPUs, the bits go unchanged.
  Tensor a0 = a1.to(g0);
  CHECK(a0.device() == g0);
  CHECK(same_bits(a0, a));
  CHECK(same_bits(a0.to(g1), a));
  // Gradients flow back across a move between them (model parallel: half a model on each).
  Tensor w = randn({19, 5});
  Tensor w0 = w.to(g0).requires_grad_();
  Tensor h1 = (a0.matmul(w0).tanh()).to(g1);
  CHECK(h1.device() == g1);
  (h1 * h1).sum().backward();
  REQUIRE(w0.grad().defined());
  CHECK(w0.grad().device() == g0);
  Tensor wc = w.clone().requires_grad_();
  Tensor hc = a.matmul(wc).tanh();
  (hc * hc).sum().backward();
  CHECK(close(w0.grad(), wc.grad(), 1e-5));
  // The same, traced: a graph across both GPUs, each node on its own device, each move between
  // them one transfer (straight across at each replay). Equal constants on the two devices stay
  // two (common subexpressions once merged them, and a kernel on one GPU read the other's).
  {
    Tensor v = randn({5, 4});
    Tensor v0 = w.to(g0).requires_grad_(), v1 = v.to(g1).requires_grad_();
    auto across = [&](const Tensor& x) {
      Tensor h = x.to(g0).matmul(v0).tanh();
      Tensor y = h.to(g1).matmul(v1);
      Tensor loss = (y * y).mean();
      std::vector<Tensor> g = grad({loss}, {v0, v1});
      return std::vector<Tensor>{loss.to(kCPU), g[0], g[1]};
    };
    auto traced_across = trace(across);
    for (int i = 0; i < 3; ++i) {
      CAPTURE(i);
      Tensor x = randn({7, 19});
      std::vector<Tensor> want = across(x), got = traced_across(x);
      REQUIRE(got.size() == 3);
      CHECK(got[1].device() == g0);
      CHECK(got[2].device() == g1);
      for (size_t k = 0; k < 3; ++k) CHECK(close(got[k], want[k], 1e-5));
    }
    // In to cuda:0, across, back across (the gradient), out to the CPU.
    CHECK(traced_across.graph().count("to_device") == 4);
    // Mode::Debug checks it node by node against eager, the moves included.
    auto debug_across = trace(across, {.mode = Mode::Debug});
    Tensor x = randn({7, 19});
    std::vector<Tensor> want = across(x), got = debug_across(x);
    for (size_t k = 0; k < 3; ++k) CHECK(close(got[k], want[k], 1e-5));
  }
  // Half a model on each GPU, one optimizer over both halves, stepped eagerly and traced.
  {
    auto halves = [&](Device first, Device second) {
      manual_seed(31);
      nn::Linear l0(19, 8), l1(8, 3);
      l0.to(first);
      l1.to(second);
      return std::pair{l0, l1};
    };
    auto [c0, c1] = halves(kCPU, kCPU);
    auto [e0, e1] = halves(g0, g1);
    auto [t0, t1] = halves(g0, g1);
    auto params = [](nn::Linear& a, nn::Linear& b) {
      std::vector<Tensor> p = a.parameters();
      for (const Tensor& t : b.parameters()) p.push_back(t);
      return p;
    };
    optim::Adam oc(params(c0, c1), {.lr = 0.02}), oe(params(e0, e1), {.lr = 0.02}),
        ot(params(t0, t1), {.lr = 0.02});
    auto step_of = [](nn::Linear& a, nn::Linear& b, optim::Optimizer& o) {
      return [&a, &b, &o](const Tensor& x, const Tensor& y) {
        o.zero_grad();
        const Device d0 = a.parameters()[0].device(), d1 = b.parameters()[0].device();
        Tensor logits = b(a(x.to(d0)).relu().to(d1));
        Tensor loss = nn::functional::cross_entropy(logits, y.to(d1));
        loss.backward();
        o.step();
        return loss.to(kCPU);
      };
    };
    auto on_cpu = step_of(c0, c1, oc), eager_split = step_of(e0, e1, oe);
    auto traced_split = trace(step_of(t0, t1, ot));
    for (int i = 0; i < 4; ++i) {
      CAPTURE(i);
      manual_seed(300 + static_cast<uint64_t>(i));
      Tensor x = randn({9, 19}), y = randint(0, 3, {9});
      const float want = on_cpu(x, y).item<float>();
      CHECK(std::abs(eager_split(x, y).item<float>() - want) < 1e-5);
      CHECK(std::abs(traced_split(x, y).item<float>() - want) < 1e-5);
    }
    auto pc = params(c0, c1), pe = params(e0, e1), pt = params(t0, t1);
    for (size_t i = 0; i < pc.size(); ++i) {
      CHECK(pe[i].device() == (i < 2 ? g0 : g1));
      CHECK(close(pe[i], pc[i], 1e-5));
      CHECK(close(pt[i], pc[i], 1e-5));
    }
  }
  // Mixing them is an error, as mixing the CPU and a GPU is.
  CHECK_THROWS_WITH_AS((void)(a0 + a1), doctest::Contains("expected all tensors on one device"),
                       Error);
  // Turns between the devices in one thread: each op runs where its tensors are.
  for (int i = 0; i < 3; ++i) {
    CAPTURE(i);
    Tensor x0 = (a0 * (i + 1)).exp().sum({0}), x1 = (a1 * (i + 2)).exp().sum({0});
    CHECK(close(x0, (a * (i + 1)).exp().sum({0}), 1e-5));
    CHECK(close(x1, (a * (i + 2)).exp().sum({0}), 1e-5));
  }
  // The same seed draws the same numbers on either device.
  manual_seed(7);
  Tensor r1 = randn({1000}, {.device = g1});
  manual_seed(7);
  Tensor r0 = randn({1000}, {.device = g0});
  CHECK(same_bits(r1, r0));
  // Memory is counted per device.
  cuda::synchronize(0);
  cuda::synchronize(1);
  const cuda::Memory m0 = cuda::memory_stats(0), m1 = cuda::memory_stats(1);
  {
    Tensor big = empty({1 << 20}, {.device = g1});
    CHECK(cuda::memory_stats(1).allocated >= m1.allocated + (4 << 20));
    CHECK(cuda::memory_stats(0).allocated == m0.allocated);
  }
  // A model on cuda:1, a step eager and a step traced, each against the CPU's.
  auto make = [] {
    manual_seed(23);
    return nn::Sequential{nn::Linear(10, 12), nn::Tanh(), nn::Linear(12, 4)};
  };
  nn::Sequential cpu = make(), eager = make(), traced = make();
  eager.to(g1);
  traced.to(g1);
  optim::Adam oc(cpu.parameters(), {.lr = 0.01}), oe(eager.parameters(), {.lr = 0.01}),
      ot(traced.parameters(), {.lr = 0.01});
  auto step_of = [](nn::Sequential& m, optim::Optimizer& o, Device d) {
    return [&m, &o, d](const Tensor& x, const Tensor& y) {
      o.zero_grad();
      Tensor loss = nn::functional::cross_entropy(m(x.to(d)), y.to(d));
      loss.backward();
      o.step();
      return loss.to(kCPU);
    };
  };
  auto on_cpu = step_of(cpu, oc, kCPU), on_g1 = step_of(eager, oe, g1);
  auto replayed = trace(step_of(traced, ot, g1));
  for (int i = 0; i < 5; ++i) {
    CAPTURE(i);
    manual_seed(200 + static_cast<uint64_t>(i));
    Tensor x = randn({16, 10}), y = randint(0, 4, {16});
    const float want = on_cpu(x, y).item<float>();
    CHECK(std::abs(on_g1(x, y).item<float>() - want) < 1e-5);
    CHECK(std::abs(replayed(x, y).item<float>() - want) < 1e-5);
  }
  auto pc = cpu.parameters(), pe = eager.parameters(), pt = traced.parameters();
  for (size_t i = 0; i < pc.size(); ++i) {
    CHECK(pe[i].device() == g1);
    CHECK(pt[i].device() == g1);
    CHECK(close(pe[i], pc[i], 1e-5));
    CHECK(close(pt[i], pc[i], 1e-5));
  }
  const std::string summary = replayed.pass_summary();
  CAPTURE(summary);
  CHECK(summary.find(" 0 segments refused") != std::string::npos);
  // One thread per device, at once.
  float s0 = 0, s1 = 0;
  std::thread t0([&] { s0 = (a0 * a0).sum().item<float>(); });
  std::thread t1([&] { s1 = (a1 * a1).sum().item<float>(); });
  t0.join();
  t1.join();
  const float want = (a * a).sum().item<float>();
  CHECK(std::abs(s0 - want) < 1e-3f * std::abs(want));
  CHECK(std::abs(s1 - want) < 1e-3f * std::abs(want));
}
