// Factories, element access, dtype promotion, in-place ops, printing and the RNG.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <cmath>
#include <sstream>

using namespace tg;

TEST_CASE("tensor() takes its dtype from the C++ element type") {
  CHECK(tensor({1.0f, 2.0f}).dtype() == kF32);
  CHECK(tensor({1.0, 2.0}).dtype() == kF64);
  CHECK(tensor({1, 2}).dtype() == kI32);
  CHECK(tensor({int64_t{1}, int64_t{2}}).dtype() == kI64);
  CHECK(tensor({1L, 2L}).dtype() == kI64);
  CHECK(tensor({true, false}).dtype() == kBool);
  auto s = tensor(3.0);
  CHECK(s.dim() == 0);
  CHECK(s.item<double>() == 3.0);
  auto m = tensor({{1.0f, 2.0f, 3.0f}, {4.0f, 5.0f, 6.0f}});
  CHECK(m.shape() == Shape{2, 3});
  CHECK(m.to_vector<float>() == std::vector<float>{1, 2, 3, 4, 5, 6});
  auto v = tensor(std::vector<double>{1, 2, 3, 4, 5, 6}, {3, 2});
  CHECK(v.shape() == Shape{3, 2});
  CHECK(v.select(0, 2).to_vector<double>() == std::vector<double>{5, 6});
  CHECK(tensor({1.5, 2.5}, {.dtype = kF32}).dtype() == kF32);
}

TEST_CASE("factories") {
  auto z = zeros({2, 3}, {.dtype = kF64, .device = kCPU});
  CHECK(z.dtype() == kF64);
  CHECK(z.sum().item<double>() == 0);
  CHECK(ones({4}).sum().item<float>() == 4);
  auto f = full({2, 2}, 7);
  CHECK(f.dtype() == kI64);
  CHECK(f.to_vector<int64_t>() == std::vector<int64_t>{7, 7, 7, 7});
  CHECK(full({1}, 2.5).dtype() == kF32);
  CHECK(full({1}, true).dtype() == kBool);
  CHECK(empty({3, 0}).numel() == 0);
  CHECK(arange(5).dtype() == kI64);
  CHECK(arange(5).to_vector<int64_t>() == std::vector<int64_t>{0, 1, 2, 3, 4});
  CHECK(arange(1, 10, 3).to_vector<int64_t>() == std::vector<int64_t>{1, 4, 7});
  CHECK(arange(0.0, 1.0, 0.25).dtype() == kF32);
  CHECK(arange(0.0, 1.0, 0.25).to_vector<float>() == std::vector<float>{0, 0.25, 0.5, 0.75});
  CHECK(arange(5, 0, -2).to_vector<int64_t>() == std::vector<int64_t>{5, 3, 1});
  CHECK(linspace(0, 1, 5).to_vector<float>() == std::vector<float>{0, 0.25, 0.5, 0.75, 1});
  CHECK(linspace(2, 3, 1).to_vector<float>() == std::vector<float>{2});
  auto e = eye(2, 3);
  CHECK(e.to_vector<float>() == std::vector<float>{1, 0, 0, 0, 1, 0});
  auto x = randn({3, 2}, {.dtype = kF64});
  CHECK(zeros_like(x).dtype() == kF64);
  CHECK(ones_like(x).shape() == Shape{3, 2});
  CHECK(full_like(x, 2).to_vector<double>() == std::vector<double>(6, 2.0));
  CHECK(rand_like(x).dtype() == kF64);
  CHECK(randn_like(x, {.dtype = kF32}).dtype() == kF32);
  CHECK_FALSE(Tensor().defined());
  CHECK(x.defined());
}

TEST_CASE("random numbers: ranges, moments, seeding") {
  manual_seed(42);
  auto u = rand({100000});
  CHECK(u.amin().item<float>() >= 0);
  CHECK(u.amax().item<float>() < 1);
  CHECK(u.mean().item<float>() == doctest::Approx(0.5).epsilon(0.01));
  auto n = randn({100000}, {.dtype = kF64});
  CHECK(n.mean().item<double>() == doctest::Approx(0).epsilon(0.02));
  CHECK(n.std().item<double>() == doctest::Approx(1).epsilon(0.01));
  auto r = randint(3, 7, {10000});
  CHECK(r.dtype() == kI64);
  CHECK(r.amin().item<int64_t>() == 3);
  CHECK(r.amax().item<int64_t>() == 6);
  manual_seed(7);
  auto a = randn({5});
  auto b = randn({5});
  manual_seed(7);
  auto c = randn({5});
  CHECK(a.to_vector<float>() == c.to_vector<float>());
  CHECK(a.to_vector<float>() != b.to_vector<float>());
}

