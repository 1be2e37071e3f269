// Every user error throws tg::Error naming the op, the values involved and the caller's line.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <functional>
#include <string>

using namespace tg;

namespace {
// Runs f, which must throw tg::Error whose message contains every one of `parts` and names this
// file and `line` (the line of the offending call).
void expect_error(const std::function<void()>& f, std::vector<std::string> parts, int line) {
  try {
    f();
    FAIL("no tg::Error thrown; expected one mentioning " << parts[0]);
  } catch (const Error& e) {
    std::string msg = e.what();
    CAPTURE(msg);
    for (const auto& p : parts) CHECK_MESSAGE(msg.find(p) != std::string::npos, "missing '" << p << "'");
    CHECK(msg.find("test_errors.cpp:" + std::to_string(line)) != std::string::npos);
    CHECK(std::string(e.where().file_name()).find("test_errors.cpp") != std::string::npos);
    CHECK(e.where().line() == static_cast<unsigned>(line));
  }
}
}  // namespace

TEST_CASE("matmul of (2,3) and (4,5)") {
  auto a = zeros({2, 3}), b = zeros({4, 5});
  expect_error([&] { (void)matmul(a, b); }, {"matmul", "[2, 3]", "[4, 5]"}, __LINE__);
  expect_error([&] { (void)a.matmul(b); }, {"matmul", "[2, 3]", "[4, 5]"}, __LINE__);
}

TEST_CASE("adding (2,3) and (4,)") {
  auto a = zeros({2, 3}), b = zeros({4});
  expect_error([&] { (void)(a + b); }, {"add", "[2, 3]", "[4]", "broadcast"}, __LINE__);
  expect_error([&] { (void)(a * b); }, {"mul", "[2, 3]", "[4]"}, __LINE__);
  expect_error([&] { a += b; }, {"add_", "[4]", "[2, 3]"}, __LINE__);
}

TEST_CASE("reshape to a different element count") {
  auto a = zeros({2, 3});
  expect_error([&] { (void)a.reshape({4, 2}); }, {"reshape", "[4, 2]", "[2, 3]", "6"}, __LINE__);
  expect_error([&] { (void)a.view({-1, 4}); }, {"view", "[-1, 4]"}, __LINE__);
}

TEST_CASE("item() on a 5-element tensor") {
  auto a = zeros({5});
  expect_error([&] { (void)a.item<float>(); }, {"item", "5 elements", "[5]"}, __LINE__);
}

TEST_CASE("out-of-range dims") {
  auto a = zeros({2, 3});
  expect_error([&] { (void)a.sum({2}); }, {"sum", "dim 2", "out of range", "2 dims"}, __LINE__);
  expect_error([&] { (void)a.transpose(0, -3); }, {"transpose", "dim -3"}, __LINE__);
  expect_error([&] { (void)softmax(a, 5); }, {"softmax", "dim 5"}, __LINE__);
  expect_error([&] { (void)a.select(0, 2); }, {"select", "index 2"}, __LINE__);
  expect_error([&] { (void)a.size(4); }, {"size", "dim 4"}, __LINE__);
  expect_error([&] { (void)cat({a, a}, 3); }, {"cat", "dim 3"}, __LINE__);
}

TEST_CASE("gather with an out-of-bounds i64 index") {
  auto a = zeros({2, 3});
  auto idx = tensor({{0L, 3L}, {1L, 2L}});
  expect_error([&] { (void)gather(a, 1, idx); }, {"gather", "index 3", "out of bounds", "size 3"}, __LINE__);
  expect_error([&] { (void)a.index_select(0, tensor({5L})); }, {"index_select", "index 5"}, __LINE__);
  expect_error([&] { (void)gather(a, 1, tensor({{0, 1}, {1, 0}})); }, {"gather", "i64", "i32"}, __LINE__);
  auto base = zeros({3});
  expect_error([&] { (void)scatter_add(base, 0, tensor({-4L}), ones({1})); }, {"scatter_add", "index -4"}, __LINE__);
  CHECK(base.sum().item<float>() == 0);  // untouched
}

TEST_CASE("randint(5, 2, ...)") {
  expect_error([&] { (void)randint(5, 2, {3}); }, {"randint", "low (5)", "high (2)"}, __LINE__);
}

TEST_CASE("CUDA where there is none: a build without CUDA, or no GPU") {
  auto a = zeros({2});
  if (cuda::is_available()) {
    MESSAGE("a GPU is present: its tests are in test_cuda.cpp");
    return;
  }
  CHECK_FALSE(cuda_is_available());
  CHECK(cuda::device_count() == 0);
  // Built with CUDA on a machine without a GPU, the error says that instead.
  const char* why = cuda::is_built() ? "no CUDA GPU is present" : "built without CUDA";
  expect_error([&] { (void)a.to(cuda(0)); }, {why}, __LINE__);
  expect_error([&] { (void)zeros({2}, {.device = cuda(0)}); }, {why}, __LINE__);
  CHECK(a.sum().item<float>() == 0);  // the CPU tensor is untouched and usable
  // A model's to() names the user's line, and leaves the model whole on the CPU.
  nn::Sequential model{nn::Linear(3, 4), nn::BatchNorm1d(4)};
  Tensor w = model.parameters()[0].detach().clone();
  expect_error([&] { model.to(cuda()); }, {why, "Module::to"}, __LINE__);
  for (const Tensor& p : model.parameters()) CHECK(p.device() == Device(kCPU));
  for (const Tensor& b : model.buffers()) CHECK(b.device() == Device(kCPU));
  CHECK((model.parameters()[0] != w).sum().item<int64_t>() == 0);
  expect_error([&] { model.to(kI64); }, {"floating dtypes only", "Module::to"}, __LINE__);
  // tg::cuda is a Device.
  Device d = cuda(1);
  CHECK(d.is_cuda());
  CHECK(d.index == 1);
  CHECK(cuda::memory_stats().allocated == 0);
}

