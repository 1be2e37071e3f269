// Traced equals eager on random compositions of ops: random programs over tensors of the shapes
// a model has (activations [R, C], per-row [R, 1], per-column [1, C] and [C]), with elementwise
// math, broadcasting, reductions over either dim, softmax, matmul and slices, run through every
// pass (values to 1e-5 relative, and the gradients of a loss), through FastCompile (bitwise), and
// after a save/load round trip.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>

#include "trace/executor.h"
#include "trace/passes.h"

using namespace tg;

namespace {

enum class Kind { Act, Row, Col, Vec };  // [R, C], [R, 1], [1, C], [C]

struct Step {
  int op = 0;
  int a = 0, b = 0;  // operands: indices into the values so far
  double c = 0;      // a constant
};

struct Recipe {
  int64_t rows = 0, cols = 0;
  std::vector<Kind> kinds;  // of every value: the two inputs, the parameters, then each step's
  std::vector<Step> steps;
};

constexpr int kParams = 3;  // w [C, C], a row of [C], a per-row [R, 1] (state)
constexpr int kOps = 18;

// The kind of the result of op on operands of kinds ka, kb; false when the op does not apply.
bool result_kind(int op, Kind ka, Kind kb, Kind& out) {
  auto act_like = [](Kind k) { return k == Kind::Act; };
  switch (op) {
    case 0:
    case 1:
    case 2:
    case 3:
    case 4:
    case 5:
    case 6:  // unary
      out = ka;
      return true;
    case 7:
    case 8:
    case 9:
    case 10:
    case 11: {  // binary, broadcasting
      if (ka == kb) {
        out = ka;
        return true;
      }
      // Anything meets Act as Act; Row and Col (or Vec) meet as Act too.
      if (act_like(ka) || act_like(kb) || (ka == Kind::Row) != (kb == Kind::Row)) {
        out = Kind::Act;
        return true;
      }
      out = Kind::Col;  // Col with Vec
      return true;
    }
    case 12:
    case 13:
    case 14:  // sum / mean / amax over the last dim, kept
      if (ka != Kind::Act) return false;
      out = Kind::Row;
      return true;
    case 15:  // mean over rows, kept
      if (ka != Kind::Act) return false;
      out = Kind::Col;
      return true;
    case 16:  // softmax or log_softmax over the last dim
      if (ka != Kind::Act) return false;
      out = Kind::Act;
      return true;
    case 17:  // matmul with the square parameter
      if (ka != Kind::Act) return false;
      out = Kind::Act;
      return true;
  }
  return false;
}

Recipe make_recipe(uint32_t seed) {
  std::mt19937 rng(seed);
  auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<uint32_t>(n)); };
  Recipe r;
  r.rows = 2 + pick(40);
  r.cols = 2 + pick(70);
  r.kinds = {Kind::Act, Kind::Act, Kind::Act /*unused slot for w*/, Kind::Vec, Kind::Row};
  int nsteps = 6 + pick(14);
  while (static_cast<int>(r.steps.size()) < nsteps) {
    Step s;
    s.op = pick(kOps);
    int nv = static_cast<int>(r.kinds.size());
    s.a = pick(nv);
    s.b = pick(nv);
    if (s.a == 2 || s.b == 2) continue;  // w only enters through matmul
    s.c = 0.25 + 0.5 * (rng() % 1000) / 1000.0;
    Kind out;
    if (!result_kind(s.op, r.kinds[s.a], r.kinds[s.b], out)) continue;
    r.kinds.push_back(out);
    r.steps.push_back(s);
  }
  return r;
}

