// nn: module registration and names, handles, train/eval, to(), state_dict, printing; every layer
// against a hand-written reference; losses against their formulas and by gradcheck.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <cmath>
#include <filesystem>

#include "gradcheck.h"

using namespace tg;
namespace F = tg::nn::functional;

namespace {
std::vector<double> values(const Tensor& t) { return t.detach().to(kF64).to_vector<double>(); }
void check_close(const Tensor& got, const Tensor& want, double tol = 1e-5) {
  REQUIRE(got.shape() == want.shape());
  auto a = values(got), b = values(want);
  for (size_t i = 0; i < a.size(); ++i) CHECK(a[i] == doctest::Approx(b[i]).epsilon(tol).scale(1));
}
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
std::vector<std::string> names(const nn::Module& m) {
  std::vector<std::string> out;
  for (auto& [n, p] : m.named_parameters()) out.push_back(n);
  return out;
}

struct Net : nn::Module {
  nn::Sequential body{nn::Linear(4, 8), nn::ReLU(), nn::Linear(8, 3)};
  Tensor scale = ones({3});
  Net() {
    register_module("body", body);
    register_parameter("scale", scale);
  }
  Tensor forward(const Tensor& x) override { return body(x) * scale; }
};
}  // namespace

TEST_CASE("Sequential and custom modules: PyTorch's state_dict names, handles shared") {
  manual_seed(0);
  nn::Sequential seq{nn::Linear(784, 32), nn::Tanh(), nn::Linear(32, 10)};
  CHECK(names(seq) == std::vector<std::string>{"0.weight", "0.bias", "2.weight", "2.bias"});
  CHECK(seq.forward(randn({5, 784})).shape() == Shape{5, 10});
  CHECK(seq.size() == 3);
  CHECK(seq.parameters().size() == 4);

  Net net;
  CHECK(names(net) == std::vector<std::string>{"scale", "body.0.weight", "body.0.bias",
                                               "body.2.weight", "body.2.bias"});
  // The member and the registered child are one module: a change through either is seen by both.
  for (auto& [n, p] : net.named_parameters())
    if (n == "body.0.bias") {
      NoGradGuard g;
      p.fill_(7);
    }
  auto& first = dynamic_cast<nn::Linear&>(net.body[0]);
  CHECK(values(first.bias)[0] == 7);
  Net moved = std::move(net);  // moving the parent keeps the registry valid
  CHECK(names(moved).size() == 5);
  CHECK(moved(randn({2, 4})).shape() == Shape{2, 3});
  CHECK(moved.named_modules().size() == 5);  // "", body, body.0, body.1, body.2
}

TEST_CASE("train/eval, zero_grad, to(dtype) keep every handle valid") {
  Net net;
  CHECK(net.is_training());
  net.eval();
  CHECK(!net.body[0].is_training());
  net.train();
  CHECK(net.body[2].is_training());
  Tensor x = randn({3, 4});
  net(x).sum().backward();
  CHECK(net.scale.grad().defined());
  net.zero_grad();
  CHECK(!net.scale.grad().defined());
  auto& lin = dynamic_cast<nn::Linear&>(net.body[0]);
  Tensor w = lin.weight;
  net.to(kF64);
  CHECK(w.dtype() == kF64);  // the old handle now holds f64 data
  CHECK(lin.weight.dtype() == kF64);
  CHECK(w.requires_grad());
  CHECK(net(x.to(kF64)).dtype() == kF64);
}

