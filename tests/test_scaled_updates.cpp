// add_(other, alpha), addcmul_ and addcdiv_ (Note [Scaled in-place updates]): the fused pass gives
// the plain ops' numbers bit for bit, on broadcasts, views and aliases; autograd and tracing take
// the plain ops; and every misuse is a tg::Error.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <string>
#include <vector>

#include "gradcheck.h"

using namespace tg;

namespace {

template <class T>
std::vector<T> values(const Tensor& t) {
  return t.contiguous().to_vector<T>();
}

// self op= ... through the fused op, and through the plain ops in the documented order.
struct Forms {
  const char* name;
  void (*fused)(Tensor& self, const Tensor& a, const Tensor& b, const Tensor& s);
  Tensor (*plain)(const Tensor& self, const Tensor& a, const Tensor& b, const Tensor& s);
};

const Forms kForms[] = {
    {"add_", [](Tensor& x, const Tensor& a, const Tensor&, const Tensor& s) { x.add_(a, s); },
     [](const Tensor& x, const Tensor& a, const Tensor&, const Tensor& s) { return x + s * a; }},
    {"addcmul_",
     [](Tensor& x, const Tensor& a, const Tensor& b, const Tensor& s) { x.addcmul_(a, b, s); },
     [](const Tensor& x, const Tensor& a, const Tensor& b, const Tensor& s) {
       return x + s * a * b;
     }},
    {"addcdiv_",
     [](Tensor& x, const Tensor& a, const Tensor& b, const Tensor& s) { x.addcdiv_(a, b, s); },
     [](const Tensor& x, const Tensor& a, const Tensor& b, const Tensor& s) {
       return x + s * (a / b);
     }},
};

}  // namespace

TEST_CASE("scaled updates equal the plain ops bit for bit (broadcasts, views, dtypes)") {
  manual_seed(4);
  for (DType dt : {kF32, kF64}) {
    for (const Forms& f : kForms) {
      std::string name = f.name;
      CAPTURE(name);
      CAPTURE(dtype_name(dt));
      struct Shapes {
        Shape self, a, b;
      };
      for (const Shapes& s : {Shapes{{3, 40}, {3, 40}, {3, 40}}, Shapes{{3, 40}, {40}, {3, 1}},
                              Shapes{{1000}, {1000}, {}}, Shapes{{}, {}, {}}}) {
        Tensor x = randn(s.self, {.dtype = dt});
        Tensor a = randn(s.a, {.dtype = dt});
        Tensor b = rand(s.b, {.dtype = dt}) + 0.5;
        // The scale as an f64 one-element tensor (an optimizer's learning rate) and as a number.
        Tensor scale = full({}, -0.37, {.dtype = kF64});
        Tensor want = f.plain(x, a, b, scale.to(dt));  // the scale in self's dtype
        Tensor got = x.clone();
        uint64_t v0 = got.version();
        f.fused(got, a, b, scale);
        CHECK(got.version() == v0 + 1);
        CAPTURE(s.self.size());
        CAPTURE(s.b.size());
        CAPTURE((got - want).abs().amax().item<double>());
        if (dt == kF32) CHECK(values<float>(got) == values<float>(want));
        else CHECK(values<double>(got) == values<double>(want));
      }
    }
  }
  // A number as the scale, and the default of 1.
  Tensor x = randn({5, 7}), a = randn({5, 7}), b = rand({5, 7}) + 0.5;
  CHECK(values<float>(x.clone().add_(a, 2.5)) == values<float>(x + 2.5 * a));
  CHECK(values<float>(x.clone().addcmul_(a, b)) == values<float>(x + 1 * a * b));
  CHECK(values<float>(x.clone().addcdiv_(a, b, -3)) == values<float>(x + -3 * (a / b)));
  // A transposed (non-contiguous) self, and operands that are self itself.
  Tensor base = randn({6, 9});
  Tensor view = base.clone().t();
  Tensor want = view + 0.5 * view * view;
  view.addcmul_(view, view, 0.5);
  CHECK(values<float>(view) == values<float>(want));
}

TEST_CASE("scaled updates under autograd record the plain ops and differentiate") {
  auto f = [](const std::vector<Tensor>& in) {
    Tensor y = in[0] * 1;  // not a leaf, so it may change in place
    y.addcdiv_(in[1], in[2], in[3]);
    y.addcmul_(in[1], in[2], 0.25);
    y.add_(in[2], in[3]);
    return std::vector<Tensor>{y};
  };
  manual_seed(2);
  std::vector<Tensor> in = {randn({3, 4}, {.dtype = kF64}).requires_grad_(),
                            randn({3, 4}, {.dtype = kF64}).requires_grad_(),
                            (rand({4}, {.dtype = kF64}) + 0.5).requires_grad_(),
                            full({}, 0.7, {.dtype = kF64}).requires_grad_()};
  CHECK(tgtest::gradcheck(f, in) == "");
  CHECK(tgtest::gradgradcheck(f, in) == "");
}

TEST_CASE("a traced scaled update equals the eager one") {
  manual_seed(6);
  Tensor p = randn({50}), m = randn({50}), d = rand({50}) + 0.5;
  Tensor lr = full({}, 0.01, {.dtype = kF64});
  Tensor p_eager = p.clone();
  auto step = trace([&]() { p.addcdiv_(m, d, lr); }, {.mode = Mode::FastCompile});
  for (int i = 0; i < 3; ++i) {
    step();
    p_eager.addcdiv_(m, d, lr);
    CHECK(values<float>(p) == values<float>(p_eager));
  }
  lr.fill_(0.5);  // state: the next replay reads the new rate
  step();
  p_eager.addcdiv_(m, d, lr);
  CHECK(values<float>(p) == values<float>(p_eager));
}

TEST_CASE("scaled updates refuse bad arguments with a tg::Error") {
  Tensor x = zeros({3, 4}), a = ones({3, 4});
  CHECK_THROWS_WITH_AS(x.add_(a, ones({2})), doctest::Contains("add_: the scale must be one element"),
                       Error);
  CHECK_THROWS_WITH_AS(x.addcmul_(a, ones({5})), doctest::Contains("addcmul_"), Error);
  CHECK_THROWS_WITH_AS(x.addcdiv_(a, Tensor()), doctest::Contains("addcdiv_"), Error);
  CHECK_THROWS_AS(zeros({4}).add_(ones({3, 4}), 1.0), Error);  // does not broadcast to self
  Tensor leaf = zeros({3}).requires_grad_();
  CHECK_THROWS_WITH_AS(leaf.add_(ones({3}), 2.0), doctest::Contains("leaf"), Error);
  Tensor expanded = zeros({1}).expand({4});
  CHECK_THROWS_AS(expanded.addcmul_(ones({4}), ones({4})), Error);
  {
    NoGradGuard no_grad;
    leaf.add_(ones({3}), 2.0);  // an optimizer's update: allowed without grad mode
  }
  CHECK(values<float>(leaf) == std::vector<float>{2, 2, 2});
}
