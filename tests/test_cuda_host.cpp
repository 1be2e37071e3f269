// The eager CUDA kernels (lib/backend/cuda/kernels.cu) compiled for the host and run here, on
// CPU tensors, against the CPU backend (Note [CUDA code on the host], host_cuda_source.h): the real
// kernels' code with their launch configurations, each block's threads as fibers. The source is
// read as it is (from TAPEGRAD_SOURCE_DIR where set); each launch
// `k<<<grid, block, shared, stream>>>(args)` becomes a call of the host's launcher, and CUB's
// radix sort a stable sort. Built only with the CUDA backend; a machine without the host's
// compiler or CUDA's headers (a GPU machine with the runtime only) skips, saying so.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <cctype>
#include <cmath>
#include <cstring>
#include <random>

#include "backend/backend.h"
#include "backend/cuda/fused_source.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/softmax_rows.h"
#include "core/check.h"
#include "fused_steps.h"
#include "host_cuda.h"
#include "op_table.h"

using namespace tg;
using namespace tg::cuda_detail;

namespace {

// The launch functions of kernels.h, by name.
constexpr const char* kEntries[] = {"launch_copy",         "launch_fill",
                                    "launch_unary",        "launch_binary",
                                    "launch_where",        "launch_iota",
                                    "launch_random",       "launch_words",
                                    "launch_reduce",       "reduce_workspace_bytes",
                                    "launch_softmax_rows", "launch_check_indices",
                                    "launch_index",        "index_workspace_bytes",
                                    "launch_window"};

// kernels.cu for the host, with an entry that hands out its launch functions by name.
std::string kernels_unit() {
  std::string src = tghost::read_file(tghost::source_dir() + "/lib/backend/cuda/kernels.cu");
  if (src.empty()) return {};
  for (const char* line :
       {"#include <cuda_runtime.h>", "#include <cub/device/device_radix_sort.cuh>"}) {
    size_t at = src.find(line);
    REQUIRE(at != std::string::npos);
    src.erase(at, std::strlen(line));
  }
  std::string unit = std::string(tghost::kRuntime) + tghost::kCubShim + tghost::host_launches(src);
  unit +=
      "extern \"C\" __attribute__((visibility(\"default\"))) void* tg_host_entry(const char* n) {\n"
      "  using namespace tg::cuda_detail;\n";
  for (const char* e : kEntries)
    unit += fmt::format("  if (strcmp(n, \"{0}\") == 0) return (void*)&{0};\n", e);
  unit += "  return nullptr;\n}\n";
  return unit;
}

struct Kernels {
  tghost::Library lib;
  bool built = false;
  template <class Fn>
  Fn get(const char* name) const {
    auto entry = lib.get<void* (*)(const char*)>("tg_host_entry");
    void* p = entry(name);
    REQUIRE_MESSAGE(p != nullptr, name);
    return reinterpret_cast<Fn>(p);
  }
};

// Built once for the test run; nullptr where that cannot be done here (said why).
const Kernels* host_kernels() {
  static Kernels* k = [] {
    auto* r = new Kernels;
    const std::string src = tghost::source_dir();
    const std::string unit = kernels_unit();
    if (unit.empty()) {
      MESSAGE("lib/backend/cuda/kernels.cu is not under " << src << " (TAPEGRAD_SOURCE_DIR)");
      return r;
    }
    r->built = tghost::build(
        unit, "-O1 -I" + src + "/lib -I" + src + "/include -isystem " + tghost::cuda_include(),
        r->lib,
        {src + "/lib/backend/cuda", src + "/lib/backend/cpu", src + "/lib/backend",
         src + "/lib/ops", src + "/lib/core", src + "/include/tapegrad"});
    return r;
  }();
  if (!k->built) {
    MESSAGE("kernels.cu could not be built for the host here: case skipped");
    return nullptr;
  }
  return k;
}

// Within a few ulps for floats (the host's libm against the CPU backend's vector kernels), NaN
// where NaN; exactly otherwise.
bool agree(const Tensor& got, const Tensor& want, double tol = -1) {
  if (got.shape() != want.shape() || got.dtype() != want.dtype()) return false;
  const bool fp = want.dtype() == kF32 || want.dtype() == kF64;
  if (!fp) return got.to(kI64).to_vector<int64_t>() == want.to(kI64).to_vector<int64_t>();
  if (tol < 0) tol = want.dtype() == kF32 ? 4e-6 : 1e-13;
  auto a = got.to_vector<double>(), b = want.to_vector<double>();
  for (size_t i = 0; i < a.size(); ++i) {
    if ((std::isnan(a[i]) && std::isnan(b[i])) || a[i] == b[i]) continue;
    if (!(std::abs(a[i] - b[i]) <= tol * std::max(1.0, std::abs(b[i])))) {
      MESSAGE("element " << i << ": " << a[i] << " against " << b[i]);
      return false;
    }
  }
  return true;
}

const TensorImpl& I(const Tensor& t) { return *t.impl(); }
char* D(const Tensor& t) { return t.impl()->data(); }

}  // namespace

