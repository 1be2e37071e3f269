// Generated CUDA kernels for fused groups (Note [Generated fused kernels]): the source the
// generator prints, and NVRTC compiling it for sm_90. These need NVRTC, not a GPU, so they run
// on a machine with the CUDA toolkit and no GPU; running the kernels is in test_cuda.cpp's
// fused-group case. Built only with the CUDA backend.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <random>

#include "backend/cuda/fused_source.h"

using namespace tg;
using namespace tg::cuda_detail;

namespace {

constexpr int kArch = 90;  // H100 / H200

bool have_nvrtc() {
  if (nvrtc_available()) return true;
  MESSAGE("NVRTC (libnvrtc) could not be loaded: generated-kernel compile case skipped");
  return false;
}

bool is_cubin(const std::string& bin) { return bin.size() > 64 && bin.compare(0, 4, "\x7f" "ELF") == 0; }

FusedStep unary(OpKind op, DType dt, int32_t a, OpAttrs attrs = {}) {
  FusedStep s;
  s.kind = FusedStep::Kind::Unary;
  s.op = op;
  s.dtype = dt;
  s.a = a;
  s.attrs = attrs;
  return s;
}
FusedStep binary(OpKind op, DType dt, int32_t a, int32_t b) {
  FusedStep s;
  s.kind = FusedStep::Kind::Binary;
  s.op = op;
  s.dtype = dt;
  s.a = a;
  s.b = b;
  return s;
}

const std::vector<OpKind> kUnary = {
    OpKind::Neg,  OpKind::Exp,     OpKind::Log,  OpKind::Log1p,   OpKind::Expm1,
    OpKind::Sqrt, OpKind::Rsqrt,   OpKind::Abs,  OpKind::Sign,    OpKind::Sin,
    OpKind::Cos,  OpKind::Tanh,    OpKind::Sigmoid, OpKind::Relu, OpKind::Gelu,
    OpKind::Erf,  OpKind::Softplus, OpKind::LogSigmoid, OpKind::PowScalar, OpKind::Clamp};
const std::vector<OpKind> kArith = {OpKind::Add, OpKind::Sub, OpKind::Mul, OpKind::Div,
                                    OpKind::Pow, OpKind::Maximum, OpKind::Minimum};
const std::vector<OpKind> kCompare = {OpKind::Eq, OpKind::Ne, OpKind::Lt,
                                      OpKind::Le, OpKind::Gt, OpKind::Ge};

}  // namespace

TEST_CASE("cuda fused: the generated source, one line per step, offsets by merged dims") {
  std::vector<FusedStep> steps = {binary(OpKind::Mul, kF32, -1, -2),
                                  binary(OpKind::Add, kF32, 0, -3),
                                  unary(OpKind::Gelu, kF32, 1)};
  std::vector<DType> in = {kF32, kF32, kF32};
  auto src = fused_source(steps, in, kF32, 1);
  REQUIRE(src.has_value());
  CHECK(src->find("const float s0 = (i0 * i1);") != std::string::npos);
  CHECK(src->find("const float s1 = (s0 + i2);") != std::string::npos);
  CHECK(src->find("erfcf(-s1 * ") != std::string::npos);
  CHECK(src->find("*(float*)(p.base[0] + o0) = s2;") != std::string::npos);
  CHECK(src->find(std::string("void __launch_bounds__(256) ") + kFusedKernelName) !=
        std::string::npos);
  // One merged dim: no division; three: one per dim but the outermost.
  CHECK(src->find("/ p.sizes") == std::string::npos);
  auto src3 = fused_source(steps, in, kF32, 3);
  REQUIRE(src3.has_value());
  size_t divisions = 0;
  for (size_t at = src3->find("/ p.sizes"); at != std::string::npos; at = src3->find("/ p.sizes", at + 1))
    ++divisions;
  CHECK(divisions == 2);
  // The source is the cache key: the same for the same group, different for other dtypes.
  CHECK(*fused_source(steps, in, kF32, 1) == *src);
  std::vector<DType> in64 = {kF64, kF64, kF64};
  std::vector<FusedStep> steps64 = steps;
  for (auto& s : steps64) s.dtype = kF64;
  auto src64 = fused_source(steps64, in64, kF64, 1);
  REQUIRE(src64.has_value());
  CHECK(*src64 != *src);
  CHECK(src64->find("erfc(-s1 * ") != std::string::npos);
  // The parameter block's size as the kernel's struct lays it out.
  CHECK(fused_params_words(4, 1) == 1 + 1 + 4 * 2);
  CHECK(fused_params_words(4, 3) == 1 + 3 + 4 * 4);
}

TEST_CASE("cuda fused: groups without a generated form are declined, never miscompiled") {
  std::vector<DType> in = {kF32, kF32};
  // A step reading a later value, an input that is not there, an output dtype that differs.
  CHECK_FALSE(fused_source({binary(OpKind::Add, kF32, 1, -1), unary(OpKind::Neg, kF32, 0)}, in, kF32, 1));
  CHECK_FALSE(fused_source({binary(OpKind::Add, kF32, -1, -3)}, in, kF32, 1));
  CHECK_FALSE(fused_source({binary(OpKind::Add, kF32, -1, -2)}, in, kF64, 1));
  CHECK_FALSE(fused_source({}, in, kF32, 1));
  CHECK_FALSE(fused_source({binary(OpKind::Add, kF32, -1, -2)}, in, kF32, 0));
  // Division of bools has no definition to copy.
  std::vector<DType> bools = {kBool, kBool};
  CHECK_FALSE(fused_source({binary(OpKind::Div, kBool, -1, -2)}, bools, kBool, 1));
  CHECK(fused_source({binary(OpKind::Mul, kBool, -1, -2)}, bools, kBool, 1));
}

