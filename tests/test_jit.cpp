// Compiled fused groups (Note [Compiled fused groups], lib/backend/cpu/jit.cpp): the machine code
// gives the interpreter's bits for every op it covers, through broadcasts, tails, strided
// outputs, special values, sums and many live values; and it is used where it should be.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "backend/backend.h"
#include "backend/cpu/jit.h"
#include "backend/cpu/vec_kernels.h"
#include "fused_steps.h"

using namespace tg;

namespace {

bool have_jit() {
  std::vector<FusedStep> probe(1);
  probe[0].kind = FusedStep::Kind::Unary;
  probe[0].op = OpKind::Neg;
  probe[0].a = -1;
  if (cpu::jit_fused(probe, 1, 1) != nullptr) return true;
  MESSAGE("no compiled fused groups here (no AVX-512, no Xbyak, or TAPEGRAD_JIT=0): the "
          "interpreter is compared with itself");
  return false;
}

// Bits equal, except that any NaN equals any NaN (a NaN's payload is the hardware's choice).
bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return false;
  auto x = a.contiguous().to_vector<float>(), y = b.contiguous().to_vector<float>();
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i]) && std::isnan(y[i])) continue;
    if (std::memcmp(&x[i], &y[i], sizeof(float)) != 0) return false;
  }
  return true;
}

// Values with every awkward case: zeros of both signs, infinities, NaN, denormals, huge and
// tiny numbers, and ordinary ones.
Tensor awkward(const Shape& shape, std::mt19937& rng) {
  Tensor t = randn(shape) * 3;
  auto v = t.to_vector<float>();
  const float specials[] = {0.0f,
                            -0.0f,
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(),
                            1e-40f,
                            -1e-40f,
                            3e38f,
                            -7.5f,
                            1.0f};
  for (float& x : v)
    if (rng() % 8 == 0) x = specials[rng() % std::size(specials)];
  return tensor(v).reshape(shape);
}

const std::vector<OpKind> kUnary = {
    OpKind::Neg,  OpKind::Abs,     OpKind::Relu,  OpKind::Sqrt,     OpKind::Rsqrt,
    OpKind::Gelu, OpKind::Exp,     OpKind::Log,   OpKind::Tanh,     OpKind::Sigmoid,
    OpKind::Log1p, OpKind::Erf,    OpKind::Softplus, OpKind::LogSigmoid};
const std::vector<OpKind> kBinary = {OpKind::Add, OpKind::Sub, OpKind::Mul,
                                     OpKind::Div, OpKind::Maximum, OpKind::Minimum};

struct JitOff {
  JitOff() { cpu::set_jit_enabled(false); }
  ~JitOff() { cpu::set_jit_enabled(true); }
};

}  // namespace

TEST_CASE("jit: random groups give the interpreter's bits, broadcasts, tails, strided outputs") {
  bool jit = have_jit();
  std::mt19937 rng(17);
  Backend& cpu = cpu_backend();
  int threads = get_num_threads();
  for (int trial = 0; trial < 120; ++trial) {
    CAPTURE(trial);
    set_num_threads(1 + trial % 2);
    const int64_t cols[] = {1, 7, 15, 16, 17, 100, 255, 256, 300, 1000, 1025, 3000};
    Shape shape{static_cast<int64_t>(1 + rng() % 9), cols[rng() % std::size(cols)]};
    int ninputs = 1 + static_cast<int>(rng() % 5);
    std::vector<Tensor> views;
    for (int k = 0; k < ninputs; ++k) {
      switch (rng() % 5) {
        case 0: views.push_back(awkward({shape[1]}, rng).expand(shape)); break;
        case 1: views.push_back(awkward({shape[0], 1}, rng).expand(shape)); break;
        case 2: views.push_back(awkward({shape[1], shape[0]}, rng).t()); break;
        case 3: views.push_back(awkward({1}, rng).expand(shape)); break;
        default: views.push_back(awkward(shape, rng)); break;
      }
    }
    std::vector<FusedStep> steps = tgtest::random_steps(rng, ninputs, 14, kUnary, kBinary);
    std::vector<const TensorImpl*> in;
    for (auto& v : views) in.push_back(v.impl());
    bool strided_out = trial % 4 == 0;
    Tensor got = strided_out ? empty({shape[1], shape[0]}).t() : empty(shape);
    Tensor want = strided_out ? empty({shape[1], shape[0]}).t() : empty(shape);
    cpu.fused(steps, *got.impl(), in.data(), in.size());
    {
      JitOff off;
      cpu.fused(steps, *want.impl(), in.data(), in.size());
    }
    CHECK(same_bits(got, want));
    // The same group summed over its rows (a fused sum runs the group into a row first).
    Tensor sum_got = empty({shape[0]}), sum_want = empty({shape[0]});
    cpu.fused_sum(steps, *sum_got.impl(), in.data(), in.size(), 1);
    {
      JitOff off;
      cpu.fused_sum(steps, *sum_want.impl(), in.data(), in.size(), 1);
    }
    CHECK(same_bits(sum_got, sum_want));
  }
  set_num_threads(threads);
  if (jit) {
    // Covered groups are compiled; an op it does not cover leaves the group to the interpreter.
    std::vector<FusedStep> covered = tgtest::random_steps(rng, 3, 6, kUnary, kBinary);
    cpu::JitFn made = cpu::jit_fused(covered, 0b101, 3);
    CHECK((made != nullptr));
    CHECK((made == cpu::jit_fused(covered, 0b101, 3)));  // kept, not made again
    cpu::JitFn summed = cpu::jit_fused(covered, 0b101, 3, true);  // a fused sum's
    CHECK((summed != nullptr));
    CHECK((summed != made));
    std::vector<FusedStep> with_sign = covered;
    with_sign[0].kind = FusedStep::Kind::Unary;
    with_sign[0].op = OpKind::Sign;
    with_sign[0].a = -1;
    CHECK((cpu::jit_fused(with_sign, 0b101, 3) == nullptr));  // sign: not covered
    std::vector<FusedStep> f64 = covered;
    for (auto& s : f64) s.dtype = kF64;
    CHECK((cpu::jit_fused(f64, 0b101, 3) == nullptr));
    JitOff off;
    CHECK((cpu::jit_fused(covered, 0b101, 3) == nullptr));
  }
}

