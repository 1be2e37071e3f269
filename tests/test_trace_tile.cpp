// The row-tile lowering (Note [Row tiles]): which runs of row-local nodes execute tile by tile,
// that their results are the untiled ones (on one thread and on several), and the reads that
// must end a run.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <cstdio>
#include <string>

using namespace tg;
namespace F = tg::nn::functional;

namespace {

double max_diff(const Tensor& a, const Tensor& b) { return (a - b).abs().amax().item<double>(); }

// "tile: R runs of N row-local nodes, V values kept ..." from the summary.
void tile_line(const TracedFunction& f, int& runs, int& nodes, int& values) {
  std::string s = f.pass_summary();
  auto at = s.find("tile:");
  REQUIRE(at != std::string::npos);
  REQUIRE(std::sscanf(s.c_str() + at, "tile: %d runs of %d row-local nodes, %d values", &runs,
                      &nodes, &values) == 3);
}

size_t arena_of(const TracedFunction& f) {
  std::string s = f.pass_summary();
  size_t arena = 0;
  auto at = s.find("memory:");
  REQUIRE(at != std::string::npos);
  REQUIRE(std::sscanf(s.c_str() + at, "memory: temps in an arena of %zu", &arena) == 1);
  return arena;
}

struct ThreadsGuard {
  int saved = get_num_threads();
  ~ThreadsGuard() { set_num_threads(saved); }
};

}  // namespace

TEST_CASE("tile: a GELU + LayerNorm block runs in row tiles and gives the untiled values") {
  ThreadsGuard threads;
  set_num_threads(1);
  manual_seed(3);
  Tensor x = randn({300, 200}), a = randn({200}), b = randn({200});
  Tensor g = rand({200}) + 0.5, beta = randn({200});
  auto block = [&](const Tensor& in) { return F::layer_norm(gelu(in * a + b), {200}, g, beta); };
  auto tiled = trace(block);
  auto untiled = trace(block, {.disable = {"tile"}});
  Tensor want = block(x);
  Tensor got = tiled(x);
  CHECK(max_diff(got, want) < 1e-5);
  CHECK(max_diff(untiled(x), want) < 1e-5);
  CHECK(max_diff(tiled(x), got) == 0);  // replays agree

  int runs = 0, nodes = 0, values = 0;
  tile_line(tiled, runs, nodes, values);
  CHECK(runs == 1);
  CHECK(nodes == tiled.graph().num_nodes());  // the whole block is one run
  CHECK(values >= 4);                         // the GELU output, the squares, both sums
  std::string text = tiled.graph().to_string();
  CHECK(text.find("run in tiles of") != std::string::npos);
  CHECK(text.find("of their 300 rows; never whole:") != std::string::npos);
  CHECK(tiled.graph().to_dot().find("subgraph cluster_tiles0") != std::string::npos);
  CHECK(untiled.pass_summary().find("tile:") == std::string::npos);  // switched off
  CHECK(untiled.graph().to_string().find("run in tiles") == std::string::npos);
  // The values between the nodes need no arena: only the tiles' scratch.
  CHECK(arena_of(tiled) == 0);
  CHECK(arena_of(untiled) >= 300 * 200 * 4);

  // Tiles run in parallel on more threads; each tile computes exactly what it did on one.
  set_num_threads(2);
  CHECK(max_diff(tiled(x), got) == 0);
  set_num_threads(1);

  // Mode::Debug checks each value of the run against the graph as recorded.
  auto debug = trace(block, {.mode = Mode::Debug});
  CHECK(max_diff(debug(x), want) < 1e-5);
}

TEST_CASE("tile: leading dims merge into rows; a batch of sequences is tiled over all its rows") {
  manual_seed(4);
  Tensor x = randn({4, 50, 64});
  Tensor g = randn({64}), beta = randn({64});
  auto block = [&](const Tensor& in) {
    Tensor h = F::layer_norm(in, {64}, g, beta);
    return softmax(h, -1) * h;
  };
  auto f = trace(block);
  CHECK(max_diff(f(x), block(x)) < 1e-5);
  CHECK(f.graph().to_string().find("of their 200 rows") != std::string::npos);
  // A slice of a bigger tensor (rows at a stride) replays through the same tiles.
  Tensor big = randn({4, 50, 128});
  Tensor part = big.slice(2, 32, 96);
  CHECK(max_diff(f(part), block(part)) < 1e-5);
}