TEST_CASE("save and load: a round trip, and every mismatch reported by name") {
  auto dir = std::filesystem::temp_directory_path() / "tg_test_nn";
  std::filesystem::create_directories(dir);
  std::string path = (dir / "net.safetensors").string();
  manual_seed(1);
  Net a;
  a.save(path);
  manual_seed(2);
  Net b;
  Tensor x = randn({2, 4});
  CHECK(values(a(x)) != values(b(x)));
  b.load(path);
  CHECK(values(a(x)) == values(b(x)));

  nn::Sequential other{nn::Linear(4, 9), nn::ReLU(), nn::Linear(9, 3)};
  std::string msg = error_of([&] { other.load(path); });
  CHECK(msg.find("missing '0.weight' ([9, 4], f32)") != std::string::npos);
  CHECK(msg.find("unexpected 'scale'") != std::string::npos);
  CHECK(msg.find("unexpected 'body.2.bias'") != std::string::npos);
  auto state = a.state_dict();
  state.erase("scale");
  state["body.0.bias"] = state["body.0.bias"].to(kF64);
  msg = error_of([&] { b.load_state_dict(state); });
  CHECK(msg.find("missing 'scale'") != std::string::npos);
  CHECK(msg.find("'body.0.bias': the module has f32") != std::string::npos);
  CHECK(values(a(x)) == values(b(x)));  // nothing changed by the failed load
  std::filesystem::remove_all(dir);
}

TEST_CASE("printing the module tree and the summary table") {
  nn::Sequential seq{nn::Conv2d(1, 6, 5, {.padding = 2}), nn::ReLU(), nn::MaxPool2d(2), nn::Flatten(),
                     nn::Linear(6 * 14 * 14, 10)};
  std::string s = seq.str();
  CHECK(s.find("Sequential(\n  (0): Conv2d(1, 6, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2))") == 0);
  CHECK(s.find("(4): Linear(in_features=1176, out_features=10, bias=true)") != std::string::npos);
  std::string table = seq.summary(zeros({1, 1, 28, 28}));
  CHECK(table.find("0 (Conv2d)") != std::string::npos);
  CHECK(table.find("[1, 6, 28, 28]") != std::string::npos);
  CHECK(table.find("[1, 1176]") != std::string::npos);
  CHECK(table.find(fmt::format("Total params: {}", 6 * 25 + 6 + 1176 * 10 + 10)) != std::string::npos);
  Net net;
  CHECK(net.str().find("Net(\n  (body): Sequential(") == 0);
}

TEST_CASE("a layer's error names the layer and the caller's line") {
  nn::Linear lin(4, 2);
  uint32_t line = 0;
  bool thrown = false;
  try {
    line = __LINE__; lin(zeros({3, 5}));
  } catch (const Error& e) {
    thrown = true;
    CHECK(std::string(e.what()).find("5 features") != std::string::npos);
    CHECK(e.op() == "Linear");
    CHECK(e.where().line() == line);
  }
  CHECK(thrown);
}

TEST_CASE("Linear, Conv2d, pooling layers match references and PyTorch's initial bounds") {
  manual_seed(3);
  nn::Linear lin(50, 7);
  double bound = 1 / std::sqrt(50.0);
  CHECK(lin.weight.abs().amax().item<float>() <= bound);
  CHECK(lin.weight.abs().amax().item<float>() > 0.9 * bound);
  Tensor x = randn({4, 50});
  check_close(lin(x), x.matmul(lin.weight.t()) + lin.bias);
  nn::Conv2d conv(3, 4, {3, 2}, {.stride = 2, .padding = 1, .bias = false});
  CHECK(!conv.bias.defined());
  CHECK(conv.weight.shape() == Shape{4, 3, 3, 2});
  Tensor img = randn({2, 3, 7, 6});
  check_close(conv(img), conv2d(img, conv.weight, {}, 2, 1));
  nn::AdaptiveAvgPool2d pool({2, 3});
  Tensor small = randn({1, 1, 5, 7});
  Tensor got = pool(small);
  // Bin (1, 2) covers rows [2, 5) and columns [4, 7).
  CHECK(got.select(2, 1).select(2, 2).item<float>() ==
        doctest::Approx(small.slice(2, 2, 5).slice(3, 4, 7).mean().item<float>()).epsilon(1e-5));
  CHECK(nn::AvgPool2d(2)(randn({1, 2, 4, 4})).shape() == Shape{1, 2, 2, 2});
  CHECK(nn::Flatten()(randn({2, 3, 4})).shape() == Shape{2, 12});
}

