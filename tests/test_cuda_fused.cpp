// Generated CUDA kernels for fused groups (Note [Generated fused kernels]): the source the
// generator prints, NVRTC compiling it for sm_90, and the elementwise kernels compiled for the
// host and run here against the reference. These need NVRTC (and the host's compiler), not a
// GPU, so they run on a machine with the CUDA toolkit and no GPU; running the kernels on a GPU
// is in test_cuda.cpp's fused-group case. Built only with the CUDA backend.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include "backend/backend.h"
#include "backend/cuda/fused_source.h"
#include "fused_steps.h"
#include "host_cuda.h"

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

namespace {

namespace fs = std::filesystem;

// A directory of its own for the test, removed at its end; the environment's kernel cache
// setting restored ("off" in the test runner).
struct CacheDir {
  fs::path dir;
  std::string before;
  CacheDir() {
    std::random_device rd;
    dir = fs::temp_directory_path() /
          ("tg_kernels_" + std::to_string(getpid()) + "_" + std::to_string(rd()));
    const char* b = std::getenv("TAPEGRAD_KERNEL_CACHE");
    before = b == nullptr ? "" : b;
  }
  ~CacheDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
    if (before.empty())
      unsetenv("TAPEGRAD_KERNEL_CACHE");
    else
      setenv("TAPEGRAD_KERNEL_CACHE", before.c_str(), 1);
  }
};

std::string read_all(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void write_all(const fs::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f << bytes;
}

}  // namespace

TEST_CASE("cuda fused: a cached kernel file reads back only whole and only for its own source") {
  CacheDir tmp;
  // Where the cache is: the variable, else XDG_CACHE_HOME, else HOME; "off" for none.
  setenv("TAPEGRAD_KERNEL_CACHE", "/some/where", 1);
  CHECK(kernel_cache_dir() == "/some/where");
  setenv("TAPEGRAD_KERNEL_CACHE", "off", 1);
  CHECK(kernel_cache_dir().empty());
  unsetenv("TAPEGRAD_KERNEL_CACHE");
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  const std::string xdg_before = xdg == nullptr ? "" : xdg;
  setenv("XDG_CACHE_HOME", "/x/cache", 1);
  CHECK(kernel_cache_dir() == "/x/cache/tapegrad/kernels");
  unsetenv("XDG_CACHE_HOME");
  if (const char* home = std::getenv("HOME"))
    CHECK(kernel_cache_dir() == std::string(home) + "/.cache/tapegrad/kernels");
  if (!xdg_before.empty()) setenv("XDG_CACHE_HOME", xdg_before.c_str(), 1);

  const std::string dir = tmp.dir.string() + "/nested/kernels";  // made on the first store
  const std::string src = "// kernel A\n", other = "// kernel B\n";
  const std::string cubin = std::string(
                                "\x7f"
                                "ELF") +
                            std::string(300, 'k');
  const std::string path = kernel_cache_path(dir, src, 90);
  CHECK(path != kernel_cache_path(dir, other, 90));
  CHECK(path != kernel_cache_path(dir, src, 100));        // another architecture, another file
  CHECK_FALSE(load_cached_cubin(path, src).has_value());  // nothing there yet
  REQUIRE(store_cached_cubin(path, src, cubin));
  CHECK(load_cached_cubin(path, src) == cubin);
  // Only for the source it holds: a file another source's name points at is not used.
  CHECK_FALSE(load_cached_cubin(path, other).has_value());
  // Cut short anywhere, it does not read back.
  const std::string whole = read_all(path);
  int cut_rejected = 0, cuts = 0;
  for (size_t len = 0; len < whole.size(); len += 7) {
    write_all(path, whole.substr(0, len));
    ++cuts;
    cut_rejected += !load_cached_cubin(path, src).has_value();
  }
  CHECK(cut_rejected == cuts);
  // A longer file, another format, a cubin that is no ELF image: none read back.
  write_all(path, whole + "x");
  CHECK_FALSE(load_cached_cubin(path, src).has_value());
  write_all(path, "P" + whole.substr(1));
  CHECK_FALSE(load_cached_cubin(path, src).has_value());
  REQUIRE(store_cached_cubin(path, src, std::string(304, 'n')));
  CHECK_FALSE(load_cached_cubin(path, src).has_value());
  // No temporary file is left behind.
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir)) files += e.is_regular_file();
  CHECK(files == 1);
  // A directory that cannot be made (a file stands in its way): false, no exception.
  write_all(tmp.dir / "plain_file", "x");
  CHECK_FALSE(store_cached_cubin((tmp.dir / "plain_file" / "k.cubin").string(), src, cubin));
}

