// Captured replays (Note [Captured replays], lib/trace/executor.cpp), tested on the CPU through
// the executor's stand-in for a CUDA graph: the same segments, the same kept argument and output
// buffers, a check at each launch that every address a segment touches is the one it was
// recorded with. What only a GPU can show (the graph itself) is in test_cuda.cpp.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <cmath>

#include "fused_steps.h"
#include "trace/executor.h"

using namespace tg;
using tgtest::same;
namespace F = tg::nn::functional;

namespace {

// Captured segments for the CPU programs traced in its scope.
struct CaptureOnCpu {
  CaptureOnCpu() { trace_detail::set_capture_on_cpu_for_tests(true); }
  ~CaptureOnCpu() { trace_detail::set_capture_on_cpu_for_tests(false); }
};


// Row tiles are a CPU lowering that segments leave out; without them a CPU program is cut into
// segments as a CUDA one is.
const TraceOptions kNoTiles{.disable = {"tile"}};

bool captured(const std::string& summary) {
  return summary.find("replay: from the second call") != std::string::npos;
}

// The number of the first node of a graph's text that updates state.
int64_t first_update(const std::string& graph) {
  size_t at = graph.find("[update]");
  REQUIRE(at != std::string::npos);
  size_t line = graph.rfind('\n', at) + 1;
  return std::stoll(graph.substr(line, graph.find_first_not_of(" 0123456789", line) - line));
}

struct Mlp {
  std::vector<Tensor> params;
  double penalty = 0;  // of the logits' squares, so that a gradient reaches the weights without
                       // the loss's scatter
  Mlp() {
    manual_seed(4);
    params = {(randn({12, 16}) * 0.3).requires_grad_(), zeros({16}).requires_grad_(),
              (randn({16, 5}) * 0.3).requires_grad_(), zeros({5}).requires_grad_()};
  }
  Tensor step(const Tensor& x, const Tensor& y) {
    Tensor h = tanh(x.matmul(params[0]) + params[1]).matmul(params[2]) + params[3];
    Tensor loss = F::cross_entropy(h, y);
    if (penalty != 0) loss = loss + (h * h).mean() * penalty;
    auto grads = grad({loss}, params);
    NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) params[i].sub_(grads[i] * 0.1);
    return loss;
  }
};

}  // namespace

TEST_CASE("capture: a training step replays through recorded segments with the same bits") {
  Mlp plain_model, captured_model;
  // Uncaptured first (a trace compiles at its first call), then the same calls captured.
  auto plain =
      trace([&](const Tensor& x, const Tensor& y) { return plain_model.step(x, y); }, kNoTiles);
  std::vector<Tensor> want;
  std::vector<std::vector<Tensor>> want_params;
  for (int it = 0; it < 5; ++it) {
    manual_seed(100 + it);
    Tensor x = randn({7, 12}), y = randint(0, 5, {7});
    want.push_back(plain(x, y));
    want_params.push_back({});
    for (const Tensor& p : plain_model.params) want_params.back().push_back(p.detach().clone());
  }
  CaptureOnCpu on;
  auto cap = trace(
      [&](const Tensor& x, const Tensor& y) { return captured_model.step(x, y); }, kNoTiles);
  std::vector<Tensor> losses;
  for (int it = 0; it < 5; ++it) {
    CAPTURE(it);
    manual_seed(100 + it);
    Tensor x = randn({7, 12}), y = randint(0, 5, {7});
    Tensor b = cap(x, y);
    CHECK(same(want[it], b));
    for (size_t i = 0; i < 4; ++i) CHECK(same(want_params[it][i], captured_model.params[i]));
    losses.push_back(b);
  }
  // Every node is recorded, the loss's gather and its gradient's scatter too (Note [Device-side
  // arguments]): two segments, cut where the flags of those two are read, before the first
  // update of a weight, and launched as one whose second part runs only where the flags are
  // clear (Note [Guarded updates]).
  std::string summary = cap.pass_summary();
  CAPTURE(summary);
  CHECK(captured(summary));
  CHECK(summary.find("recorded segments") != std::string::npos);
  const int64_t nodes = cap.graph().num_nodes();
  CHECK(summary.find(fmt::format("{} of {} nodes", nodes, nodes)) != std::string::npos);
  CHECK(summary.find(fmt::format("2 index ops checked on the device, their flags read before "
                                 "node {} by the device",
                                 first_update(cap.graph().to_string()))) != std::string::npos);
  CHECK(summary.find("the last two launched as one") != std::string::npos);
  // Recorded once, as one, at the second call, never again: every address a segment touches
  // (kept argument copies and output buffers, state, the arena) stayed where it was.
  size_t nsegments = 0;
  for (size_t at = summary.find("-", summary.find("(nodes ")); at < summary.find(");");
       at = summary.find("-", at + 1))
    ++nsegments;
  CHECK(nsegments == 2);
  CHECK(summary.find("; 1 recording so far, 0 segments refused") != std::string::npos);
  CHECK_FALSE(captured(plain.pass_summary()));
  CHECK(cap.graph().count("gather") == 1);
  // Each call's output is its own: later calls, which write the kept buffer, leave it alone.
  for (size_t i = 0; i + 1 < losses.size(); ++i) CHECK_FALSE(same(losses[i], losses[i + 1]));
  Tensor first = losses[0].clone();
  manual_seed(100);
  cap(randn({7, 12}), randint(0, 5, {7}));
  CHECK(same(losses[0], first));
}