TEST_CASE("cuda on the host: elementwise kernels give the CPU's values") {
  const Kernels* k = host_kernels();
  if (k == nullptr) return;
  auto unary = k->get<decltype(&launch_unary)>("launch_unary");
  auto binary = k->get<decltype(&launch_binary)>("launch_binary");
  auto where = k->get<decltype(&launch_where)>("launch_where");
  auto copy = k->get<decltype(&launch_copy)>("launch_copy");
  auto fill = k->get<decltype(&launch_fill)>("launch_fill");
  auto iota = k->get<decltype(&launch_iota)>("launch_iota");
  Backend& cpu = cpu_backend();
  manual_seed(5);
  for (DType dt : {kF32, kF64}) {
    CAPTURE(dtype_name(dt));
    // Contiguous (f32: the four-at-a-time path, with a tail), transposed, broadcast.
    Tensor x = randn({37, 29}, {.dtype = dt}) * 2;
    Tensor xt = randn({29, 37}, {.dtype = dt}).t();
    Tensor row = randn({29}, {.dtype = dt}).expand({37, 29});
    Tensor one = randn({}, {.dtype = dt}).expand({37, 29});
    for (OpKind op : {OpKind::Exp, OpKind::Tanh, OpKind::Neg, OpKind::Sigmoid, OpKind::Gelu,
                      OpKind::Abs, OpKind::Relu, OpKind::Sqrt}) {
      CAPTURE(op_name(op));
      for (const Tensor& in : {x, xt}) {
        Tensor got = empty({37, 29}, {.dtype = dt}), want = empty({37, 29}, {.dtype = dt});
        unary(op, {}, make_strided({&I(got), &I(in)}), got.numel(), nullptr);
        cpu.unary(op, I(want), I(in), {});
        CHECK(agree(got, want));
      }
    }
    for (OpKind op : {OpKind::Add, OpKind::Sub, OpKind::Mul, OpKind::Div, OpKind::Maximum}) {
      CAPTURE(op_name(op));
      for (const Tensor& b : {row, one, xt}) {
        Tensor got = empty({37, 29}, {.dtype = dt}), want = empty({37, 29}, {.dtype = dt});
        binary(op, make_strided({&I(got), &I(x), &I(b)}), got.numel(), nullptr);
        cpu.binary(op, I(want), I(x), I(b));
        CHECK(agree(got, want));
      }
    }
    Tensor got = empty({37, 29}, {.dtype = kBool}), want = empty({37, 29}, {.dtype = kBool});
    binary(OpKind::Lt, make_strided({&I(got), &I(x), &I(row)}), got.numel(), nullptr);
    cpu.binary(OpKind::Lt, I(want), I(x), I(row));
    CHECK(agree(got, want));
    Tensor w = empty({37, 29}, {.dtype = dt}), ww = empty({37, 29}, {.dtype = dt});
    where(make_strided({&I(w), &I(got), &I(x), &I(xt)}), w.numel(), nullptr);
    cpu.where(I(ww), I(want), I(x), I(xt));
    CHECK(agree(w, ww));
    // Conversions: saturating to integers, NaN to 0.
    Tensor big = x * 1e10;
    for (DType to : {kI32, kI64, kBool, kF32, kF64}) {
      Tensor c = empty({37, 29}, {.dtype = to}), cw = empty({37, 29}, {.dtype = to});
      copy(make_strided({&I(c), &I(big)}), c.numel(), nullptr);
      cpu.copy(I(cw), I(big));
      CHECK(agree(c, cw));
    }
    Tensor f = empty({29, 37}, {.dtype = dt}).t(), fw = empty({37, 29}, {.dtype = dt});
    fill(make_strided({&I(f)}), f.numel(), -2.5, -2, nullptr);
    cpu.fill(I(fw), Scalar(-2.5));
    CHECK(agree(f, fw));
    Tensor r = empty({1000}, {.dtype = dt}), rw = empty({1000}, {.dtype = dt});
    iota(D(r), dt, 1000, -3.0, 0.25, nullptr);
    cpu.iota(I(rw), -3.0, 0.25);
    CHECK(agree(r, rw));
  }
  CHECK_FALSE(k->lib.stuck());
}

TEST_CASE("cuda on the host: random draws are the CPU's numbers, bit for bit") {
  const Kernels* k = host_kernels();
  if (k == nullptr) return;
  auto random = k->get<decltype(&launch_random)>("launch_random");
  auto words = k->get<decltype(&launch_words)>("launch_words");
  Backend& cpu = cpu_backend();
  for (DType dt : {kF32, kF64, kI64}) {
    for (int kind = 0; kind < 3; ++kind) {
      if ((dt == kI64) != (kind == 2)) continue;
      CAPTURE(dtype_name(dt));
      CAPTURE(kind);
      const RandomKind rk = kind == 0   ? RandomKind::Uniform
                            : kind == 1 ? RandomKind::Normal
                                        : RandomKind::Int;
      const double a = kind == 2 ? -5 : 0.5, b = kind == 2 ? 1000 : 2.0;
      for (int64_t n : {1, 7, 1001}) {
        Tensor got = empty({n}, {.dtype = dt}), want = empty({n}, {.dtype = dt});
        random(kind, D(got), dt, n, 42, 977, nullptr, a, b, nullptr);
        cpu.random(rk, I(want), 42, 977, a, b);
        CHECK(agree(got, want, 0));
        // The same draw with its seed and offset read from a slot (a captured replay's).
        Tensor slot = zeros({2}, {.dtype = kI64});
        const int64_t w[2] = {42, 977};
        words(reinterpret_cast<int64_t*>(D(slot)), w, 2, nullptr);
        CHECK(slot.to_vector<int64_t>() == std::vector<int64_t>{42, 977});
        Tensor from = empty({n}, {.dtype = dt});
        random(kind, D(from), dt, n, 0, 0, reinterpret_cast<const int64_t*>(D(slot)), a, b,
               nullptr);
        CHECK(agree(from, want, 0));
      }
    }
  }
  // More words than one launch carries.
  std::vector<int64_t> many(70);
  for (size_t i = 0; i < many.size(); ++i) many[i] = static_cast<int64_t>(i * i) - 50;
  Tensor dst = zeros({70}, {.dtype = kI64});
  words(reinterpret_cast<int64_t*>(D(dst)), many.data(), 70, nullptr);
  CHECK(dst.to_vector<int64_t>() == many);
  CHECK_FALSE(k->lib.stuck());
}