TEST_CASE("cuda fused: NVRTC's cubins are kept on disk and used by the next process") {
  if (!have_nvrtc()) return;
  CacheDir tmp;
  setenv("TAPEGRAD_KERNEL_CACHE", tmp.dir.c_str(), 1);
  // Sources this process has not compiled (its own cache in memory is by source).
  std::random_device rd;
  const std::string nonce = "// " + std::to_string(rd()) + std::to_string(rd()) + "\n";
  std::vector<FusedStep> steps = {binary(OpKind::Mul, kF32, -1, -2), unary(OpKind::Tanh, kF32, 0)};
  std::vector<DType> in = {kF32, kF32};
  auto body = fused_source(steps, in, kF32, 1);
  REQUIRE(body.has_value());
  // Compiled, then found in its file.
  const std::string a = nonce + "// a\n" + *body;
  const std::string& bin = nvrtc_compile(a, kArch);
  CHECK(is_cubin(bin));
  CHECK(load_cached_cubin(kernel_cache_path(tmp.dir.string(), a, kArch), a) == bin);
  // A file already there is used as it is, without NVRTC (a stand-in cubin shows it).
  const std::string b = nonce + "// b\n" + *body;
  const std::string stand_in = std::string(
                                   "\x7f"
                                   "ELF") +
                               "stand-in";
  REQUIRE(store_cached_cubin(kernel_cache_path(tmp.dir.string(), b, kArch), b, stand_in));
  CHECK(nvrtc_compile(b, kArch) == stand_in);
  // A damaged file is compiled again and replaced.
  const std::string c = nonce + "// c\n" + *body;
  const std::string c_path = kernel_cache_path(tmp.dir.string(), c, kArch);
  write_all(c_path, "tapegrad kernel 1\n\x05");
  const std::string& c_bin = nvrtc_compile(c, kArch);
  CHECK(is_cubin(c_bin));
  CHECK(load_cached_cubin(c_path, c) == c_bin);
}

namespace {

// Operand k's byte offset at (kept row, reduced position j), decoded from a fused sum's parameter
// block the way the generated kernel does it.
int64_t sum_offset(const std::vector<int64_t>& w, int nkept, int nred, int nin, int k, int64_t row,
                   int64_t j) {
  const size_t ks = 3, rs = ks + nkept, kst = rs + nred;
  const size_t rst = kst + static_cast<size_t>(std::max(nin, 1)) * nkept;
  int64_t off = 0;
  for (int d = 0; d < nkept; ++d) {
    off += (row % w[ks + d]) * w[kst + static_cast<size_t>(k) * nkept + d];
    row /= w[ks + d];
  }
  for (int d = 0; d < nred; ++d) {
    off += (j % w[rs + d]) * w[rst + static_cast<size_t>(k) * nred + d];
    j /= w[rs + d];
  }
  return off;
}

}  // namespace