TEST_CASE("jit: many values alive at once, and gelu calls with all of them saved") {
  have_jit();
  // 24 inputs each used twice, far apart, around gelu calls: most registers are alive at a call.
  const int n_in = 24;
  std::vector<FusedStep> steps;
  auto input = [](int k) { return -k - 1; };
  for (int k = 0; k < n_in; ++k) {
    FusedStep s;
    s.kind = FusedStep::Kind::Binary;
    s.op = k % 2 ? OpKind::Mul : OpKind::Add;
    s.a = input(k);
    s.b = input((k + 1) % n_in);
    steps.push_back(s);  // value k
  }
  FusedStep g;
  g.kind = FusedStep::Kind::Unary;
  g.op = OpKind::Gelu;
  g.a = 0;
  steps.push_back(g);  // value 24
  int32_t acc = 24;
  for (int k = 1; k < n_in; ++k) {
    FusedStep s;
    s.kind = FusedStep::Kind::Binary;
    s.op = OpKind::Add;
    s.a = acc;
    s.b = k;
    steps.push_back(s);
    acc = static_cast<int32_t>(steps.size() - 1);
    if (k % 6 == 0) {
      FusedStep h = g;
      h.a = acc;
      steps.push_back(h);
      acc = static_cast<int32_t>(steps.size() - 1);
    }
  }
  std::mt19937 rng(3);
  for (int64_t cols : {5, 16, 40, 1001}) {
    CAPTURE(cols);
    std::vector<Tensor> views;
    for (int k = 0; k < n_in; ++k)
      views.push_back(k % 5 == 0 ? awkward({1}, rng).expand({3, cols}) : awkward({3, cols}, rng));
    std::vector<const TensorImpl*> in;
    for (auto& v : views) in.push_back(v.impl());
    Tensor got = empty({3, cols}), want = empty({3, cols});
    cpu_backend().fused(steps, *got.impl(), in.data(), in.size());
    {
      JitOff off;
      cpu_backend().fused(steps, *want.impl(), in.data(), in.size());
    }
    CHECK(same_bits(got, want));
  }
}

TEST_CASE("jit: traced LayerNorm after GELU keeps eager's bits") {
  auto block = [](const Tensor& x, const Tensor& a, const Tensor& b) {
    return nn::functional::layer_norm(gelu(x * a + b), {x.size(-1)}, ones({x.size(-1)}),
                                      zeros({x.size(-1)}));
  };
  for (int64_t cols : {10, 300, 1000}) {
    Tensor x = randn({37, cols}), a = randn({cols}), b = randn({cols});
    auto f = trace(block);
    CHECK(same_bits(f(x, a, b), block(x, a, b)));
    CHECK(same_bits(f(x, a, b), block(x, a, b)));
  }
}