TEST_CASE("random numbers do not depend on the thread count") {
  int before = get_num_threads();
  manual_seed(3);
  set_num_threads(1);
  auto a = randn({300001}).to_vector<float>();
  auto big = rand({200000}, {.dtype = kF64});
  double s1 = big.sum().item<double>();
  manual_seed(3);
  set_num_threads(2);
  auto b = randn({300001}).to_vector<float>();
  auto big2 = rand({200000}, {.dtype = kF64});
  double s2 = big2.sum().item<double>();
  set_num_threads(before);
  CHECK(a == b);
  CHECK(s1 == s2);  // reductions too: fixed blocks, merged in order
}

TEST_CASE("type promotion follows PyTorch") {
  auto i32 = tensor({1, 2});
  auto i64 = tensor({1L, 2L});
  auto f32 = tensor({1.0f, 2.0f});
  auto f64 = tensor({1.0, 2.0});
  auto b = tensor({true, false});
  CHECK((i32 + i64).dtype() == kI64);
  CHECK((i32 + f32).dtype() == kF32);
  CHECK((f32 + f64).dtype() == kF64);
  CHECK((b + b).dtype() == kBool);
  CHECK((b + i32).dtype() == kI32);
  // C++ numbers: do not widen within a category, do lift to a higher one.
  CHECK((i32 + 2).dtype() == kI32);
  CHECK((i32 * 2.5).dtype() == kF32);
  CHECK((f32 * 2.0).dtype() == kF32);
  CHECK((b + 1).dtype() == kI64);
  CHECK((2 - f64).dtype() == kF64);
  // 0-d tensors act like numbers toward dimensioned tensors.
  CHECK((f32 + tensor(1.0)).dtype() == kF32);
  CHECK((i32 + tensor(1.0)).dtype() == kF64);  // a 0-d float lifts an int tensor to its own dtype
  CHECK((tensor(1.0f) + tensor(1.0)).dtype() == kF64);
  // Division is true division; comparisons give bool; math on integers gives f32.
  CHECK((i32 / i32).dtype() == kF32);
  CHECK((i32 / 2).to_vector<float>() == std::vector<float>{0.5f, 1.0f});
  CHECK((f32 < 2).dtype() == kBool);
  CHECK(exp(i64).dtype() == kF32);
  CHECK(abs(-i64).dtype() == kI64);
  CHECK(i64.sum().dtype() == kI64);
  CHECK(b.sum().item<int64_t>() == 1);
  CHECK(pow(i32, 2).to_vector<int32_t>() == std::vector<int32_t>{1, 4});
  CHECK(pow(i32, 0.5).dtype() == kF32);
  CHECK(promote_types(kI32, kF32) == kF32);
}

TEST_CASE("integer ops stay exact and never trap on overflow") {
  auto big = tensor({int64_t{9007199254740993}});
  CHECK((big + 1).item<int64_t>() == 9007199254740994);
  auto imax = tensor({std::numeric_limits<int32_t>::max()});
  CHECK((imax + 1).item<int32_t>() == std::numeric_limits<int32_t>::min());  // wraps, as in PyTorch
  CHECK(tensor({7, -7}).clamp(-5, 5).to_vector<int32_t>() == std::vector<int32_t>{5, -5});
  CHECK(tensor({2, 3}).matmul(tensor({4, 5})).item<int32_t>() == 23);
  CHECK(tensor({1.0e10, -1.0e10, std::nan("")}).to(kI32).to_vector<int32_t>() ==
        std::vector<int32_t>{std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min(), 0});
}

TEST_CASE("in-place ops write through, keep dtype, and bump the shared version") {
  auto x = zeros({2, 3});
  auto row = x.select(0, 1);
  uint64_t v0 = x.version();
  row.add_(tensor({1.0f, 2.0f, 3.0f}));
  CHECK(x.version() == v0 + 1);
  CHECK(row.version() == x.version());
  CHECK(x.to_vector<float>() == std::vector<float>{0, 0, 0, 1, 2, 3});
  x *= 2;
  x -= ones({3});
  x /= tensor(2.0f);
  CHECK(x.to_vector<float>() == std::vector<float>{-0.5f, -0.5f, -0.5f, 0.5f, 1.5f, 2.5f});
  x += x;  // aliasing operand
  CHECK(x.to_vector<float>() == std::vector<float>{-1, -1, -1, 1, 3, 5});
  auto sq = arange(4).reshape({2, 2}).to(kF32);
  sq.add_(sq.t());  // overlapping read and write: computed as if from a copy
  CHECK(sq.to_vector<float>() == std::vector<float>{0, 3, 3, 6});
  x.clamp_(0, 2);
  CHECK(x.to_vector<float>() == std::vector<float>{0, 0, 0, 1, 2, 2});
  x.zero_();
  CHECK(x.sum().item<float>() == 0);
  x.fill_(4);
  CHECK(x.to_vector<float>() == std::vector<float>(6, 4.0f));
  x.copy_(tensor({1, 2, 3}));  // broadcast and convert
  CHECK(x.to_vector<float>() == std::vector<float>{1, 2, 3, 1, 2, 3});
  CHECK(x.dtype() == kF32);
  auto ints = tensor({1, 2});
  ints += 1;
  CHECK(ints.dtype() == kI32);
  CHECK_THROWS_AS(ints += 0.5, Error);  // f32 result cannot go into an i32 tensor
  CHECK(ints.to_vector<int32_t>() == std::vector<int32_t>{2, 3});
  auto e = zeros({3}).expand({2, 3});
  CHECK_THROWS_AS(e.add_(1), Error);  // expanded: elements share memory
}