TEST_CASE("cuda on the host: reductions on every kernel's shapes give the CPU's values") {
  const Kernels* k = host_kernels();
  if (k == nullptr) return;
  auto reduce = k->get<decltype(&launch_reduce)>("launch_reduce");
  auto workspace = k->get<decltype(&reduce_workspace_bytes)>("reduce_workspace_bytes");
  Backend& cpu = cpu_backend();
  manual_seed(9);
  struct Case {
    Shape shape;
    int nreduced;
    bool transposed;
  };
  // Warps (short rows), Block (long rows), Columns (a bias's gradient; in one part and in four),
  // Pieces (few, very long rows), over contiguous and transposed inputs.
  const Case cases[] = {{{40, 10}, 1, false},  {{3, 3000}, 1, false},  {{100, 40}, 1, true},
                        {{64, 1024}, 1, true}, {{2, 65600}, 1, false}, {{6, 5, 7}, 2, false},
                        {{1, 1}, 1, false},    {{40, 9, 3}, 2, true}};
  // Every op in f32; the others' accumulators and index states with a few.
  auto tested = [](DType dt, OpKind op) {
    if (dt == kF32) return true;
    if (dt == kF64) return op == OpKind::Sum || op == OpKind::Argmax;
    if (dt == kI64) return op == OpKind::Sum || op == OpKind::Amin || op == OpKind::Argmax;
    return op == OpKind::Sum;
  };
  for (const Case& c : cases) {
    for (DType dt : {kF32, kF64, kI64, kBool}) {
      Tensor x = dt == kBool  ? randint(0, 2, c.shape).to(kBool)
                 : dt == kI64 ? randint(-50, 50, c.shape)
                              : randn(c.shape, {.dtype = dt});
      if (c.transposed) {
        Shape flipped = c.shape;
        std::swap(flipped[0], flipped[flipped.size() - 1]);
        Tensor base = dt == kBool  ? randint(0, 2, flipped).to(kBool)
                      : dt == kI64 ? randint(-50, 50, flipped)
                                   : randn(flipped, {.dtype = dt});
        x = base.transpose(0, -1);
      }
      Shape kept;
      for (size_t d = 0; d + static_cast<size_t>(c.nreduced) < c.shape.size(); ++d)
        kept.push_back(c.shape[d]);
      for (OpKind op : {OpKind::Sum, OpKind::Amax, OpKind::Amin, OpKind::Argmax, OpKind::Argmin,
                        OpKind::Prod}) {
        if (!tested(dt, op) || (op == OpKind::Prod && c.shape.back() > 50)) continue;
        CAPTURE(op_name(op));
        CAPTURE(dtype_name(dt));
        CAPTURE(c.shape[0]);
        const bool arg = op == OpKind::Argmax || op == OpKind::Argmin;
        const DType out_dt = arg || dt == kBool ? kI64 : dt;
        // A sum of bools counts: read as i64, as the op does.
        Tensor xin = dt == kBool ? x.to(kI64) : x;
        Tensor got = empty(kept, {.dtype = out_dt}), want = empty(kept, {.dtype = out_dt});
        ReduceGeom g = make_reduce_geom(I(got), I(xin), c.nreduced);
        std::vector<char> ws(workspace(g) + 1);
        reduce(op, xin.dtype(), D(xin), D(got), g, ws.data(), nullptr);
        cpu.reduce(op, I(want), I(xin), c.nreduced);
        CHECK(agree(got, want, dt == kF32 ? 1e-5 : 1e-12));
      }
    }
  }
  CHECK_FALSE(k->lib.stuck());
}

TEST_CASE("cuda on the host: softmax rows give the CPU's composite") {
  const Kernels* k = host_kernels();
  if (k == nullptr) return;
  auto rows = k->get<decltype(&launch_softmax_rows)>("launch_softmax_rows");
  Backend& cpu = cpu_backend();
  manual_seed(10);
  for (DType dt : {kF32, kF64}) {
    for (const Shape& shape : {Shape{70, 10}, Shape{3, 3000}, Shape{4, 6, 33}}) {
      Tensor x = randn(shape, {.dtype = dt}) * 4;
      x.select(0, 1).fill_(-std::numeric_limits<double>::infinity());
      for (OpKind op : {OpKind::Softmax, OpKind::LogSoftmax, OpKind::Logsumexp}) {
        CAPTURE(op_name(op));
        CAPTURE(dtype_name(dt));
        CAPTURE(shape[1]);
        Shape kept = shape;
        kept.erase(kept.begin() + static_cast<int64_t>(kept.size()) - 1);
        Tensor got = op == OpKind::Logsumexp ? empty(kept, {.dtype = dt}) : empty_like(x);
        ReduceGeom g;
        REQUIRE(make_softmax_geom(op, I(got), I(x), 1, g));
        rows(op, dt, D(x), D(got), g, nullptr);
        Tensor want = op == OpKind::Softmax      ? softmax(x, -1)
                      : op == OpKind::LogSoftmax ? log_softmax(x, -1)
                                                 : logsumexp(x, {-1});
        CHECK(agree(got, want, dt == kF32 ? 2e-5 : 1e-12));
      }
    }
  }
  (void)cpu;
  CHECK_FALSE(k->lib.stuck());
}