TEST_CASE("capture: arguments written, aliased or strided keep a program node by node") {
  CaptureOnCpu on;
  auto writes = trace([](Tensor x) {
    x.add_(1);
    return tanh(x * 2 + 1) * 3;
  });
  Tensor x = randn({4, 6}), x0 = x.clone();
  writes(x);
  CHECK_FALSE(captured(writes.pass_summary()));
  CHECK(same(x, x0 + 1));
  auto two = trace([](const Tensor& a, const Tensor& b) { return exp(a * 2).sum() + (b - 1).sum(); });
  Tensor base = randn({10});
  Tensor r1 = two(base.slice(0, 0, 5), base.slice(0, 5, 10));  // one storage
  CHECK_FALSE(captured(two.pass_summary()));
  CHECK(std::abs(r1.item<float>() - (exp(base.slice(0, 0, 5) * 2).sum() +
                                     (base.slice(0, 5, 10) - 1).sum()).item<float>()) < 1e-5);
  auto strided = trace([](const Tensor& a) { return exp(a * 2).sum({0}) + 1; });
  Tensor t = randn({6, 3}).t();
  Tensor s1 = strided(t);
  CHECK_FALSE(captured(strided.pass_summary()));
  CHECK(same(s1, exp(t * 2).sum({0}) + 1));
  // A contiguous argument of its own is captured.
  auto fine = trace([](const Tensor& a) { return exp(a * 2).sum({0}) + 1; }, kNoTiles);
  Tensor c = randn({3, 6});
  fine(c);
  CHECK(captured(fine.pass_summary()));
  for (int i = 0; i < 3; ++i) {
    Tensor c2 = randn({3, 6});
    CHECK(same(fine(c2), exp(c2 * 2).sum({0}) + 1));
  }
}

TEST_CASE("capture: an output that views an argument is still the argument's") {
  CaptureOnCpu on;
  auto f = trace([](const Tensor& x) {
    return std::vector<Tensor>{x.slice(0, 1, 3), tanh(x * 2 + 1).sum({1}), x * 3};
  }, kNoTiles);
  for (int it = 0; it < 3; ++it) {
    Tensor x = randn({4, 5});
    auto out = f(x);
    CHECK(out[0].is_alias_of(x));
    CHECK(same(out[0], x.slice(0, 1, 3)));
    CHECK(same(out[1], tanh(x * 2 + 1).sum({1})));
    CHECK(same(out[2], x * 3));
    CHECK_FALSE(out[2].is_alias_of(x));
  }
  CHECK(captured(f.pass_summary()));
}

TEST_CASE("capture: an index out of bounds in a recorded segment throws before any update") {
  // The gather and the scatter check on the device and write nothing when an index is bad; the
  // updates, launched with them, run only where their flags are clear (Note [Guarded updates]),
  // so the weights are as they were, and the error the host reads at the end is the eager one,
  // named as the node's. The next calls find the flags cleared.
  Mlp plain_model, captured_model;
  plain_model.penalty = captured_model.penalty = 0.5;
  auto plain =
      trace([&](const Tensor& x, const Tensor& y) { return plain_model.step(x, y); }, kNoTiles);
  CaptureOnCpu on;
  auto cap =
      trace([&](const Tensor& x, const Tensor& y) { return captured_model.step(x, y); }, kNoTiles);
  manual_seed(7);
  Tensor x = randn({7, 12});
  Tensor good = randint(0, 5, {7});
  for (int it = 0; it < 3; ++it) CHECK(same(plain(x, good), cap(x, good)));
  for (int64_t bad_value : {5L, -6L, 99L}) {
    CAPTURE(bad_value);
    Tensor bad = good.clone();
    bad.select(0, 3).fill_(bad_value);
    std::vector<Tensor> before;
    for (const Tensor& p : captured_model.params) before.push_back(p.detach().clone());
    try {
      (void)cap(x, bad);
      FAIL("no tg::Error thrown");
    } catch (const Error& e) {
      std::string msg = e.what();
      CAPTURE(msg);
      // Eager's words, naming the target as given: a negative one reaches the gather as
      // target - classes (Note [Traced targets]).
      CHECK(msg.find(fmt::format("cross_entropy: target {} is out of range for 5 classes",
                                 bad_value)) != std::string::npos);
      CHECK(msg.find("in tg::cross_entropy called at") != std::string::npos);
      CHECK(msg.find("of the traced graph") != std::string::npos);
      CHECK(e.op() == "cross_entropy");
    }
    for (size_t i = 0; i < before.size(); ++i) CHECK(same(before[i], captured_model.params[i]));
    CHECK(same(plain(x, good), cap(x, good)));
    for (size_t i = 0; i < before.size(); ++i)
      CHECK(same(plain_model.params[i], captured_model.params[i]));
  }
  CHECK(captured(cap.pass_summary()));
  CHECK(cap.pass_summary().find("0 segments refused") != std::string::npos);
}