TEST_CASE("cuda fused sums: rows of a warp or a block, and merged dims reach every element") {
  // The lanes follow the reduction plan of the reference's temporary (Note [Generated fused
  // sums]): a warp for rows up to 1,024, a block for longer ones, none where rows are cut into
  // pieces.
  CHECK(fused_sum_lanes(60, 10) == 32);
  CHECK(fused_sum_lanes(1, 1024) == 32);
  CHECK(fused_sum_lanes(3, 5000) == 256);
  CHECK(fused_sum_lanes(2, 70000) == 0);
  CHECK(fused_sum_lanes(1, 70000) == 0);
  CHECK(fused_sum_lanes(600, 70000) == 256);
  CHECK(fused_sum_lanes(0, 10) == 0);
  // The parameter block of random views over 3 or 4 dims, 1 or 2 of them reduced: for every row
  // and position, each input's offset is its own element's.
  std::mt19937 rng(21);
  int checked = 0;
  for (int trial = 0; trial < 60; ++trial) {
    const int nd = 3 + static_cast<int>(rng() % 2), nreduced = 1 + static_cast<int>(rng() % 2);
    Shape shape;
    for (int d = 0; d < nd; ++d) shape.push_back(1 + static_cast<int64_t>(rng() % 4));
    std::vector<Tensor> views;
    for (int k = 0; k < 3; ++k) {
      Tensor t;
      switch (rng() % 3) {
        case 0:
          t = zeros(shape, {.dtype = k == 1 ? kF64 : kF32});
          break;
        case 1: {  // broadcast along dim 1
          Shape one = shape;
          one[1] = 1;
          t = zeros(one, {.dtype = k == 1 ? kF64 : kF32}).expand(shape);
          break;
        }
        default: {  // dims 0 and last swapped in memory
          Shape swapped = shape;
          std::swap(swapped[0], swapped[nd - 1]);
          t = zeros(swapped, {.dtype = k == 1 ? kF64 : kF32}).transpose(0, nd - 1);
        }
      }
      views.push_back(t);
    }
    Shape kept(shape.begin(), shape.end() - nreduced);
    Tensor out = zeros(kept);
    std::vector<const TensorImpl*> in;
    for (auto& v : views) in.push_back(v.impl());
    int nkept = 0, nred = 0;
    std::vector<int64_t> w =
        fused_sum_params(*out.impl(), in.data(), in.size(), nreduced, 32, nkept, nred);
    REQUIRE(nkept >= 1);
    REQUIRE(nred >= 1);
    int64_t count = 1;
    for (int d = nd - nreduced; d < nd; ++d) count *= shape[d];
    CHECK(w[0] == out.numel());
    CHECK(w[1] == count);
    CHECK(w[2] == 32);
    CHECK(w.size() == 3 + nkept + nred + 3 * (nkept + nred) + 4);
    for (int64_t row = 0; row < out.numel(); ++row)
      for (int64_t j = 0; j < count; ++j) {
        // The element's coordinates: row-major over the kept dims, then over the reduced ones.
        Shape idx(nd, 0);
        int64_t r = row, q = j;
        for (int d = nd - nreduced - 1; d >= 0; --d) idx[d] = r % shape[d], r /= shape[d];
        for (int d = nd - 1; d >= nd - nreduced; --d) idx[d] = q % shape[d], q /= shape[d];
        for (int k = 0; k < 3; ++k) {
          int64_t want = 0;
          for (int d = 0; d < nd; ++d) want += idx[d] * views[k].strides()[d];
          want *= views[k].dtype() == kF64 ? 8 : 4;
          REQUIRE(sum_offset(w, nkept, nred, 3, k, row, j) == want);
          ++checked;
        }
      }
  }
  CHECK(checked > 1000);
}