// Runs the recipe; values[0..1] are the inputs, values[2..4] the parameters.
Tensor run_recipe(const Recipe& r, std::vector<Tensor> values) {
  for (const Step& s : r.steps) {
    const Tensor& a = values[s.a];
    const Tensor& b = values[s.b];
    Tensor y;
    switch (s.op) {
      case 0:
        y = tanh(a * s.c);
        break;
      case 1:
        y = sigmoid(a) * 2 - 1;
        break;
      case 2:
        y = gelu(a);
        break;
      case 3:
        y = exp(tanh(a));
        break;
      case 4:
        y = sqrt(a * a + s.c);
        break;
      case 5:
        y = log(abs(a) + 1);
        break;
      case 6:
        y = relu(a) - a * s.c;
        break;
      case 7:
        y = a + b;
        break;
      case 8:
        y = a - b * s.c;
        break;
      case 9:
        y = a * b;
        break;
      case 10:
        y = a / (b * b + 1);
        break;
      case 11:
        y = maximum(a, b);
        break;
      case 12:
        y = a.sum({1}, true) * (1.0 / static_cast<double>(r.cols));
        break;
      case 13:
        y = a.mean({1}, true);
        break;
      case 14:
        y = a.amax({1}, true);
        break;
      case 15:
        y = a.mean({0}, true);
        break;
      case 16:
        y = s.c < 0.5 ? softmax(a, -1) : log_softmax(a, -1) * 0.1;
        break;
      case 17:
        y = a.matmul(values[2]) * (1.0 / std::sqrt(static_cast<double>(r.cols)));
        break;
    }
    // Keep magnitudes moderate, so that a 1e-5 relative tolerance means something.
    values.push_back(tanh(y * 0.5) * 2);
  }
  // Every value of the last few steps reaches the result, at the result's shape.
  Tensor out = values.back();
  size_t n = values.size();
  for (size_t k = n >= 4 ? n - 4 : 0; k + 1 < n; ++k) out = out + values[k] * 0.5;
  // And every parameter, so that each has a gradient.
  out = out + values[3] * 0.1 + values[4] * 0.1;
  return out + out.matmul(values[2]) * (0.1 / std::sqrt(static_cast<double>(r.cols)));
}

double rel_diff(const Tensor& got, const Tensor& want) {
  double scale = std::max(1.0, want.abs().amax().item<double>());
  return (got - want).abs().amax().item<double>() / scale;
}

struct Params {
  Tensor w, v, row;
  Params(const Recipe& r, uint64_t seed) {
    manual_seed(seed);
    w = (randn({r.cols, r.cols}) * 0.5).requires_grad_();
    v = randn({r.cols}).requires_grad_();
    row = randn({r.rows, 1}).requires_grad_();
  }
  std::vector<Tensor> list() const { return {w, v, row}; }
};

}  // namespace

TEST_CASE("random compositions: traced values equal eager ones, on every pass setting") {
  int tiled = 0, fused = 0;  // programs the lowerings changed
  for (uint32_t seed = 1; seed <= 40; ++seed) {
    Recipe r = make_recipe(seed);
    Params p(r, seed);
    Tensor x = randn({r.rows, r.cols}), y = randn({r.rows, r.cols});
    auto fn = [&](const Tensor& a, const Tensor& b) {
      NoGradGuard no_grad;
      return run_recipe(r, {a, b, p.w, p.v, p.row});
    };
    Tensor want = fn(x, y);
    CAPTURE(seed);
    CAPTURE(r.rows);
    CAPTURE(r.cols);
    auto fast = trace(fn);
    fast(x, y);
    CHECK(rel_diff(fast(x, y), want) < 1e-5);
    CHECK(rel_diff(fast(x, y), want) < 1e-5);  // a second replay
    auto bitwise = trace(fn, {.mode = Mode::FastCompile});
    bitwise(x, y);
    CHECK((bitwise(x, y) - want).abs().amax().item<double>() == 0);
    auto checked = trace(fn, {.mode = Mode::Debug});
    CHECK_NOTHROW(checked(x, y));
    // New inputs of the same shapes replay the same graph.
    Tensor x2 = randn({r.rows, r.cols});
    CHECK(rel_diff(fast(x2, y), fn(x2, y)) < 1e-5);
    CHECK(fast.num_compiles() == 1);
    std::string summary = fast.pass_summary();
    tiled += summary.find("tile: 0 runs") == std::string::npos;
    fused += summary.find("fuse: 0 groups") == std::string::npos;
  }
  // The programs exercise the lowerings, not only the plain nodes.
  CHECK(tiled >= 10);
  CHECK(fused >= 20);
}

