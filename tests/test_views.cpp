// Views share storage and never copy; their strides and offsets are what PyTorch gives.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

using namespace tg;

TEST_CASE("views share storage and see each other's writes") {
  auto x = arange(12).reshape({3, 4}).to(kF32);
  auto views = {x.reshape({4, 3}), x.view({2, 6}), x.permute({1, 0}), x.transpose(0, 1), x.t(),
                x.unsqueeze(0), x.slice(1, 0, 4, 2), x.narrow(0, 1, 2), x.select(0, 1),
                x.diagonal(), x.flatten(), x.unsqueeze(2).expand({3, 4, 5}), x.split(2)[1],
                x.chunk(2, 1)[0], x.unsqueeze(0).squeeze(), x.unsqueeze(1).squeeze(1)};
  for (const auto& v : views) {
    CHECK(v.is_alias_of(x));
  }
  x.select(0, 1).fill_(-1);
  CHECK(x.t().select(0, 2).to_vector<float>() == std::vector<float>{2, -1, 10});
  x.t().select(0, 0).zero_();
  CHECK(x.select(1, 0).to_vector<float>() == std::vector<float>{0, 0, 0});
  CHECK_FALSE(x.clone().is_alias_of(x));
  CHECK_FALSE(x.t().contiguous().is_alias_of(x));
  CHECK(x.contiguous().is_alias_of(x));  // already contiguous: no copy
}

TEST_CASE("strides and offsets of views") {
  auto x = zeros({2, 3, 4});
  CHECK(x.strides() == Shape{12, 4, 1});
  CHECK(x.is_contiguous());
  auto p = x.permute({2, 0, 1});
  CHECK(p.shape() == Shape{4, 2, 3});
  CHECK(p.strides() == Shape{1, 12, 4});
  CHECK_FALSE(p.is_contiguous());
  auto e = zeros({3, 1}).expand({2, 3, 5});
  CHECK(e.strides() == Shape{0, 1, 0});
  auto s = x.slice(2, 1, 4, 2);
  CHECK(s.shape() == Shape{2, 3, 2});
  CHECK(s.strides() == Shape{12, 4, 2});
  CHECK(s.storage_offset() == 1);
  auto d = zeros({3, 3}).diagonal(1);
  CHECK(d.shape() == Shape{2});
  CHECK(d.strides() == Shape{4});
  CHECK(d.storage_offset() == 1);
  auto sel = x.select(1, 2);
  CHECK(sel.shape() == Shape{2, 4});
  CHECK(sel.storage_offset() == 8);
  auto u = x.unsqueeze(1);
  CHECK(u.shape() == Shape{2, 1, 3, 4});
  // A transposed tensor reshaped where its layout allows stays a view, else copies.
  auto t = zeros({4, 6}).t();
  CHECK(t.reshape({6, 2, 2}).is_alias_of(t));
  CHECK_FALSE(t.reshape({24}).is_alias_of(t));
  CHECK_THROWS_AS(t.view({24}), Error);
}

TEST_CASE("version counter is shared by all views") {
  auto x = zeros({4});
  auto v = x.slice(0, 0, 2);
  auto before = x.version();
  v.fill_(1);
  x.add_(1);
  CHECK(v.version() == before + 2);
  auto c = x.clone();
  c.add_(1);
  CHECK(x.version() == before + 2);
}

TEST_CASE("cat, stack, split, chunk") {
  auto a = tensor({{1, 2}, {3, 4}});
  auto b = tensor({{5, 6}});
  CHECK(cat({a, b}).to_vector<int32_t>() == std::vector<int32_t>{1, 2, 3, 4, 5, 6});
  CHECK(cat({a, a}, 1).shape() == Shape{2, 4});
  CHECK(cat({a, tensor({{1.5f, 2.5f}})}).dtype() == kF32);  // promotes
  CHECK(stack({a, a}).shape() == Shape{2, 2, 2});
  CHECK(stack({a, a}, -1).shape() == Shape{2, 2, 2});
  auto parts = arange(5).split(2);
  REQUIRE(parts.size() == 3);
  CHECK(parts[2].to_vector<int64_t>() == std::vector<int64_t>{4});
  auto ch = arange(6).chunk(4);
  REQUIRE(ch.size() == 3);  // chunks of ceil(6/4) = 2
  CHECK(ch[1].to_vector<int64_t>() == std::vector<int64_t>{2, 3});
}