TEST_CASE("cuda fused sums: the generated kernels compile with NVRTC for sm_90") {
  std::vector<FusedStep> steps = {binary(OpKind::Sub, kF32, -1, -2), unary(OpKind::Exp, kF32, 0)};
  std::vector<DType> in = {kF32, kF32};
  auto src = fused_sum_source(steps, in, kF32, 1, 1);
  REQUIRE(src.has_value());
  CHECK(src->find("double acc = -0.0;") != std::string::npos);
  CHECK(src->find("__shfl_down_sync") != std::string::npos);
  CHECK(src->find("long long kept_strides[2][1];") != std::string::npos);
  CHECK(src->find("acc += (double)s1;") != std::string::npos);
  CHECK_FALSE(fused_sum_source(steps, in, kF64, 1, 1).has_value());  // out is not the value
  CHECK_FALSE(fused_sum_source(steps, in, kF32, 0, 1).has_value());
  if (!have_nvrtc()) return;
  CHECK(is_cubin(nvrtc_compile(*src, kArch)));
  // LayerNorm's Σ(x - mean)² in f64 over 3 kept and 2 reduced dims, and random groups.
  std::vector<FusedStep> sq = {binary(OpKind::Sub, kF64, -1, -2), binary(OpKind::Mul, kF64, 0, 0)};
  std::vector<DType> in64 = {kF64, kF64};
  auto src64 = fused_sum_source(sq, in64, kF64, 3, 2);
  REQUIRE(src64.has_value());
  CHECK(is_cubin(nvrtc_compile(*src64, kArch)));
  std::mt19937 rng(4);
  const std::vector<OpKind> un = {OpKind::Exp, OpKind::Tanh, OpKind::Neg, OpKind::Gelu};
  const std::vector<OpKind> bin = {OpKind::Add, OpKind::Mul, OpKind::Maximum};
  for (int trial = 0; trial < 3; ++trial) {
    std::vector<FusedStep> rs = tgtest::random_steps(rng, 3, 6, un, bin, kF32);
    std::vector<DType> in3(3, kF32);
    auto r = fused_sum_source(rs, in3, kF32, 1 + trial, 1 + trial % 2);
    REQUIRE(r.has_value());
    CHECK(is_cubin(nvrtc_compile(*r, kArch)));
  }
}

namespace {

bool compile_for_host(const std::vector<std::string>& sources, tghost::Library& lib) {
  return tghost::build_generated(sources, kFusedKernelName, lib);
}

using HostRun = void (*)(const void* params, unsigned grid, unsigned block);

// Values of dtype dt for shape: normals with zeros, infinities, NaN and large values among them
// (floats); small integers with zero and the type's extremes (integers); both bools.
Tensor test_values(DType dt, const Shape& shape, std::mt19937& rng) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<double> v(static_cast<size_t>(n));
  std::normal_distribution<double> normal(0.0, 2.0);
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<double> special_f = {0.0, -0.0, inf, -inf, std::nan(""), 1e30, -1e30, 3e9, 0.5};
  const std::vector<double> special_i32 = {0, -1, 2147483647.0, -2147483648.0, 7};
  for (auto& x : v) {
    unsigned r = rng() % 16;
    if (dt == kF32 || dt == kF64)
      x = r < 2 ? special_f[rng() % special_f.size()] : normal(rng);
    else if (dt == kBool)
      x = static_cast<double>(rng() % 2);
    else
      x = r < 2 ? special_i32[rng() % special_i32.size()]
                : static_cast<double>(static_cast<int>(rng() % 19) - 9);
  }
  if (dt == kI64) {  // beyond f64's exact integers: built from i64 values
    std::vector<int64_t> w(v.size());
    for (size_t i = 0; i < v.size(); ++i)
      w[i] = rng() % 23 == 0 ? std::numeric_limits<int64_t>::max() - static_cast<int64_t>(rng() % 3)
                             : static_cast<int64_t>(v[i]);
    return tensor(w, shape);
  }
  return tensor(v, shape, {.dtype = kF64}).to(dt);
}