TEST_CASE("random compositions: traced gradients equal eager ones") {
  for (uint32_t seed = 101; seed <= 130; ++seed) {
    Recipe r = make_recipe(seed);
    Params p(r, seed);
    Tensor x = randn({r.rows, r.cols}), y = randn({r.rows, r.cols});
    auto fn = [&](const Tensor& a, const Tensor& b) {
      Tensor loss = run_recipe(r, {a, b, p.w, p.v, p.row}).pow(2).mean();
      std::vector<Tensor> out = tg::grad({loss}, p.list());
      out.push_back(loss);
      return out;
    };
    std::vector<Tensor> want = fn(x, y);
    auto f = trace(fn);
    f(x, y);
    std::vector<Tensor> got = f(x, y);
    CAPTURE(seed);
    REQUIRE(got.size() == want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      CAPTURE(i);
      CHECK(rel_diff(got[i], want[i].detach()) < 1e-5);
    }
  }
}

TEST_CASE("random compositions: a saved graph loads and gives the same values") {
  auto dir = std::filesystem::temp_directory_path() / "tapegrad_random_trace";
  std::filesystem::create_directories(dir);
  for (uint32_t seed = 201; seed <= 210; ++seed) {
    Recipe r = make_recipe(seed);
    Params p(r, seed);
    Tensor x = randn({r.rows, r.cols}), y = randn({r.rows, r.cols});
    auto fn = [&](const Tensor& a, const Tensor& b) {
      NoGradGuard no_grad;
      return run_recipe(r, {a, b, p.w, p.v, p.row});
    };
    auto f = trace(fn);
    Tensor want = f(x, y);
    std::string path = (dir / ("g" + std::to_string(seed) + ".tgt")).string();
    f.save(path);
    auto loaded = load_traced(path);
    CAPTURE(seed);
    CHECK(rel_diff(loaded(x, y)[0], want) < 1e-6);
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("random compositions: no node's output shares part of an input's bytes") {
  // Note [Memory plan]: an output takes its input's bytes exactly (in place) or none of them; a
  // partial overlap, an output a little further along its input, overwrites elements before
  // they are read. Checked on every node of the lowered graph of every recipe.
  std::vector<trace_detail::Program> programs;
  trace_detail::g_test_corrupt_pass = [&](trace_detail::Program& p) { programs.push_back(p); };
  struct Reset {
    ~Reset() { trace_detail::g_test_corrupt_pass = nullptr; }
  } reset;
  for (uint32_t seed = 1; seed <= 40; ++seed) {
    Recipe r = make_recipe(seed);
    Params p(r, seed);
    Tensor x = randn({r.rows, r.cols}), y = randn({r.rows, r.cols});
    auto f = trace([&](const Tensor& a, const Tensor& b) {
      NoGradGuard no_grad;
      return run_recipe(r, {a, b, p.w, p.v, p.row});
    });
    f(x, y);
  }
  REQUIRE(programs.size() == 40);
  int in_place = 0;
  for (trace_detail::Program& prog : programs) {
    trace_detail::lower(prog, {});
    trace_detail::MemoryPlan plan = trace_detail::plan_memory(prog, true);
    auto range = [&](int32_t b) {
      return std::pair<int64_t, int64_t>{plan.offset[b],
                                         plan.offset[b] + static_cast<int64_t>(prog.buffers[b].nbytes)};
    };
    for (const auto& n : prog.nodes) {
      int32_t out = n.out.buf;
      if (out < 0 || plan.offset[out] < 0) continue;
      for (const auto& o : n.in) {
        if (o.buf == out || o.buf < 0 || plan.offset[o.buf] < 0) continue;
        if (prog.buffers[o.buf].device != prog.buffers[out].device) continue;
        auto [a0, a1] = range(out);
        auto [b0, b1] = range(o.buf);
        bool disjoint = a1 <= b0 || b1 <= a0;
        CHECK((disjoint || a0 == b0));
        in_place += a0 == b0;
      }
    }
  }
  CHECK(in_place > 0);  // the planner still runs nodes in place
}