TEST_CASE("more misuse, each a clear error") {
  Tensor undef;
  auto a = zeros({2, 3});
  expect_error([&] { (void)(a + undef); }, {"add", "undefined"}, __LINE__);
  expect_error([&] { (void)exp(undef); }, {"exp", "undefined"}, __LINE__);
  expect_error([&] { (void)a.data_ptr<double>(); }, {"data_ptr", "f32", "f64"}, __LINE__);
  expect_error([&] { (void)zeros({2, -3}); }, {"negative", "[2, -3]"}, __LINE__);
  expect_error([&] { (void)zeros({1 << 30, 1 << 30, 1 << 30}); }, {"zeros", "int64"}, __LINE__);
  expect_error([&] { (void)a.expand({4, 3}); }, {"expand", "[2, 3]", "[4, 3]"}, __LINE__);
  expect_error([&] { (void)a.permute({0, 0}); }, {"permute", "repeated"}, __LINE__);
  expect_error([&] { (void)amax(zeros({0, 3}), {0}); }, {"amax", "size 0"}, __LINE__);
  expect_error([&] { (void)where(a, a, a); }, {"where", "bool", "f32"}, __LINE__);
  expect_error([&] { (void)(tensor({true}) - tensor({false})); }, {"sub", "bool"}, __LINE__);
  expect_error([&] { (void)tensor(std::vector<float>{1, 2, 3}, {2, 2}); }, {"tensor", "3 values", "[2, 2]"}, __LINE__);
  expect_error([&] { (void)tensor({{1.0f, 2.0f}, {3.0f}}); }, {"tensor", "rectangular"}, __LINE__);
  expect_error([&] { (void)arange(0, 10, 0); }, {"arange", "step"}, __LINE__);
  expect_error([&] { (void)cat({}); }, {"cat", "non-empty"}, __LINE__);
  expect_error([&] { (void)stack({a, zeros({3, 2})}); }, {"stack", "[3, 2]", "[2, 3]"}, __LINE__);
  expect_error([&] { (void)mm(zeros({2}), a); }, {"mm", "[2]"}, __LINE__);
  expect_error([&] { (void)dot(zeros({2}), zeros({3})); }, {"dot", "[2]", "[3]"}, __LINE__);
  expect_error([&] { (void)a.mean(); (void)tensor({1, 2}).mean(); }, {"mean", "i32"}, __LINE__);
  expect_error([&] { (void)one_hot(tensor({-1L}), 3); }, {"one_hot", "non-negative"}, __LINE__);
  expect_error([&] { set_num_threads(0); }, {"set_num_threads"}, __LINE__);
  expect_error([&] { (void)a.slice(1, 0, 2, 0); }, {"slice", "step"}, __LINE__);
  expect_error([&] { (void)a.t().unsqueeze(0).t(); }, {"t", "2 dims"}, __LINE__);
}

TEST_CASE("an error inside a composite names the op the user called") {
  auto a = zeros({2, 3});
  try {
    (void)log_softmax(a, 7);
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.op() == "log_softmax");
  }
}

TEST_CASE("an error a traced graph's node raises names the op and the line that recorded it") {
  // A bad target reaches the loss's gather only when the graph replays: the replay runs no op of
  // the user's, so the executor names the recorded node's op and line. The step stops before
  // the update, so the weights are untouched.
  for (Mode mode : {Mode::FastRun, Mode::FastCompile, Mode::Debug}) {
    CAPTURE(static_cast<int>(mode));
    Tensor w = (randn({4, 3}) * 0.1).requires_grad_();
    const int line = __LINE__ + 3;
    auto step = trace(
        [&](const Tensor& x, const Tensor& y) {
          Tensor loss = nn::functional::cross_entropy(x.matmul(w), y);
          auto g = grad({loss}, {w});
          NoGradGuard no_grad;
          w.sub_(g[0] * 0.1);
          return loss;
        },
        {.mode = mode});
    Tensor x = randn({5, 4});
    step(x, tensor({0L, 1L, 2L, 1L, 0L}));
    step(x, tensor({2L, 1L, 0L, 1L, 0L}));
    Tensor before = w.detach().clone();
    // Eager's words, naming the target as given (Note [Traced targets]): a negative one reaches
    // the gather as target - classes.
    for (int64_t bad : {7L, -1L, -4L}) {
      CAPTURE(bad);
      try {
        step(x, tensor({0L, 1L, bad, 1L, 0L}));
        FAIL("no tg::Error thrown");
      } catch (const Error& e) {
        std::string msg = e.what();
        CAPTURE(msg);
        CHECK(msg.find(fmt::format("cross_entropy: target {} is out of range for 3 classes",
                                   bad)) != std::string::npos);
        CHECK(msg.find("in tg::cross_entropy called at") != std::string::npos);
        CHECK(msg.find("test_errors.cpp:" + std::to_string(line)) != std::string::npos);
        CHECK(msg.find("of the traced graph") != std::string::npos);
        CHECK(e.op() == "cross_entropy");
      }
      CHECK(w.detach().to_vector<float>() == before.to_vector<float>());
    }
  }
}