TEST_CASE("capture: an index op with no update after it is checked at the end of the call") {
  auto fn = [](const Tensor& x, const Tensor& i) {
    Tensor y = tanh(x * 2 + 1);
    Tensor rows = (y.index_select(0, i) * 3).sum({1}).unsqueeze(1);
    return rows + y.gather(1, i.unsqueeze(1).expand({-1, 2}));
  };
  CaptureOnCpu on;
  auto f = trace(fn, kNoTiles);
  Tensor x = randn({6, 4});
  Tensor i = tensor({3L, 0L, 2L});
  for (int it = 0; it < 3; ++it) CHECK(same(f(x, i), fn(x, i)));
  std::string summary = f.pass_summary();
  CAPTURE(summary);
  CHECK(summary.find("2 index ops checked on the device, their flags read at the end") !=
        std::string::npos);
  // index_select takes rows in [-6, 6), gather columns in [-4, 4). With both bad, the first in
  // node order names the error, as eagerly.
  const std::pair<int64_t, std::string> cases[] = {
      {5, "gather: index 5 is out of bounds for dim 1 of size 4"},
      {-7, "index_select: index -7 is out of bounds for dim 0 of size 6"},
      {-5, "gather: index -5 is out of bounds for dim 1 of size 4"}};
  for (const auto& [bad, text] : cases) {
    CAPTURE(bad);
    try {
      (void)f(x, tensor({3L, bad, 2L}));
      FAIL("no tg::Error thrown");
    } catch (const Error& e) {
      std::string msg = e.what();
      CAPTURE(msg);
      CHECK(msg.find(text) != std::string::npos);
      CHECK(e.op() == text.substr(0, text.find(':')));
    }
    Tensor j = tensor({1L, -1L, 0L});
    CHECK(same(f(x, j), fn(x, j)));
  }
}

TEST_CASE("capture: a constant made in the function is recorded, copied from the device") {
  // Unfolded, the literal is a node that copies host bytes; in a segment it copies from the
  // executor's copy of them on the device (Note [Device-side arguments]).
  auto fn = [](const Tensor& x) { return tanh(x * tensor({1.5f, -2.0f, 0.25f})) + 1; };
  CaptureOnCpu on;
  auto f = trace(fn, {.disable = {"tile", "fold"}});
  for (int it = 0; it < 4; ++it) {
    Tensor x = randn({5, 3});
    CHECK(same(f(x), fn(x)));
  }
  CHECK(f.graph().count("constant") == 1);
  std::string summary = f.pass_summary();
  CAPTURE(summary);
  const int64_t nodes = f.graph().num_nodes();
  CHECK(summary.find(fmt::format("{} of {} nodes run as 1 recorded", nodes, nodes)) !=
        std::string::npos);
}

TEST_CASE("capture: random draws are recorded, with fresh numbers at each replay") {
  // Each draw reads its seed and offset from a slot the executor writes before the launch
  // (Note [Device-side arguments]): the numbers of node-by-node replay, bit for bit.
  auto fn = [](const Tensor& x) {
    Tensor d = F::dropout(tanh(x * 2 + 1), 0.5);
    return (d * 3 + 1).sum({1}) / (x.abs().sum({1}) + 1);
  };
  auto plain = trace(fn, kNoTiles);
  Tensor x = randn({8, 32});
  std::vector<Tensor> want;
  for (int it = 0; it < 4; ++it) {
    manual_seed(50 + it);
    want.push_back(plain(x));
  }
  CaptureOnCpu on;
  auto cap = trace(fn, kNoTiles);
  std::vector<Tensor> outs;
  for (int it = 0; it < 4; ++it) {
    manual_seed(50 + it);
    Tensor b = cap(x);
    CHECK(same(want[it], b));
    outs.push_back(b);
  }
  std::string summary = cap.pass_summary();
  CAPTURE(summary);
  CHECK(captured(summary));
  const int64_t nodes = cap.graph().num_nodes();
  CHECK(summary.find(fmt::format("{} of {} nodes run as 1 recorded", nodes, nodes)) !=
        std::string::npos);
  CHECK(cap.graph().count("rand") == 1);
  CHECK_FALSE(same(outs[1], outs[2]));
  // The generator's state decides, as it does eagerly: the same seed, the same numbers.
  manual_seed(51);
  CHECK(same(cap(x), want[1]));
  manual_seed(51);
  Tensor eager = fn(x);
  manual_seed(51);
  CHECK(same(cap(x), eager));
}