TEST_CASE("cuda on the host: gather, index_select and scatter_add give the CPU's values") {
  const Kernels* k = host_kernels();
  if (k == nullptr) return;
  auto index = k->get<decltype(&launch_index)>("launch_index");
  auto workspace = k->get<decltype(&index_workspace_bytes)>("index_workspace_bytes");
  auto check = k->get<decltype(&launch_check_indices)>("launch_check_indices");
  Backend& cpu = cpu_backend();
  manual_seed(12);
  for (DType dt : {kF32, kF64, kI64, kI32}) {
    CAPTURE(dtype_name(dt));
    Tensor x =
        dt == kI64 || dt == kI32 ? randint(-9, 9, {40, 7}).to(dt) : randn({40, 7}, {.dtype = dt});
    Tensor idx = randint(-7, 7, {40, 5});  // gather along dim 1 (negative: from the end)
    Tensor rows = randint(0, 40, {300});   // index_select / scatter rows, repeated
    auto run = [&](OpKind op, const Tensor& out, const Tensor& src, int dim, const Tensor& ix,
                   const int64_t* skip) {
      const TensorImpl& space = op == OpKind::ScatterAdd ? I(src) : I(out);
      IndexGeom g = make_index_geom(op, I(out), I(src), dim, I(ix));
      std::vector<char> ws(workspace(op, dt, g, space.numel) + 256);
      void* w = ws.data() + (256 - reinterpret_cast<uintptr_t>(ws.data()) % 256) % 256;
      CHECK(index(op, dt, D(out), D(src), reinterpret_cast<const int64_t*>(D(ix)), g, space.numel,
                  w, ws.size() - 256, skip, nullptr) == cudaSuccess);
    };
    Tensor got = empty({40, 5}, {.dtype = dt}), want = empty({40, 5}, {.dtype = dt});
    run(OpKind::Gather, got, x, 1, idx, nullptr);
    cpu.index(OpKind::Gather, I(want), I(x), 1, I(idx));
    CHECK(agree(got, want, 0));
    Tensor sel = empty({300, 7}, {.dtype = dt}), selw = empty({300, 7}, {.dtype = dt});
    run(OpKind::IndexSelect, sel, x, 0, rows, nullptr);
    cpu.index(OpKind::IndexSelect, I(selw), I(x), 0, I(rows));
    CHECK(agree(sel, selw, 0));
    // scatter_add of 300 rows into 40 (floats: sorted, no atomics; integers: atomics), onto a
    // base, into a transposed output.
    Tensor src =
        dt == kI64 || dt == kI32 ? randint(-9, 9, {300, 7}).to(dt) : randn({300, 7}, {.dtype = dt});
    Tensor ix2 = rows.unsqueeze(1).expand({300, 7}).contiguous();
    Tensor acc = x.t().contiguous().t(), accw = x.clone();
    run(OpKind::ScatterAdd, acc, src, 0, ix2, nullptr);
    cpu.index(OpKind::ScatterAdd, I(accw), I(src), 0, I(ix2));
    CHECK(agree(acc, accw, dt == kF32 ? 1e-5 : 1e-12));
    // Checked on the device: a bad index sets the flag, and with it as `skip` nothing is written.
    Tensor bad = idx.clone();
    bad.select(0, 3).select(0, 2).fill_(7);
    Tensor flag = zeros({2}, {.dtype = kI64});
    check(make_strided({&I(bad)}), bad.numel(), 7, reinterpret_cast<int64_t*>(D(flag)), nullptr);
    CHECK(flag.to_vector<int64_t>() == std::vector<int64_t>{1, 7});
    Tensor untouched = zeros({40, 5}, {.dtype = dt});
    run(OpKind::Gather, untouched, x, 1, bad, reinterpret_cast<const int64_t*>(D(flag)));
    CHECK(agree(untouched, zeros({40, 5}, {.dtype = dt}), 0));
    Tensor base = x.clone();
    Tensor bad_rows = ix2.clone();
    bad_rows.select(0, 299).select(0, 6).fill_(40);
    Tensor flag2 = zeros({2}, {.dtype = kI64});
    check(make_strided({&I(bad_rows)}), bad_rows.numel(), 40, reinterpret_cast<int64_t*>(D(flag2)),
          nullptr);
    CHECK(flag2.to_vector<int64_t>() == std::vector<int64_t>{1, 40});
    run(OpKind::ScatterAdd, base, src, 0, bad_rows, reinterpret_cast<const int64_t*>(D(flag2)));
    CHECK(agree(base, x, 0));
    // Good indices leave the flag as it was.
    Tensor clean = zeros({2}, {.dtype = kI64});
    check(make_strided({&I(idx)}), idx.numel(), 7, reinterpret_cast<int64_t*>(D(clean)), nullptr);
    CHECK(clean.to_vector<int64_t>() == std::vector<int64_t>{0, 0});
  }
  CHECK_FALSE(k->lib.stuck());
}

TEST_CASE("cuda on the host: im2col, col2im and pooling give the CPU's values") {
  const Kernels* k = host_kernels();
  if (k == nullptr) return;
  auto window = k->get<decltype(&launch_window)>("launch_window");
  Backend& cpu = cpu_backend();
  manual_seed(13);
  for (DType dt : {kF32, kF64}) {
    CAPTURE(dtype_name(dt));
    Tensor x = randn({2, 3, 9, 8}, {.dtype = dt});
    Window2d w{3, 2, 2, 1, 1, 0, 2, 1};  // kh kw sh sw ph pw dh dw
    const int64_t OH = w.out_h(9), OW = w.out_w(8), K = 3 * w.kh * w.kw;
    Tensor cols = empty({2, K, OH * OW}, {.dtype = dt}),
           colsw = empty({2, K, OH * OW}, {.dtype = dt});
    window(OpKind::Im2col, dt, D(cols), D(x), nullptr,
           make_window_geom(OpKind::Im2col, I(cols), I(x), w), nullptr);
    cpu.window(OpKind::Im2col, I(colsw), I(x), w, nullptr);
    CHECK(agree(cols, colsw, 0));
    Tensor img = empty({2, 3, 9, 8}, {.dtype = dt}), imgw = empty({2, 3, 9, 8}, {.dtype = dt});
    window(OpKind::Col2im, dt, D(img), D(cols), nullptr,
           make_window_geom(OpKind::Col2im, I(img), I(cols), w), nullptr);
    cpu.window(OpKind::Col2im, I(imgw), I(cols), w, nullptr);
    CHECK(agree(img, imgw, dt == kF32 ? 1e-5 : 1e-12));
    Window2d p{3, 3, 2, 2, 1, 1, 1, 1};
    const int64_t ph = p.out_h(9), pw = p.out_w(8);
    for (OpKind op : {OpKind::MaxPool2d, OpKind::AvgPool2d}) {
      CAPTURE(op_name(op));
      Tensor out = empty({2, 3, ph, pw}, {.dtype = dt}),
             outw = empty({2, 3, ph, pw}, {.dtype = dt});
      Tensor at = empty({2, 3, ph, pw}, {.dtype = kI64}),
             atw = empty({2, 3, ph, pw}, {.dtype = kI64});
      const bool max = op == OpKind::MaxPool2d;
      window(op, dt, D(out), D(x), max ? reinterpret_cast<int64_t*>(D(at)) : nullptr,
             make_window_geom(op, I(out), I(x), p), nullptr);
      cpu.window(op, I(outw), I(x), p, max ? &I(atw) : nullptr);
      CHECK(agree(out, outw, dt == kF32 ? 1e-6 : 1e-13));
      if (max) CHECK(agree(at, atw, 0));
    }
  }
  CHECK_FALSE(k->lib.stuck());
}