TEST_CASE("cuda fused: every op and dtype a step can have compiles with NVRTC for sm_90") {
  if (!have_nvrtc()) return;
  CHECK(nvrtc_version() >= 12000);
  // One group per dtype holding every op as a step over the inputs (a step's value need not be
  // read): few NVRTC runs, every expression compiled.
  for (DType dt : {kF32, kF64, kI32, kI64, kBool}) {
    CAPTURE(dtype_name(dt));
    std::vector<FusedStep> steps;
    bool fp = dt == kF32 || dt == kF64;
    if (dt != kBool) {
      for (OpKind op : kUnary) {
        if (!fp && op != OpKind::Neg && op != OpKind::Abs && op != OpKind::Sign &&
            op != OpKind::Relu && op != OpKind::PowScalar && op != OpKind::Clamp)
          continue;
        OpAttrs attrs;
        if (op == OpKind::PowScalar) attrs = {3, 0};
        if (op == OpKind::Clamp) attrs = {-std::numeric_limits<double>::infinity(), 2.5};
        steps.push_back(unary(op, dt, -1, attrs));
      }
    }
    for (OpKind op : kArith) {
      if (dt == kBool && op == OpKind::Div) continue;
      steps.push_back(binary(op, dt, -1, -2));
    }
    for (OpKind op : kCompare) steps.push_back(binary(op, kBool, -1, -2));
    steps.push_back(binary(OpKind::LogicalAnd, dt, -1, -2));
    steps.push_back(binary(OpKind::LogicalOr, dt, -1, -2));
    steps.push_back(unary(OpKind::LogicalNot, kBool, static_cast<int32_t>(steps.size() - 1)));
    FusedStep where;
    where.kind = FusedStep::Kind::Where;
    where.dtype = dt;
    where.a = static_cast<int32_t>(steps.size() - 1);  // a bool value
    where.b = -1;
    where.c = 0;
    steps.push_back(where);
    // Conversions to and from every dtype.
    for (DType to : {kF32, kF64, kI32, kI64, kBool}) {
      FusedStep c;
      c.kind = FusedStep::Kind::Convert;
      c.dtype = to;
      c.a = -1;
      steps.push_back(c);
      FusedStep back = c;
      back.dtype = dt;
      back.a = static_cast<int32_t>(steps.size() - 1);
      steps.push_back(back);
    }
    std::vector<DType> in = {dt, dt};
    for (int ndim : {1, 2}) {
      auto src = fused_source(steps, in, dt, ndim);
      REQUIRE(src.has_value());
      std::string bin;
      REQUIRE_NOTHROW(bin = nvrtc_compile(*src, kArch));
      CHECK(is_cubin(bin));
    }
  }
}

TEST_CASE("cuda fused: random groups compile; a compile error is a tg::Error with NVRTC's log") {
  if (!have_nvrtc()) return;
  std::mt19937 rng(11);
  const std::vector<OpKind> un = {OpKind::Exp, OpKind::Tanh, OpKind::Relu, OpKind::Neg,
                                  OpKind::Sigmoid, OpKind::Gelu};
  const std::vector<OpKind> bin = {OpKind::Add, OpKind::Sub, OpKind::Mul, OpKind::Div,
                                   OpKind::Maximum};
  for (int trial = 0; trial < 6; ++trial) {
    int ninputs = 1 + static_cast<int>(rng() % 5);
    std::vector<FusedStep> steps;
    int nsteps = 1 + static_cast<int>(rng() % 12);
    for (int i = 0; i < nsteps; ++i) {
      auto pick = [&] {
        int r = static_cast<int>(rng() % static_cast<unsigned>(i + ninputs));
        return r < ninputs ? -r - 1 : r - ninputs;
      };
      if (rng() % 2) steps.push_back(unary(un[rng() % un.size()], kF32, pick()));
      else steps.push_back(binary(bin[rng() % bin.size()], kF32, pick(), pick()));
    }
    std::vector<DType> in(static_cast<size_t>(ninputs), kF32);
    auto src = fused_source(steps, in, kF32, 1 + trial % 3);
    REQUIRE(src.has_value());
    CHECK(is_cubin(nvrtc_compile(*src, kArch)));
    // Cached: the second request is the same bytes at the same address.
    CHECK(&nvrtc_compile(*src, kArch) == &nvrtc_compile(*src, kArch));
  }
  try {
    nvrtc_compile("extern \"C\" __global__ void tg_fused() { undeclared_thing(); }\n", kArch);
    FAIL("no error");
  } catch (const Error& e) {
    std::string what = e.what();
    CHECK(what.find("NVRTC could not compile a generated kernel for sm_90") != std::string::npos);
    CHECK(what.find("undeclared_thing") != std::string::npos);
  }
}