// Within a few ulps for floats (the host's libm against the CPU backend's), NaN where NaN;
// exactly for integers and bools.
bool agree(const Tensor& got, const Tensor& want) {
  const bool fp = want.dtype() == kF32 || want.dtype() == kF64;
  const double tol = want.dtype() == kF32 ? 4e-6 : 1e-13;
  if (!fp) return got.to(kI64).to_vector<int64_t>() == want.to(kI64).to_vector<int64_t>();
  auto a = got.to_vector<double>(), b = want.to_vector<double>();
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) && std::isnan(b[i])) continue;
    if (a[i] == b[i]) continue;
    if (!(std::abs(a[i] - b[i]) <= tol * std::max(1.0, std::abs(b[i])))) {
      MESSAGE("element " << i << ": " << a[i] << " against " << b[i]);
      return false;
    }
  }
  return true;
}

Shape reversed(const Shape& s) {
  Shape r(s.size());
  for (size_t d = 0; d < s.size(); ++d) r[d] = s[s.size() - 1 - d];
  return r;
}

struct HostCase {
  std::string what;
  std::vector<FusedStep> steps;
  std::vector<Tensor> inputs;  // at out's shape
  Tensor got, want;
  std::vector<int64_t> params;
};

}  // namespace

TEST_CASE("cuda fused: the generated kernels, run on the host, give the reference's values") {
  // Note [CUDA code on the host] (host_cuda_source.h): one kernel per op and dtype (the op's step
  // last, so that its value is the one stored), conversions between every pair of dtypes, and
  // random groups over contiguous, broadcast and transposed views of 1 to 3 merged dims.
  std::mt19937 rng(17);
  std::vector<HostCase> cases;
  const Shape shape{5, 37};
  auto add = [&](std::string what, std::vector<FusedStep> steps, std::vector<Tensor> inputs,
                 bool strided_out) {
    HostCase c;
    c.what = std::move(what);
    c.steps = std::move(steps);
    c.inputs = std::move(inputs);
    const Shape& sh = c.inputs[0].shape();
    const DType out = c.steps.back().dtype;
    Shape flipped = reversed(sh);
    Shape reverse(sh.size());
    for (size_t d = 0; d < sh.size(); ++d) reverse[d] = static_cast<int64_t>(sh.size() - 1 - d);
    // A strided output: the transpose of a contiguous tensor.
    c.got =
        strided_out ? empty(flipped, {.dtype = out}).permute(reverse) : empty(sh, {.dtype = out});
    c.want = empty(sh, {.dtype = out});
    cases.push_back(std::move(c));
  };
  const std::vector<DType> dtypes = {kF32, kF64, kI32, kI64, kBool};
  for (DType dt : dtypes) {
    const bool fp = dt == kF32 || dt == kF64;
    Tensor x = test_values(dt, shape, rng), y = test_values(dt, shape, rng);
    Tensor row = test_values(dt, {shape[1]}, rng).expand(shape);  // broadcast: a second dim
    if (dt != kBool) {
      for (OpKind op : kUnary) {
        if (!fp && op != OpKind::Neg && op != OpKind::Abs && op != OpKind::Sign &&
            op != OpKind::Relu && op != OpKind::PowScalar && op != OpKind::Clamp)
          continue;
        std::vector<OpAttrs> attrs = {{}};
        if (op == OpKind::PowScalar) attrs = {{3, 0}, {0, 0}, {-1, 0}, {0.5, 0}, {2, 0}};
        if (op == OpKind::Clamp)
          attrs = {{-std::numeric_limits<double>::infinity(), 2.5}, {-1.5, 4}, {2, 1e20}};
        for (const OpAttrs& a : attrs) {
          if (!fp && op == OpKind::PowScalar && a.a != static_cast<int64_t>(a.a)) continue;
          add(fmt::format("{} {} ({}, {})", op_name(op), dtype_name(dt), a.a, a.b),
              {unary(op, dt, -1, a)}, {x}, false);
        }
      }
    } else {
      add("logical_not bool", {unary(OpKind::LogicalNot, kBool, -1)}, {x}, false);
    }
    for (OpKind op : kArith) {
      if (dt == kBool && op == OpKind::Div) continue;
      add(fmt::format("{} {}", op_name(op), dtype_name(dt)), {binary(op, dt, -1, -2)}, {x, row},
          true);
    }
    for (OpKind op : kCompare)
      add(fmt::format("{} {}", op_name(op), dtype_name(dt)), {binary(op, kBool, -1, -2)}, {x, y},
          false);
    for (OpKind op : {OpKind::LogicalAnd, OpKind::LogicalOr})
      add(fmt::format("{} {}", op_name(op), dtype_name(dt)), {binary(op, dt, -1, -2)}, {x, y},
          false);
    FusedStep where;
    where.kind = FusedStep::Kind::Where;
    where.dtype = dt;
    where.a = -1;
    where.b = -2;
    where.c = -3;
    add(fmt::format("where {}", dtype_name(dt)), {where}, {test_values(kBool, shape, rng), x, row},
        true);
    for (DType to : dtypes) {
      FusedStep c;
      c.kind = FusedStep::Kind::Convert;
      c.dtype = to;
      c.a = -1;
      add(fmt::format("{} to {}", dtype_name(dt), dtype_name(to)), {c}, {x}, false);
    }
  }
  // Random groups: values through several steps, operands of 1 to 3 merged dims.
  const std::vector<OpKind> un = {OpKind::Exp,     OpKind::Tanh, OpKind::Relu, OpKind::Neg,
                                  OpKind::Sigmoid, OpKind::Gelu, OpKind::Abs,  OpKind::Softplus};
  const std::vector<OpKind> bin = {OpKind::Add, OpKind::Sub,     OpKind::Mul,
                                   OpKind::Div, OpKind::Maximum, OpKind::Minimum};
  for (int trial = 0; trial < 24; ++trial) {
    const DType dt = trial % 2 ? kF64 : kF32;
    const Shape sh = trial % 3 == 0 ? Shape{4, 3, 9} : Shape{6, 11};
    std::vector<Tensor> in;
    for (int k = 0; k < 3; ++k) {
      Tensor t;
      switch (rng() % 3) {
        case 0:
          t = randn(sh, {.dtype = dt});
          break;
        case 1:
          t = randn({sh.back()}, {.dtype = dt}).expand(sh);
          break;
        default: {
          t = randn(reversed(sh), {.dtype = dt});
          t = sh.size() == 3 ? t.permute({2, 1, 0}) : t.t();  // transposed
          break;
        }
      }
      in.push_back(t);
    }
    add(fmt::format("random group {} ({})", trial, dtype_name(dt)),
        tgtest::random_steps(rng, 3, 8, un, bin, dt), in, trial % 4 == 1);
  }
  std::vector<std::string> sources;
  for (HostCase& c : cases) {
    std::vector<const TensorImpl*> in;
    std::vector<DType> dts;
    for (const Tensor& t : c.inputs) {
      in.push_back(t.impl());
      dts.push_back(t.dtype());
    }
    int ndim = 0;
    c.params = fused_params(*c.got.impl(), in.data(), in.size(), ndim);
    auto src = fused_source(c.steps, dts, c.got.dtype(), ndim);
    REQUIRE_MESSAGE(src.has_value(), c.what);
    sources.push_back(*src);
    cpu_backend().Backend::fused(c.steps, *c.want.impl(), in.data(), in.size());
  }
  tghost::Library lib;
  if (!compile_for_host(sources, lib)) {
    return;  // can_build() said why
  }
  for (size_t k = 0; k < cases.size(); ++k) {
    HostCase& c = cases[k];
    CAPTURE(c.what);
    // 3 blocks of 64 threads, striding over the elements.
    lib.get<HostRun>(fmt::format("tg_run_{}", k))(c.params.data(), 3, 64);
    CHECK(agree(c.got, c.want));
  }
  CHECK_FALSE(lib.stuck());
}