namespace {

// The CUDA backend's calls as cuda_backend.cpp makes them, each kernel launched on the host
// through the compiled kernels.cu, on CPU memory; products stay the CPU's (cuBLAS is not here).
// Handed to the ops through the trace hook, so that whole ops (composites, bprops) run on them.
class HostCuda final : public Backend {
 public:
  explicit HostCuda(const Kernels& k)
      : copy_(k.get<decltype(&launch_copy)>("launch_copy")),
        fill_(k.get<decltype(&launch_fill)>("launch_fill")),
        unary_(k.get<decltype(&launch_unary)>("launch_unary")),
        binary_(k.get<decltype(&launch_binary)>("launch_binary")),
        where_(k.get<decltype(&launch_where)>("launch_where")),
        iota_(k.get<decltype(&launch_iota)>("launch_iota")),
        random_(k.get<decltype(&launch_random)>("launch_random")),
        reduce_(k.get<decltype(&launch_reduce)>("launch_reduce")),
        reduce_ws_(k.get<decltype(&reduce_workspace_bytes)>("reduce_workspace_bytes")),
        rows_(k.get<decltype(&launch_softmax_rows)>("launch_softmax_rows")),
        check_(k.get<decltype(&launch_check_indices)>("launch_check_indices")),
        index_(k.get<decltype(&launch_index)>("launch_index")),
        index_ws_(k.get<decltype(&index_workspace_bytes)>("index_workspace_bytes")),
        window_(k.get<decltype(&launch_window)>("launch_window")) {}
  Backend& cpu = cpu_backend();
  int64_t launches = 0;

  void* allocate(size_t n) override { return cpu.allocate(n); }
  void deallocate(void* p, size_t n) override { cpu.deallocate(p, n); }
  void synchronize() override {}
  void copy_from_host(const TensorImpl& d, const void* s) override { cpu.copy_from_host(d, s); }
  void copy_to_host(void* d, const TensorImpl& s) override { cpu.copy_to_host(d, s); }
  void copy(const TensorImpl& d, const TensorImpl& s) override {
    ++launches;
    copy_(make_strided({&d, &s}), d.numel, nullptr);
  }
  void fill(const TensorImpl& d, Scalar v) override {
    ++launches;
    fill_(make_strided({&d}), d.numel, v.to_double(), v.to_int(), nullptr);
  }
  void iota(const TensorImpl& d, double start, double step) override {
    ++launches;
    iota_(d.data(), d.dtype, d.numel, start, step, nullptr);
  }
  void random(RandomKind kind, const TensorImpl& d, uint64_t seed, uint64_t offset, double a,
              double b) override {
    ++launches;
    int k = kind == RandomKind::Uniform ? 0 : kind == RandomKind::Normal ? 1 : 2;
    random_(k, d.data(), d.dtype, d.numel, seed, offset, nullptr, a, b, nullptr);
  }
  void unary(OpKind k, const TensorImpl& o, const TensorImpl& x, const OpAttrs& a) override {
    ++launches;
    unary_(k, a, make_strided({&o, &x}), o.numel, nullptr);
  }
  void binary(OpKind k, const TensorImpl& o, const TensorImpl& a, const TensorImpl& b) override {
    ++launches;
    binary_(k, make_strided({&o, &a, &b}), o.numel, nullptr);
  }
  void where(const TensorImpl& o, const TensorImpl& c, const TensorImpl& a,
             const TensorImpl& b) override {
    ++launches;
    where_(make_strided({&o, &c, &a, &b}), o.numel, nullptr);
  }
  void reduce(OpKind k, const TensorImpl& o, const TensorImpl& x, int n) override {
    ++launches;
    ReduceGeom g = make_reduce_geom(o, x, n);
    std::vector<char> ws(reduce_ws_(g) + 1);
    reduce_(k, x.dtype, x.data(), o.data(), g, ws.data(), nullptr);
  }
  bool rows_kernel = true;  // false: softmax and the rest run their composite
  bool softmax_rows() const override { return rows_kernel; }
  bool softmax_rows(OpKind kind, const TensorImpl& o, const TensorImpl& x, int n) override {
    if (!rows_kernel) return false;
    ReduceGeom g;
    if (!make_softmax_geom(kind, o, x, n, g)) return false;
    ++launches;
    rows_(kind, x.dtype, x.data(), o.data(), g, nullptr);
    return true;
  }
  void matmul(const TensorImpl& o, const TensorImpl& a, const TensorImpl& b) override {
    cpu.matmul(o, a, b);
  }
  void index(OpKind kind, const TensorImpl& o, const TensorImpl& x, int dim,
             const TensorImpl& ix) override {
    ++launches;
    const TensorImpl& target = kind == OpKind::ScatterAdd ? o : x;
    const TensorImpl& space = kind == OpKind::ScatterAdd ? x : o;
    const int64_t size = target.sizes.empty() ? 1 : target.sizes[dim];
    if (ix.numel > 0) {
      int64_t flag[2] = {0, 0};
      check_(make_strided({&ix}), ix.numel, size, flag, nullptr);
      TG_CHECK(flag[0] == 0, "{}: index {} is out of bounds for dim {} of size {}", op_name(kind),
               flag[1], dim, size);
    }
    IndexGeom g = make_index_geom(kind, o, x, dim, ix);
    std::vector<char> ws(index_ws_(kind, o.dtype, g, space.numel) + 256);
    void* w = ws.data() + (256 - reinterpret_cast<uintptr_t>(ws.data()) % 256) % 256;
    REQUIRE(index_(kind, o.dtype, o.data(), x.data(), reinterpret_cast<const int64_t*>(ix.data()),
                   g, space.numel, w, ws.size() - 256, nullptr, nullptr) == cudaSuccess);
  }
  void window(OpKind kind, const TensorImpl& o, const TensorImpl& x, const Window2d& w,
              const TensorImpl* indices) override {
    ++launches;
    window_(kind, o.dtype, o.data(), x.data(),
            indices != nullptr ? reinterpret_cast<int64_t*>(indices->data()) : nullptr,
            make_window_geom(kind, o, x, w), nullptr);
  }