TEST_CASE("Dropout, BatchNorm and LayerNorm: training and evaluation behaviour") {
  manual_seed(4);
  nn::Dropout drop(0.25);
  Tensor x = ones({100000});
  Tensor y = drop(x);
  double zeros_frac = (y == 0).to(kF64).mean().item<double>();
  CHECK(zeros_frac == doctest::Approx(0.25).epsilon(0.03));
  CHECK(y.amax().item<float>() == doctest::Approx(1 / 0.75));
  drop.eval();
  CHECK(values(drop(x)) == values(x));

  nn::BatchNorm2d bn(3);
  Tensor img = randn({8, 3, 4, 4}) * 2 + 5;
  Tensor out = bn(img);
  Tensor mean = out.mean({0, 2, 3});
  Tensor var = out.var({0, 2, 3}, 0);
  for (double m : values(mean)) CHECK(std::abs(m) < 1e-4);
  for (double v : values(var)) CHECK(v == doctest::Approx(1).epsilon(1e-3));
  Tensor batch_mean = img.mean({0, 2, 3}), batch_var = img.var({0, 2, 3}, 1);
  check_close(bn.running_mean, batch_mean * 0.1);
  check_close(bn.running_var, batch_var * 0.1 + 0.9);
  CHECK(bn.num_batches_tracked.item<int64_t>() == 1);
  bn.eval();
  Tensor e = bn(img);
  check_close(e, (img - bn.running_mean.reshape({1, 3, 1, 1})) /
                     sqrt(bn.running_var.reshape({1, 3, 1, 1}) + 1e-5));
  CHECK(bn.num_batches_tracked.item<int64_t>() == 1);
  CHECK(error_of([&] { nn::BatchNorm1d(3)(randn({2, 3, 4, 5})); }).find("BatchNorm1d") != std::string::npos);

  nn::LayerNorm ln({4});
  Tensor z = randn({3, 4});
  Tensor c = z - z.mean({1}, true);
  check_close(ln(z), c / sqrt((c * c).mean({1}, true) + 1e-5));
}