TEST_CASE("cuda fused sums: the generated kernels, run on the host, give the reference's sums") {
  // Note [CUDA code on the host] (host_cuda_source.h), a block's threads as the host's threads:
  // random groups summed over rows of a warp and of a block, one or two reduced dims, over
  // broadcast, transposed and contiguous inputs, against the reference (the group into a temporary,
  // then the CPU's reduce: another order of additions, so within rounding).
  std::mt19937 rng(23);
  const std::vector<OpKind> un = {OpKind::Exp,     OpKind::Tanh, OpKind::Neg,
                                  OpKind::Sigmoid, OpKind::Abs,  OpKind::Gelu};
  const std::vector<OpKind> bin = {OpKind::Add, OpKind::Sub, OpKind::Mul, OpKind::Maximum};
  const std::vector<Shape> shapes = {{64, 10}, {7, 3, 40}, {3, 3000}, {5, 6, 41}};
  struct SumCase {
    std::vector<FusedStep> steps;
    std::vector<Tensor> inputs;
    Tensor got, want;
    std::vector<int64_t> params;
    int lanes = 0;
    std::string what;
  };
  std::vector<SumCase> cases;
  std::vector<std::string> sources;
  for (int trial = 0; trial < 16; ++trial) {
    const DType dt = trial % 2 ? kF64 : kF32;
    const Shape& shape = shapes[static_cast<size_t>(trial / 2) % shapes.size()];
    const int nreduced = shape.size() == 3 && trial % 4 >= 2 ? 2 : 1;
    SumCase c;
    std::string dims;
    for (int64_t d : shape) dims += (dims.empty() ? "" : "x") + std::to_string(d);
    c.what = fmt::format("trial {}: {} over {} dims ({})", trial, dims, nreduced, dtype_name(dt));
    for (int k = 0; k < 3; ++k) c.inputs.push_back(tgtest::random_sum_input(rng, shape, dt));
    c.steps = tgtest::random_steps(rng, 3, 6, un, bin, dt);
    Shape kept(shape.size() - static_cast<size_t>(nreduced));
    for (size_t d = 0; d < kept.size(); ++d) kept[d] = shape[d];
    c.got = full(kept, std::nan(""), {.dtype = dt});
    c.want = empty(kept, {.dtype = dt});
    std::vector<const TensorImpl*> in;
    std::vector<DType> dts;
    for (const Tensor& t : c.inputs) {
      in.push_back(t.impl());
      dts.push_back(dt);
    }
    int64_t count = c.inputs[0].numel() / c.got.numel();
    c.lanes = fused_sum_lanes(c.got.numel(), count);
    REQUIRE_MESSAGE(c.lanes > 0, c.what);
    int nkept = 0, nred = 0;
    c.params =
        fused_sum_params(*c.got.impl(), in.data(), in.size(), nreduced, c.lanes, nkept, nred);
    auto src = fused_sum_source(c.steps, dts, dt, nkept, nred);
    REQUIRE_MESSAGE(src.has_value(), c.what);
    sources.push_back(*src);
    cpu_backend().Backend::fused_sum(c.steps, *c.want.impl(), in.data(), in.size(), nreduced);
    cases.push_back(std::move(c));
  }
  tghost::Library lib;
  if (!compile_for_host(sources, lib)) {
    return;  // can_build() said why
  }
  for (size_t k = 0; k < cases.size(); ++k) {
    SumCase& c = cases[k];
    CAPTURE(c.what);
    CAPTURE(c.lanes);
    // Two blocks of the launch's 256 threads, striding over the rows.
    lib.get<HostRun>(fmt::format("tg_run_{}", k))(c.params.data(), 2, 256);
    CHECK_FALSE(lib.stuck());
    const double tol = c.want.dtype() == kF32 ? 1e-5 : 1e-12;
    auto a = c.got.to_vector<double>(), b = c.want.to_vector<double>();
    bool ok = true;
    for (size_t i = 0; i < a.size(); ++i)
      ok &= std::abs(a[i] - b[i]) <= tol * std::max(1.0, std::abs(b[i]));
    CHECK(ok);
  }
}