 private:
  decltype(&launch_copy) copy_;
  decltype(&launch_fill) fill_;
  decltype(&launch_unary) unary_;
  decltype(&launch_binary) binary_;
  decltype(&launch_where) where_;
  decltype(&launch_iota) iota_;
  decltype(&launch_random) random_;
  decltype(&launch_reduce) reduce_;
  decltype(&reduce_workspace_bytes) reduce_ws_;
  decltype(&launch_softmax_rows) rows_;
  decltype(&launch_check_indices) check_;
  decltype(&launch_index) index_;
  decltype(&index_workspace_bytes) index_ws_;
  decltype(&launch_window) window_;
};

struct HostCudaHook final : TraceHook {
  explicit HostCudaHook(const Kernels& k) : be(k) {}
  HostCuda be;
  Backend& backend(Device) override { return be; }
  void on_allocate(const std::shared_ptr<Storage>&) override {}
};

// f() with every backend call of the ops going to `hook`'s backend.
template <class F>
auto through(HostCudaHook& hook, F f) {
  struct Set {
    explicit Set(HostCudaHook& h) { t_trace_hook = &h; }
    ~Set() { t_trace_hook = nullptr; }
  } set(hook);
  return f();
}

bool close(const Tensor& got, const Tensor& want, double tol) {
  if (got.shape() != want.shape() || got.dtype() != want.dtype()) return false;
  auto a = got.to_vector<double>(), b = want.to_vector<double>();
  for (size_t i = 0; i < a.size(); ++i) {
    if ((std::isnan(a[i]) && std::isnan(b[i])) || a[i] == b[i]) continue;
    if (!(std::abs(a[i] - b[i]) <= tol * (1 + std::abs(b[i])))) return false;
  }
  return true;
}

}  // namespace

TEST_CASE("cuda on the host: every op-table sample, forward and gradient, gives the CPU's values") {
  // test_cuda.cpp's first cases, with the GPU's kernels run here: each sample's op (composites
  // and bprops included) with every backend call on the compiled kernels.cu, against the CPU.
  const Kernels* k = host_kernels();
  if (k == nullptr) return;
  HostCudaHook hook(*k);
  int checked = 0, gradients = 0;
  for (const auto& row : tgtest::op_table()) {
    for (DType dt : {kF32, kF64}) {
      const double tol = dt == kF32 ? 1e-4 : 1e-10;
      for (const auto& s : row.samples(dt)) {
        CAPTURE(row.op);
        CAPTURE(s.label);
        CAPTURE(dtype_name(dt));
        Tensor want = s.op(s.inputs);
        Tensor got;
        REQUIRE_NOTHROW(got = through(hook, [&] { return s.op(s.inputs); }));
        CHECK_MESSAGE(close(got, want, tol), row.op << " [" << s.label << "]");
        ++checked;
        if (dt != kF64 || !s.differentiable) continue;
        // The gradient of Σ v·op(x), through the kernels, against the CPU's.
        std::vector<Tensor> x, wrt;
        for (const Tensor& t : s.inputs) {
          x.push_back(is_floating(t.dtype()) ? t.detach().requires_grad_() : t);
          if (is_floating(t.dtype())) wrt.push_back(x.back());
        }
        if (wrt.empty()) continue;
        auto grads = [&] {
          Tensor out = s.op(x);
          if (out.dtype() != kF64 || !out.requires_grad()) return std::vector<Tensor>{};
          Tensor v = sin(arange(out.numel(), {.dtype = kF64})).reshape(out.shape());
          return grad({(out * v).sum()}, wrt, {.allow_unused = true});
        };
        std::vector<Tensor> gw = grads(), gg = through(hook, grads);
        REQUIRE(gw.size() == gg.size());
        for (size_t i = 0; i < gw.size(); ++i) {
          REQUIRE(gw[i].defined() == gg[i].defined());
          if (gw[i].defined())
            CHECK_MESSAGE(close(gg[i], gw[i], 1e-9), row.op << " [" << s.label << "] grad " << i);
        }
        ++gradients;
      }
    }
  }
  CHECK(checked > 300);
  CHECK(gradients > 100);
  CHECK(hook.be.launches > 1000);
  CHECK_FALSE(k->lib.stuck());
}

TEST_CASE("cuda on the host: the softmax kernel gives its composite's bits") {
  // Note [Softmax rows]: a traced graph records the composite, and FastCompile promises replays
  // bitwise equal to eager runs; on CUDA eager runs take the kernel. So the kernel must give the
  // composite's bits, with both on CUDA's kernels: checked here with both on kernels.cu.
  const Kernels* k = host_kernels();
  if (k == nullptr) return;
  HostCudaHook hook(*k);
  manual_seed(21);
  const Shape shapes[] = {{64, 10}, {5, 1000}, {3, 2500}, {2, 7, 33}, {9, 1}};
  for (DType dt : {kF32, kF64}) {
    for (const Shape& shape : shapes) {
      Tensor x = randn(shape, {.dtype = dt}) * 5;
      if (shape[0] > 2) x.select(0, 2).fill_(-std::numeric_limits<double>::infinity());
      Tensor xt = randn(shape, {.dtype = dt}).transpose(0, -1).contiguous().transpose(0, -1);
      for (const Tensor& in : {x, xt}) {
        for (int which = 0; which < 3; ++which) {
          CAPTURE(which);
          CAPTURE(dtype_name(dt));
          CAPTURE(shape[0]);
          auto f = [&] {
            return which == 0   ? softmax(in, -1)
                   : which == 1 ? log_softmax(in, -1)
                                : logsumexp(in, {-1});
          };
          hook.be.rows_kernel = true;
          const int64_t before = hook.be.launches;
          Tensor kernel = through(hook, f);
          const int64_t kernel_launches = hook.be.launches - before;
          hook.be.rows_kernel = false;
          Tensor composite = through(hook, f);
          const int64_t composite_launches = hook.be.launches - before - kernel_launches;
          CHECK(kernel_launches < composite_launches);
          auto a = kernel.to(kF64).to_vector<double>(), b = composite.to(kF64).to_vector<double>();
          CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0);
        }
      }
    }
  }
  CHECK_FALSE(k->lib.stuck());
}