TEST_CASE("element access") {
  auto x = tensor({{1.0f, 2.0f}, {3.0f, 4.0f}});
  CHECK(x.select(1, 1).to_vector<double>() == std::vector<double>{2, 4});  // converts
  CHECK(x.sum().item<int64_t>() == 10);
  float* p = x.data_ptr<float>();
  p[0] = 9;
  CHECK(x.select(0, 0).select(0, 0).item<float>() == 9);
  CHECK_THROWS_AS(x.data_ptr<double>(), Error);
  CHECK(x.numel() == 4);
  CHECK(x.dim() == 2);
  CHECK(x.size(-1) == 2);
  CHECK(x.element_size() == 4);
}

TEST_CASE("composite ops: masked_fill, one_hot, tril, triu, where with numbers") {
  auto x = arange(6).reshape({2, 3}).to(kF32);
  CHECK(x.masked_fill(x > 2, -1).to_vector<float>() == std::vector<float>{0, 1, 2, -1, -1, -1});
  auto oh = one_hot(tensor({0L, 2L, 1L}), 3);
  CHECK(oh.dtype() == kI64);
  CHECK(oh.to_vector<int64_t>() == std::vector<int64_t>{1, 0, 0, 0, 0, 1, 0, 1, 0});
  CHECK(one_hot(tensor({3L})).shape() == Shape{1, 4});
  auto m = ones({3, 3});
  CHECK(tril(m).to_vector<float>() == std::vector<float>{1, 0, 0, 1, 1, 0, 1, 1, 1});
  CHECK(m.triu(1).to_vector<float>() == std::vector<float>{0, 1, 1, 0, 0, 1, 0, 0, 0});
  CHECK(where(x > 2, x, 0.0).to_vector<float>() == std::vector<float>{0, 0, 0, 3, 4, 5});
  CHECK(where(x > 2, 1, x).dtype() == kF32);
  CHECK(norm(tensor({3.0, 4.0})).item<double>() == doctest::Approx(5));
  CHECK(norm(tensor({3.0, -4.0}), INFINITY).item<double>() == 4);
  CHECK(norm(tensor({3.0, 0.0}), 0).item<double>() == 1);
  CHECK(logsumexp(tensor({-INFINITY, -INFINITY}), 0).item<double>() == -INFINITY);
  CHECK(logsumexp(tensor({double(INFINITY), 1.0}), 0).item<double>() == INFINITY);
}

TEST_CASE("printing shows values, dtype, shape and device") {
  auto x = tensor({{1.5f, -2.0f}, {3.25f, 4.0f}});
  std::ostringstream os;
  os << x;
  std::string s = os.str();
  CHECK(s.find("1.5000") != std::string::npos);
  CHECK(s.find("-2.0000") != std::string::npos);
  CHECK(s.find("dtype=f32") != std::string::npos);
  CHECK(s.find("shape=[2, 2]") != std::string::npos);
  CHECK(s.find("device=cpu") != std::string::npos);
  CHECK(fmt::format("{}", x) == s);
  CHECK(fmt::format("{}", tensor({1L, 2L})).find("tensor([1, 2], dtype=i64") == 0);
  CHECK(fmt::format("{}", tensor({true, false})).find("true, false]") != std::string::npos);
  CHECK(fmt::format("{}", tensor(2.5)).find("tensor(2.5000, dtype=f64, shape=[]") == 0);
  auto big = arange(5000);
  std::string b = fmt::format("{}", big);
  CHECK(b.find("...") != std::string::npos);
  CHECK(b.find("4999") != std::string::npos);
  CHECK(b.size() < 200);
  auto big2 = arange(2000).reshape({100, 20});
  CHECK(fmt::format("{}", big2).size() < 1000);
  CHECK(fmt::format("{}", tensor({1e-8, 1.0})).find("e-08") != std::string::npos);
  CHECK(fmt::format("{}", Tensor()) == "tensor(undefined)");
  CHECK(fmt::format("{}", kF64) == "f64");
  CHECK(fmt::format("{}", cuda(1)) == "cuda:1");
}