TEST_CASE("Embedding, the recurrent cells and sequence layers against their equations") {
  manual_seed(5);
  nn::Embedding emb(10, 3);
  Tensor idx = tensor<int64_t>({{1, 9}, {0, 1}});
  Tensor e = emb(idx);
  CHECK(e.shape() == Shape{2, 2, 3});
  check_close(e.select(0, 1).select(0, 1), emb.weight.select(0, 1));
  CHECK(error_of([&] { emb(tensor<int64_t>({10})); }).find("out of range") != std::string::npos);

  nn::LSTMCell cell(3, 4);
  Tensor x = randn({2, 3}), h = randn({2, 4}), c = randn({2, 4});
  auto [h1, c1] = cell.forward(x, {h, c});
  Tensor gates = x.matmul(cell.weight_ih.t()) + cell.bias_ih + h.matmul(cell.weight_hh.t()) + cell.bias_hh;
  auto g = gates.chunk(4, 1);
  Tensor c_want = sigmoid(g[1]) * c + sigmoid(g[0]) * tanh(g[2]);
  check_close(c1, c_want);
  check_close(h1, sigmoid(g[3]) * tanh(c_want));

  nn::GRUCell gru(3, 4);
  Tensor gx = x.matmul(gru.weight_ih.t()) + gru.bias_ih, gh = h.matmul(gru.weight_hh.t()) + gru.bias_hh;
  auto xs = gx.chunk(3, 1), hs = gh.chunk(3, 1);
  Tensor r = sigmoid(xs[0] + hs[0]), z = sigmoid(xs[1] + hs[1]), n = tanh(xs[2] + r * hs[2]);
  check_close(gru.forward(x, h), (1 - z) * n + z * h);

  nn::RNNCell rnn_cell(3, 4);
  check_close(rnn_cell.forward(x, h),
              tanh(x.matmul(rnn_cell.weight_ih.t()) + rnn_cell.bias_ih + h.matmul(rnn_cell.weight_hh.t()) + rnn_cell.bias_hh));

  // A two-layer LSTM is its cells stepped in a loop, layer after layer.
  nn::LSTM lstm(3, 4, {.num_layers = 2});
  CHECK(names(lstm) == std::vector<std::string>{"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                                                 "weight_ih_l1", "weight_hh_l1", "bias_ih_l1", "bias_hh_l1"});
  Tensor seq = randn({5, 2, 3});
  auto [out, hc] = lstm.forward(seq, {Tensor(), Tensor()});
  CHECK(out.shape() == Shape{5, 2, 4});
  CHECK(std::get<0>(hc).shape() == Shape{2, 2, 4});
  Tensor layer_in = seq;
  for (int l = 0; l < 2; ++l) {
    auto& w = lstm.layers[static_cast<size_t>(l)];
    Tensor hh = zeros({2, 4}), cc = zeros({2, 4});
    std::vector<Tensor> steps;
    for (int t = 0; t < 5; ++t) {
      auto q = (layer_in.select(0, t).matmul(w.weight_ih.t()) + w.bias_ih + hh.matmul(w.weight_hh.t()) + w.bias_hh).chunk(4, 1);
      cc = sigmoid(q[1]) * cc + sigmoid(q[0]) * tanh(q[2]);
      hh = sigmoid(q[3]) * tanh(cc);
      steps.push_back(hh);
    }
    layer_in = stack(steps);
    check_close(std::get<1>(hc).select(0, l), cc);
  }
  check_close(out, layer_in);
  nn::GRU gru_seq(3, 4, {.batch_first = true});
  CHECK(gru_seq(randn({2, 5, 3})).shape() == Shape{2, 5, 4});
  nn::RNN rnn(3, 4);
  CHECK(rnn(randn({5, 3})).shape() == Shape{5, 4});  // unbatched
  CHECK(error_of([&] { lstm(randn({5, 2, 7})); }).find("expects 3") != std::string::npos);
}

TEST_CASE("recurrent layers and normalization differentiate correctly (gradcheck, f64)") {
  manual_seed(6);
  nn::GRU gru(2, 3);
  gru.to(kF64);
  Tensor x = randn({3, 2, 2}, {.dtype = kF64});
  auto w = gru.parameters();
  std::vector<Tensor> in{x, w[0], w[1]};
  auto f = [&](const std::vector<Tensor>& v) {
    Tensor h = zeros({2, 3}, {.dtype = kF64});
    auto xs = v[0];
    std::vector<Tensor> outs;
    for (int t = 0; t < 3; ++t) {
      Tensor gx = xs.select(0, t).matmul(v[1].t()), gh = h.matmul(v[2].t());
      auto a = gx.chunk(3, 1), b = gh.chunk(3, 1);
      Tensor r = sigmoid(a[0] + b[0]), z = sigmoid(a[1] + b[1]), n = tanh(a[2] + r * b[2]);
      h = (1 - z) * n + z * h;
    }
    return std::vector<Tensor>{h};
  };
  CHECK(tgtest::gradcheck(f, in) == "");
  nn::BatchNorm1d bn(3);
  bn.to(kF64);
  auto g = [&](const std::vector<Tensor>& v) {
    return std::vector<Tensor>{F::batch_norm(v[0], {}, {}, v[1], v[2], true)};
  };
  CHECK(tgtest::gradcheck(g, {randn({4, 3}, {.dtype = kF64}), randn({3}, {.dtype = kF64}), randn({3}, {.dtype = kF64})}) == "");
  auto ln = [&](const std::vector<Tensor>& v) { return std::vector<Tensor>{F::layer_norm(v[0], {3}, v[1], v[2])}; };
  CHECK(tgtest::gradgradcheck(ln, {randn({2, 3}, {.dtype = kF64}), randn({3}, {.dtype = kF64}), randn({3}, {.dtype = kF64})}) == "");
}

TEST_CASE("losses: formulas, reductions, weights, ignore_index, label smoothing") {
  Tensor a = tensor({0.5, -1.0, 2.0}), b = tensor({1.0, 1.0, -1.0});
  CHECK(F::mse_loss(a, b).item<double>() == doctest::Approx((0.25 + 4 + 9) / 3));
  CHECK(F::l1_loss(a, b, F::Reduction::Sum).item<double>() == doctest::Approx(0.5 + 2 + 3));
  check_close(F::huber_loss(a, b, F::Reduction::None), tensor({0.125, 1.5, 2.5}));
  Tensor p = tensor({0.9, 0.2, 0.0}), y = tensor({1.0, 0.0, 0.0});
  CHECK(F::binary_cross_entropy(p, y).item<double>() ==
        doctest::Approx(-(std::log(0.9) + std::log(0.8) + 0) / 3));
  CHECK(F::binary_cross_entropy(tensor({0.0}), tensor({1.0})).item<double>() == doctest::Approx(100));
  Tensor logits = tensor({3.0, -2.0, 50.0});
  auto bce = [](double x, double t) { return -(t * std::log(1 / (1 + std::exp(-x))) + (1 - t) * std::log(1 - 1 / (1 + std::exp(-x)))); };
  Tensor l = F::binary_cross_entropy_with_logits(logits, tensor({1.0, 0.0, 1.0}), {}, F::Reduction::None);
  check_close(l, tensor({bce(3, 1), bce(-2, 0), 0.0}));
  CHECK(F::binary_cross_entropy_with_logits(tensor({-800.0}), tensor({1.0})).item<double>() == doctest::Approx(800));
  CHECK(error_of([&] { F::binary_cross_entropy(tensor({1.5}), tensor({1.0})); }).find("probabilities") != std::string::npos);

  Tensor z = tensor({{1.0, 2.0, 0.5}, {0.1, -1.0, 3.0}, {2.0, 2.0, 2.0}});
  Tensor t = tensor<int64_t>({1, 2, 0});
  auto lse = [](std::vector<double> r) { double s = 0; for (double v : r) s += std::exp(v); return std::log(s); };
  double l0 = lse({1, 2, 0.5}) - 2, l1 = lse({0.1, -1, 3}) - 3, l2 = lse({2, 2, 2}) - 2;
  CHECK(F::cross_entropy(z, t).item<double>() == doctest::Approx((l0 + l1 + l2) / 3));
  Tensor w = tensor({1.0, 2.0, 3.0});
  CHECK(F::cross_entropy(z, t, {.weight = w}).item<double>() == doctest::Approx((2 * l0 + 3 * l1 + 1 * l2) / 6));
  CHECK(F::cross_entropy(z, tensor<int64_t>({1, -100, 0})).item<double>() == doctest::Approx((l0 + l2) / 2));
  // Label smoothing ε: (1-ε)·nll + ε/C·Σ_c(-log p_c).
  double eps = 0.1;
  auto smooth = [&](std::vector<double> r, double nll) {
    double s = 0, m = lse(r);
    for (double v : r) s += m - v;
    return (1 - eps) * nll + eps / 3 * s;
  };
  double want = (smooth({1, 2, 0.5}, l0) + smooth({0.1, -1, 3}, l1) + smooth({2, 2, 2}, l2)) / 3;
  CHECK(F::cross_entropy(z, t, {.label_smoothing = eps}).item<double>() == doctest::Approx(want));
  check_close(F::nll_loss(log_softmax(z, 1), t, {.reduction = F::Reduction::None}), tensor({l0, l1, l2}));
  // Probability targets and (N, C, d) logits.
  CHECK(F::cross_entropy(z, one_hot(t, 3).to(kF64)).item<double>() == doctest::Approx((l0 + l1 + l2) / 3));
  Tensor z3 = z.t().unsqueeze(0);  // (1, 3 classes, 3 positions)
  CHECK(F::cross_entropy(z3, t.unsqueeze(0)).item<double>() == doctest::Approx((l0 + l1 + l2) / 3));
  CHECK(error_of([&] { F::cross_entropy(z, tensor<int64_t>({1, 3, 0})); }).find("target 3 is out of range for 3 classes") != std::string::npos);
  // A negative target other than ignore_index is refused, not wrapped to the last class.
  CHECK(error_of([&] { F::cross_entropy(z, tensor<int64_t>({1, -1, 0})); }).find("target -1 is out of range") != std::string::npos);
  CHECK(error_of([&] { F::cross_entropy(z, tensor<int64_t>({1, 2})); }).find("targets of shape [3]") != std::string::npos);
  // Traced, the targets are checked by the gather at each replay: a negative one is refused
  // there too (moved below gather's bounds), in every mode, in eager's words, naming the target
  // as given (Note [Traced targets]); -100 is still ignored.
  for (Mode mode : {Mode::FastRun, Mode::FastCompile, Mode::Debug}) {
    CAPTURE(static_cast<int>(mode));
    auto f = trace([](const Tensor& zz, const Tensor& tt) { return F::cross_entropy(zz, tt); },
                   {.mode = mode});
    CHECK(f(z, t).item<double>() == doctest::Approx((l0 + l1 + l2) / 3));
    CHECK(f(z, tensor<int64_t>({1, -100, 0})).item<double>() == doctest::Approx((l0 + l2) / 2));
    for (int64_t bad : {-1L, -3L, -4L, 3L}) {
      CAPTURE(bad);
      std::string msg = error_of([&] { f(z, tensor<int64_t>({1, bad, 0})); });
      CHECK(msg.find(fmt::format("cross_entropy: target {} is out of range for 3 classes", bad)) !=
            std::string::npos);
      CHECK(msg.find("in tg::cross_entropy called at") != std::string::npos);
    }
    CHECK(f(z, t).item<double>() == doctest::Approx((l0 + l1 + l2) / 3));
    auto g = trace([](const Tensor& lp, const Tensor& tt) { return F::nll_loss(lp, tt); },
                   {.mode = mode});
    Tensor lp = log_softmax(z, 1);
    CHECK(g(lp, t).item<double>() == doctest::Approx((l0 + l1 + l2) / 3));
    for (int64_t bad : {-2L, 5L})
      CHECK(error_of([&] {
              g(lp, tensor<int64_t>({1, bad, 0}));
            }).find(fmt::format("nll_loss: target {} is out of range for 3 classes", bad)) !=
            std::string::npos);
  }
}

TEST_CASE("losses differentiate correctly (gradcheck, f64)") {
  auto check = [](auto loss, std::vector<Tensor> in) {
    CHECK(tgtest::gradcheck([&](const std::vector<Tensor>& v) { return std::vector<Tensor>{loss(v)}; }, in) == "");
  };
  Tensor a = tensor({0.3, -1.2, 2.0, 0.7}), b = tensor({1.0, 0.4, -1.0, 0.75});
  check([](auto& v) { return F::mse_loss(v[0], v[1]); }, {a, b});
  check([](auto& v) { return F::huber_loss(v[0], v[1], F::Reduction::Sum, 0.5); }, {a, b});
  check([](auto& v) { return F::binary_cross_entropy_with_logits(v[0], v[1], {}, F::Reduction::Mean, tensor({2.0, 1.0, 1.0, 0.5})); },
        {a, tensor({1.0, 0.0, 0.3, 1.0})});
  check([](auto& v) { return F::binary_cross_entropy(v[0], v[1]); }, {tensor({0.3, 0.6, 0.9}), tensor({1.0, 0.0, 0.5})});
  Tensor z = tensor({{1.0, 2.0, 0.5}, {0.1, -1.0, 3.0}});
  check([](auto& v) { return F::cross_entropy(v[0], tensor<int64_t>({2, 0}), {.weight = tensor({1.0, 2.0, 0.5}), .label_smoothing = 0.2}); }, {z});
}