TEST_CASE("cuda on the host: a generated fused sum gives its reference's bits") {
  // Note [Generated fused sums]: on CUDA the reference is the group's generated kernel into a
  // temporary, then reduce()'s kernel over it; the generated sum folds in reduce's order, so the
  // two give the same bits. Both run here: the generated kernels compiled for the host, and
  // kernels.cu's reduction.
  const Kernels* k = host_kernels();
  if (k == nullptr) return;
  auto reduce = k->get<decltype(&launch_reduce)>("launch_reduce");
  auto workspace = k->get<decltype(&reduce_workspace_bytes)>("reduce_workspace_bytes");
  std::mt19937 rng(31);
  const std::vector<OpKind> un = {OpKind::Exp, OpKind::Tanh, OpKind::Neg, OpKind::Sigmoid,
                                  OpKind::Abs};
  const std::vector<OpKind> bin = {OpKind::Add, OpKind::Sub, OpKind::Mul, OpKind::Maximum};
  const std::vector<Shape> shapes = {{64, 10}, {7, 3, 40}, {3, 3000}, {5, 6, 41}, {33, 1024}};
  struct Case {
    std::vector<FusedStep> steps;
    std::vector<Tensor> in;
    Tensor sum, temp;
    std::vector<int64_t> sum_params, temp_params;
    int nreduced = 1;
  };
  std::vector<Case> cases;
  std::vector<std::string> sources;
  for (int trial = 0; trial < 20; ++trial) {
    const DType dt = trial % 2 ? kF64 : kF32;
    const Shape& shape = shapes[static_cast<size_t>(trial / 2) % shapes.size()];
    Case c;
    c.nreduced = shape.size() == 3 && trial % 4 >= 2 ? 2 : 1;
    for (int j = 0; j < 3; ++j) c.in.push_back(tgtest::random_sum_input(rng, shape, dt));
    c.steps = tgtest::random_steps(rng, 3, 6, un, bin, dt);
    Shape kept(shape.size() - static_cast<size_t>(c.nreduced));
    for (size_t d = 0; d < kept.size(); ++d) kept[d] = shape[d];
    c.sum = empty(kept, {.dtype = dt});
    c.temp = empty(shape, {.dtype = dt});
    std::vector<const TensorImpl*> in;
    std::vector<DType> dts;
    for (const Tensor& t : c.in) {
      in.push_back(t.impl());
      dts.push_back(dt);
    }
    const int lanes = fused_sum_lanes(c.sum.numel(), c.temp.numel() / c.sum.numel());
    REQUIRE(lanes > 0);
    int nkept = 0, nred = 0, ndim = 0;
    c.sum_params = fused_sum_params(I(c.sum), in.data(), in.size(), c.nreduced, lanes, nkept, nred);
    c.temp_params = fused_params(I(c.temp), in.data(), in.size(), ndim);
    sources.push_back(*fused_sum_source(c.steps, dts, dt, nkept, nred));
    sources.push_back(*fused_source(c.steps, dts, dt, ndim));
    cases.push_back(std::move(c));
  }
  tghost::Library gen;
  if (!tghost::build_generated(sources, kFusedKernelName, gen)) return;
  for (size_t i = 0; i < cases.size(); ++i) {
    Case& c = cases[i];
    CAPTURE(i);
    // As the backend launches them: 256 threads, enough blocks to cover the rows or elements.
    const int64_t lanes = c.sum_params[2], rows_per_block = 256 / lanes;
    gen.get<tghost::GeneratedRun>(fmt::format("tg_run_{}", 2 * i))(
        c.sum_params.data(),
        static_cast<unsigned>((c.sum.numel() + rows_per_block - 1) / rows_per_block), 256);
    gen.get<tghost::GeneratedRun>(fmt::format("tg_run_{}", 2 * i + 1))(
        c.temp_params.data(),
        static_cast<unsigned>(std::min<int64_t>((c.temp.numel() + 255) / 256, 8)), 256);
    Tensor want = empty_like(c.sum);
    ReduceGeom g = make_reduce_geom(I(want), I(c.temp), c.nreduced);
    std::vector<char> ws(workspace(g) + 1);
    reduce(OpKind::Sum, c.temp.dtype(), D(c.temp), D(want), g, ws.data(), nullptr);
    auto a = c.sum.to(kF64).to_vector<double>(), b = want.to(kF64).to_vector<double>();
    CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0);
  }
  CHECK_FALSE(gen.stuck());
  CHECK_FALSE(k->lib.stuck());
}