TEST_CASE("tile: values read across rows end the run, and results stay right") {
  manual_seed(5);
  Tensor x = randn({64, 64});
  // y is read transposed: row r of the reader needs column r of y, which every tile writes.
  auto across = [](const Tensor& in) {
    Tensor y = exp(in * 0.5);
    Tensor s = y.sum({1}, true);
    Tensor z = y.transpose(0, 1) * s + y;
    return z.sum({1});
  };
  auto f = trace(across);
  CHECK(max_diff(f(x), across(x)) < 1e-4);
  CHECK(max_diff(f(x), across(x)) < 1e-4);
  // One row broadcast to all rows: every tile needs row 0.
  auto first_row = [](const Tensor& in) {
    Tensor y = tanh(in) + 1;
    Tensor m = y.sum({1}, true);
    return y * m.slice(0, 0, 1) + m;
  };
  auto h = trace(first_row);
  CHECK(max_diff(h(x), first_row(x)) < 1e-4);
  // Column sums (a reduction over the leading dim) are not row-local.
  auto columns = [](const Tensor& in) {
    Tensor y = sigmoid(in);
    return (y - y.mean({0}, true)) * y.sum({1}, true);
  };
  auto c = trace(columns);
  CHECK(max_diff(c(x), columns(x)) < 1e-5);
}

TEST_CASE("tile: values a run makes and also returns are stored whole") {
  manual_seed(6);
  Tensor x = randn({100, 40});
  auto fn = [](const Tensor& in) {
    Tensor e = exp(in - in.amax({1}, true));
    Tensor s = e.sum({1}, true);
    return std::make_tuple(e / s, s, e);
  };
  auto f = trace(fn);
  auto [p, s, e] = f(x);
  auto [p0, s0, e0] = fn(x);
  CHECK(max_diff(p, p0) < 1e-6);
  CHECK(max_diff(s, s0) < 1e-4);
  CHECK(max_diff(e, e0) < 1e-6);
}

TEST_CASE("tile: one row, or rows too long for a tile, are not tiled") {
  auto block = [](const Tensor& in) {
    Tensor y = gelu(in);
    return y / y.sum({1}, true);
  };
  int runs = 0, nodes = 0, values = 0;
  auto one = trace(block);
  Tensor row = randn({1, 500});
  CHECK(max_diff(one(row), block(row)) < 1e-6);
  tile_line(one, runs, nodes, values);
  CHECK(runs == 0);
  auto wide = trace(block);
  Tensor rows = randn({2, 300000});  // 1.2 MB a row
  CHECK(max_diff(wide(rows), block(rows)) < 1e-6);
  tile_line(wide, runs, nodes, values);
  CHECK(runs == 0);
}

TEST_CASE("tile: a traced training step through LayerNorm gives eager's gradients and update") {
  manual_seed(7);
  Tensor w = (randn({32, 48}) * 0.2).requires_grad_();
  Tensor g = ones({48}).requires_grad_(), beta = zeros({48}).requires_grad_();
  Tensor x = randn({64, 32}), target = randn({64, 48});
  auto step = [&](const Tensor& in, const Tensor& t) {
    Tensor h = F::layer_norm(gelu(in.matmul(w)), {48}, g, beta);
    Tensor loss = (h - t).pow(2).mean();
    auto grads = tg::grad({loss}, {w, g, beta});
    NoGradGuard no_grad;
    w.sub_(grads[0] * 0.1);
    g.sub_(grads[1] * 0.1);
    beta.sub_(grads[2] * 0.1);
    return loss;
  };
  Tensor w0 = w.detach().clone(), g0 = g.detach().clone(), b0 = beta.detach().clone();
  Tensor eager_loss = step(x, target);
  Tensor w1 = w.detach().clone(), g1 = g.detach().clone(), b1 = beta.detach().clone();
  {
    NoGradGuard no_grad;
    w.copy_(w0);
    g.copy_(g0);
    beta.copy_(b0);
  }
  auto f = trace(step);
  Tensor traced_loss = f(x, target);  // records (running eagerly) and compiles
  {
    NoGradGuard no_grad;
    w.copy_(w0);
    g.copy_(g0);
    beta.copy_(b0);
  }
  traced_loss = f(x, target);  // replays
  CHECK(std::abs(traced_loss.item<double>() - eager_loss.item<double>()) < 1e-5);
  CHECK(max_diff(w, w1) < 1e-5);
  CHECK(max_diff(g, g1) < 1e-5);
  CHECK(max_diff(beta, b1) < 1e-5);
  int runs = 0, nodes = 0, values = 0;
  tile_line(f, runs, nodes, values);
  CHECK(runs >= 1);  // forward and backward of the normalization
}