TEST_CASE(
    "cuda on the host: a race between threads shows when they run in reverse or shuffled; shared "
    "memory starts as garbage") {
  // TGEMU_THREAD_ORDER=reverse (host_cuda_source.h) runs a block's threads, and a grid's blocks,
  // last first; the emulated suite runs that way too (tests/CMakeLists.txt). Here the mechanism:
  // each thread writes its slot of shared memory and reads its neighbour's, with and without the
  // __syncthreads between. With it, both orders agree; without it, the result depends on which
  // thread ran first, as on a GPU, and the two orders disagree.
  std::string unit = std::string(tghost::kRuntime) + R"(
template <bool kSync>
__global__ void neighbour(int* out) {
  __shared__ int slot[64];
  slot[threadIdx.x] = static_cast<int>(blockIdx.x * 100 + threadIdx.x);
  if (kSync) __syncthreads();
  out[blockIdx.x * 64 + threadIdx.x] = slot[(threadIdx.x + 1) % 64];
}
// A block reading what the block after it wrote, in the same launch.
__global__ void next_block(int* flags, int* out) {
  flags[blockIdx.x] = 1;
  out[blockIdx.x] = blockIdx.x + 1 < gridDim.x ? flags[blockIdx.x + 1] : 1;
}
// Shared memory read before the block wrote it: garbage on a GPU, 0xFF bytes here in every
// block (not what the block before left), a template kernel's arrays too.
template <class T>
__global__ void stale(T* out) {
  __shared__ T left[64];
  out[blockIdx.x * 64 + threadIdx.x] = left[threadIdx.x];
  left[threadIdx.x] = 7;
}
// Thread 0 publishes a value through shared memory for every thread to read, three times; its
// warp agrees on it (a shuffle) before it writes. Without the second barrier, thread 0 may write
// the next value before another warp read this one: only a warp running ahead shows it.
template <bool kSync>
__global__ void publish(int* out) {
  __shared__ int value;
  int sum = 0;
  for (int round = 0; round < 3; ++round) {
    const int mine = __shfl_sync(0xffffffffu, (round + 1) * 10, 0);
    if (threadIdx.x == 0) value = mine;
    __syncthreads();
    sum += value;
    if (kSync) __syncthreads();
  }
  out[threadIdx.x] = sum;
}
extern "C" __attribute__((visibility("default"))) void run(int which, int* a, int* b) {
  if (which == 0) tg_host_launch(dim3(2), dim3(64), [&] { neighbour<true>(a); });
  if (which == 1) tg_host_launch(dim3(2), dim3(64), [&] { neighbour<false>(a); });
  if (which == 2) tg_host_launch(dim3(4), dim3(1), [&] { next_block(a, b); });
  if (which == 3) tg_host_launch(dim3(2), dim3(64), [&] { stale<int>(a); });
  if (which == 4) tg_host_launch(dim3(1), dim3(128), [&] { publish<true>(a); });
  if (which == 5) tg_host_launch(dim3(1), dim3(128), [&] { publish<false>(a); });
}
)";
  tghost::Library lib;
  if (!tghost::build(unit, "-O0 -isystem " + tghost::cuda_include(), lib)) return;
  auto run = lib.get<void (*)(int, int*, int*)>("run");
  struct Order {  // the environment as it was, afterwards
    const char* was = std::getenv("TGEMU_THREAD_ORDER");
    std::string value = was != nullptr ? was : "";
    ~Order() {
      if (was != nullptr)
        setenv("TGEMU_THREAD_ORDER", value.c_str(), 1);
      else
        unsetenv("TGEMU_THREAD_ORDER");
    }
  } order;
  auto outputs = [&](int which, const char* how) {
    if (how != nullptr)
      setenv("TGEMU_THREAD_ORDER", how, 1);
    else
      unsetenv("TGEMU_THREAD_ORDER");
    std::vector<int> a(128, 0), b(4, 0);
    run(which, a.data(), b.data());
    return which == 2 ? b : a;
  };
  const std::vector<int> synced = outputs(0, nullptr);
  for (int t = 0; t < 128; ++t) CHECK(synced[t] == (t / 64) * 100 + (t + 1) % 64);
  CHECK(outputs(0, "reverse") == synced);
  CHECK(outputs(1, nullptr) != outputs(1, "reverse"));
  CHECK(outputs(2, nullptr) != outputs(2, "reverse"));
  CHECK(outputs(3, nullptr) == std::vector<int>(128, -1));
  // Shuffled ("shuffle:S"): the synced kernel agrees whatever the seed; the racy ones give
  // results neither fixed order gives, each seed its own, the same at each run of one seed.
  std::vector<std::vector<int>> racy;
  for (const char* how : {"shuffle:1", "shuffle:2", "shuffle:3", "shuffle"}) {
    CAPTURE(how);
    CHECK(outputs(0, how) == synced);
    racy.push_back(outputs(1, how));
    CHECK(racy.back() != outputs(1, nullptr));
    CHECK(racy.back() != outputs(1, "reverse"));
    CHECK(outputs(3, how) == std::vector<int>(128, -1));
  }
  CHECK(racy[0] != racy[1]);
  CHECK(racy[1] != racy[2]);
  CHECK(outputs(1, "shuffle:2") == racy[1]);
  CHECK(outputs(1, "shuffle:1") == racy[3]);  // 1 where the seed is left out

  // The blocks too: over a grid of 4, some seed runs block 1 before block 2.
  bool other = false;
  for (const char* how : {"shuffle:1", "shuffle:2", "shuffle:3", "shuffle:4", "shuffle:5"})
    other = other ||
            (outputs(2, how) != outputs(2, nullptr) && outputs(2, how) != outputs(2, "reverse"));
  CHECK(other);
  // A write before another warp's read: every order agrees with the barrier; without it, the
  // fixed orders happen to give the right sums (each warp reads before thread 0's warp moves
  // on), and some drawn orders do not.
  const std::vector<int> sums(128, 60);
  for (const char* how : {(const char*)nullptr, "reverse", "shuffle:1", "shuffle:2", "shuffle:3"})
    CHECK(outputs(4, how) == sums);
  CHECK(outputs(5, nullptr) == sums);
  CHECK(outputs(5, "reverse") == sums);
  bool seen = false;
  for (const char* how : {"shuffle:1", "shuffle:2", "shuffle:3", "shuffle:4"})
    seen = seen || outputs(5, how) != sums;
  CHECK(seen);
  CHECK_FALSE(lib.stuck());
}
