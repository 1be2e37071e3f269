// CPU fused elementwise groups (Note [Elementwise fusion], lib/trace/pass_fuse.cpp): the steps run
// block by block over the output, so the values between steps stay in cache.
#include <array>
#include <cstring>
#include <memory>

#include "backend/cpu/cpu_kernels.h"
#include "backend/cpu/jit.h"
#include "backend/cpu/loops.h"
#include "backend/cpu/scalar_math.h"
#include "backend/cpu/vec_kernels.h"

namespace tg::cpu {

// Note [Blocked fused kernel]
// The output is cut into blocks of up to kBlock elements: pieces of one row when rows (the
// innermost dim after merging) are long, else runs of whole rows. Each step computes its value
// for the block into its own scratch register, so a group of k steps touches memory once per
// input and once for the output instead of about 3k times. Within a block an operand is
//   - read in place when its elements are consecutive there,
//   - one broadcast element when its stride is 0 there (a step whose operands are all broadcast
//     computes one element, and stays broadcast),
//   - gathered into scratch otherwise.
// f32 steps use the vectorized kernels of vec_kernels.h (a broadcast element through the same
// kernel with n = 1, so a value never depends on the layout it came in); other dtypes and
// comparisons use the scalar definitions. The output is written in place when it is consecutive,
// else scattered; it may alias an input through the same view, since every input's block is read
// before the block of the output is written.
namespace {

constexpr int64_t kBlock = 1024;
constexpr int kMaxFusedOperands = 64;  // the output and the inputs
constexpr size_t kMaxFusedSteps = 64;

// The operands (0: out) merged into as few dims as all of them allow, innermost first.
struct Layout {
  int nops = 0;
  int ndim = 0;
  int64_t numel = 1;
  std::array<int64_t, kMaxDims> sizes{};
  // No heap: a small group runs for a few hundred elements, where allocations would show.
  std::array<std::array<int64_t, kMaxDims>, kMaxFusedOperands> strides;  // bytes
  std::array<char*, kMaxFusedOperands> base;
  std::array<int64_t, kMaxFusedOperands> esize;
  std::array<uint8_t, kMaxFusedOperands> flat;  // consecutive over all elements
  std::array<uint8_t, kMaxFusedOperands> zero;  // one element for all

  int64_t inner() const { return ndim ? sizes[0] : 1; }
};

// `apart`: how many of the innermost dims of size > 1 must stay apart from the dims outside them
// (a fused sum's reduced dims from its kept ones); 0 lets any dims merge.
Layout make_layout(const TensorImpl& out, const TensorImpl* const* in, size_t nin, int apart = 0) {
  Layout L;
  L.nops = static_cast<int>(nin + 1);
  L.numel = out.numel;
  auto op = [&](int k) -> const TensorImpl& { return k == 0 ? out : *in[k - 1]; };
  for (int k = 0; k < L.nops; ++k) {
    L.base[k] = op(k).data();
    L.esize[k] = static_cast<int64_t>(element_size(op(k).dtype));
  }
  int nd = static_cast<int>(out.sizes.size());
  for (int d = nd - 1; d >= 0; --d) {
    if (out.sizes[d] == 1) continue;
    L.sizes[L.ndim] = out.sizes[d];
    for (int k = 0; k < L.nops; ++k) L.strides[k][L.ndim] = op(k).strides[d] * L.esize[k];
    ++L.ndim;
  }
  int w = 0;
  for (int d = 1; d < L.ndim; ++d) {
    bool merge = true;
    for (int k = 0; k < L.nops; ++k) merge &= L.strides[k][d] == L.strides[k][w] * L.sizes[w];
    merge &= d != apart;
    if (merge) {
      L.sizes[w] *= L.sizes[d];
    } else {
      ++w;
      L.sizes[w] = L.sizes[d];
      for (int k = 0; k < L.nops; ++k) L.strides[k][w] = L.strides[k][d];
    }
  }
  if (L.ndim) L.ndim = w + 1;
  for (int k = 0; k < L.nops; ++k) {
    bool flat = true, zero = true;
    int64_t expect = L.esize[k];
    for (int d = 0; d < L.ndim; ++d) {
      flat &= L.strides[k][d] == expect;
      zero &= L.strides[k][d] == 0;
      expect *= L.sizes[d];
    }
    L.flat[k] = flat;
    L.zero[k] = zero;
  }
  return L;
}

// --- one step over a block ---------------------------------------------------------------------

// Trivial on purpose: arrays of them are made per call and must cost nothing.
struct Reg {
  const char* p;
  bool vec;  // false: one element, broadcast over the block
  DType dtype;
};

template <class T>
const T* at(const Reg& r) {
  return reinterpret_cast<const T*>(r.p);
}

template <class O, class T, class F>
void zip_block(O* o, const T* a, bool av, const T* b, bool bv, int64_t n, F f) {
  if (av && bv) {
    for (int64_t i = 0; i < n; ++i) o[i] = f(a[i], b[i]);
  } else if (av) {
    const T s = *b;
    for (int64_t i = 0; i < n; ++i) o[i] = f(a[i], s);
  } else {
    const T s = *a;
    for (int64_t i = 0; i < n; ++i) o[i] = f(s, b[i]);
  }
}

// Each step's vectorized f32 kernel (null: none), looked up once per call, not once per block;
// and the group as machine code, when it has some (Note [Compiled fused groups], jit.cpp).
struct StepKernels {
  std::array<UnaryF32, kMaxFusedSteps> unary;
  std::array<BinaryF32, kMaxFusedSteps> binary;
  JitFn jit = nullptr;
  size_t nin = 0;

  // The group as code for blocks whose inputs are runs where bit k of `runs` is set.
  void compile(const std::vector<FusedStep>& steps, uint64_t runs, size_t ninputs) {
    jit = jit_fused(steps, runs, ninputs);
    nin = ninputs;
  }

  explicit StepKernels(const std::vector<FusedStep>& steps) {
    const VecKernels& vk = vec_kernels();
    for (size_t i = 0; i < steps.size(); ++i) {
      const FusedStep& s = steps[i];
      bool f32 = s.dtype == kF32;
      unary[i] = f32 && s.kind == FusedStep::Kind::Unary ? vk.unary_f32(s.op) : nullptr;
      binary[i] = f32 && s.kind == FusedStep::Kind::Binary ? vk.binary_f32(s.op) : nullptr;
    }
  }
};

// Runs step `s` (number i) for a block of n elements into `dst`; returns the value's register.
Reg run_step(const FusedStep& s, size_t i, const StepKernels& kernels, const Reg* regs,
             const Reg* inputs, char* dst, int64_t n) {
  auto operand = [&](int32_t r) -> const Reg& { return r < 0 ? inputs[-r - 1] : regs[r]; };
  switch (s.kind) {
    case FusedStep::Kind::Convert: {
      const Reg& x = operand(s.a);
      if (x.dtype == s.dtype) return x;
      int64_t m = x.vec ? n : 1;
      TG_DISPATCH_ALL(s.dtype, [&] {
        using To = T;
        To* o = reinterpret_cast<To*>(dst);
        TG_DISPATCH_ALL(x.dtype, [&] {
          const T* xi = at<T>(x);
          for (int64_t i = 0; i < m; ++i) o[i] = convert<To>(xi[i]);
        });
      });
      return {dst, x.vec, s.dtype};
    }
    case FusedStep::Kind::Unary: {
      const Reg& x = operand(s.a);
      int64_t m = x.vec ? n : 1;
      UnaryF32 fn = kernels.unary[i];
      if (fn) {
        fn(reinterpret_cast<float*>(dst), at<float>(x), m, s.attrs);
      } else {
        TG_DISPATCH_ALL(s.dtype, [&] {
          T* o = reinterpret_cast<T*>(dst);
          const T* xi = at<T>(x);
          for (int64_t i = 0; i < m; ++i) o[i] = scalar_unary(s.op, xi[i], s.attrs);
        });
      }
      return {dst, x.vec, s.dtype};
    }
    case FusedStep::Kind::Binary: {
      const Reg& a = operand(s.a);
      const Reg& b = operand(s.b);
      bool vec = a.vec || b.vec;
      int64_t m = vec ? n : 1;
      bool av = a.vec || !vec, bv = b.vec || !vec;
      BinaryF32 fn = kernels.binary[i];
      if (is_comparison(s.op)) {
        TG_DISPATCH_ALL(a.dtype, [&] {
          zip_block<bool, T>(reinterpret_cast<bool*>(dst), at<T>(a), av, at<T>(b), bv, m,
                             [&](T x, T y) { return scalar_compare(s.op, x, y); });
        });
      } else if (fn) {
        fn(reinterpret_cast<float*>(dst), at<float>(a), av, at<float>(b), bv, m);
      } else {
        TG_DISPATCH_ALL(s.dtype, [&] {
          zip_block<T, T>(reinterpret_cast<T*>(dst), at<T>(a), av, at<T>(b), bv, m,
                          [&](T x, T y) { return scalar_binary(s.op, x, y); });
        });
      }
      return {dst, vec, s.dtype};
    }
    case FusedStep::Kind::Where: {
      const Reg& c = operand(s.a);
      const Reg& a = operand(s.b);
      const Reg& b = operand(s.c);
      bool vec = c.vec || a.vec || b.vec;
      int64_t m = vec ? n : 1;
      int64_t sc = c.vec ? 1 : 0, sa = a.vec ? 1 : 0, sb = b.vec ? 1 : 0;
      const bool* ci = at<bool>(c);
      TG_DISPATCH_ALL(s.dtype, [&] {
        T* o = reinterpret_cast<T*>(dst);
        const T* ai = at<T>(a);
        const T* bi = at<T>(b);
        for (int64_t i = 0; i < m; ++i) o[i] = ci[i * sc] ? ai[i * sa] : bi[i * sb];
      });
      return {dst, vec, s.dtype};
    }
  }
  TG_INTERNAL_ASSERT(false && "unknown fused step");
  return {dst, true, s.dtype};
}

// Copies n elements of `es` bytes between a strided run and a packed one.
void gather(char* dst, const char* src, int64_t stride, int64_t n, int64_t es) {
  if (stride == es) {
    std::memcpy(dst, src, static_cast<size_t>(n * es));
    return;
  }
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(dst + i * es, src + i * stride, static_cast<size_t>(es));
}
void scatter(char* dst, int64_t stride, const char* src, int64_t n, int64_t es) {
  if (stride == es) {
    std::memmove(dst, src, static_cast<size_t>(n * es));
    return;
  }
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(dst + i * stride, src + i * es, static_cast<size_t>(es));
}

// Byte offsets of every operand at the start of a row (a multi-index over the outer dims).
struct RowCursor {
  const Layout& L;
  std::array<int64_t, kMaxDims> idx{};
  std::array<int64_t, kMaxFusedOperands> off;

  RowCursor(const Layout& layout, int64_t row) : L(layout) {
    for (int k = 0; k < L.nops; ++k) off[k] = 0;
    for (int d = 1; d < L.ndim; ++d) {
      idx[d] = row % L.sizes[d];
      row /= L.sizes[d];
      for (int k = 0; k < L.nops; ++k) off[k] += idx[d] * L.strides[k][d];
    }
  }
  void next() {
    for (int d = 1; d < L.ndim; ++d) {
      for (int k = 0; k < L.nops; ++k) off[k] += L.strides[k][d];
      if (++idx[d] < L.sizes[d]) return;
      for (int k = 0; k < L.nops; ++k) off[k] -= idx[d] * L.strides[k][d];
      idx[d] = 0;
    }
  }
};

// Per-thread registers, kept between calls (uninitialized: every block writes before it reads).
// Registers lie kStride doubles apart: a multiple of 4 KiB would make a step's loads from one
// register wait on its stores to the next (4K aliasing), so each is 320 bytes further along.
struct Scratch {
  static constexpr size_t kStride = kBlock + 40;
  double* base;  // double: 8-byte aligned room for any dtype
  size_t nsteps, nin;
  Scratch(size_t steps, size_t inputs) : nsteps(steps), nin(inputs) {
    thread_local std::unique_ptr<double[]> buffer;
    thread_local size_t capacity = 0;
    size_t need = (steps + inputs + 1) * kStride + 8;
    if (capacity < need) {
      buffer.reset(new double[need]);
      capacity = need;
    }
    // 64-byte aligned, so vector loads and stores never split a cache line.
    auto p = reinterpret_cast<uintptr_t>(buffer.get());
    base = reinterpret_cast<double*>((p + 63) / 64 * 64);
  }
  char* reg(size_t i) { return reinterpret_cast<char*>(base + i * kStride); }
  char* in(size_t k) { return reinterpret_cast<char*>(base + (nsteps + k) * kStride); }
  char* o() { return reinterpret_cast<char*>(base + (nsteps + nin) * kStride); }
};

// Runs the steps over one block whose inputs are in `inputs`, leaving the result at `dst`.
void run_block(const std::vector<FusedStep>& steps, const StepKernels& kernels, Reg* regs,
               const Reg* inputs, Scratch& scratch, char* dst, DType out_dtype, int64_t n) {
  size_t last = steps.size() - 1;
  if (kernels.jit != nullptr) {
    // Made for this call's broadcast inputs; every step f32, so the inputs are too.
    std::array<const float*, kMaxFusedOperands> in;
    for (size_t k = 0; k < kernels.nin; ++k) in[k] = at<float>(inputs[k]);
    kernels.jit(reinterpret_cast<float*>(dst), in.data(), n, 1, nullptr);
    regs[last] = {dst, true, kF32};
    return;
  }
  for (size_t i = 0; i < steps.size(); ++i)
    regs[i] = run_step(steps[i], i, kernels, regs, inputs, i == last ? dst : scratch.reg(i), n);
  const Reg& r = regs[last];
  auto es = static_cast<int64_t>(element_size(out_dtype));
  if (!r.vec) {
    std::array<char, 8> v{};
    std::memcpy(v.data(), r.p, static_cast<size_t>(es));
    for (int64_t i = 0; i < n; ++i) std::memcpy(dst + i * es, v.data(), static_cast<size_t>(es));
  } else if (r.p != dst) {
    std::memmove(dst, r.p, static_cast<size_t>(n * es));
  }
}

// Which inputs a block reads as a run (bit k: input k; the others are one element): a block is
// a piece of a row (by_row), where an input is a run unless it is broadcast along the row, or
// whole rows, where it is a run unless it is one element for all.
uint64_t block_runs(const Layout& L, size_t nin, bool by_row) {
  uint64_t runs = 0;
  for (size_t k = 0; k < nin; ++k) {
    int op = static_cast<int>(k + 1);
    bool run = by_row ? (L.ndim ? L.strides[op][0] : L.esize[op]) != 0 : !L.zero[op];
    runs |= static_cast<uint64_t>(run) << k;
  }
  return runs;
}

// Compiled code over rows [begin, end) of a layout of at most two dims (rows the outer one),
// every operand read and written in place along the rows.
void run_rows(JitFn fn, const Layout& L, size_t nin, int64_t begin, int64_t end) {
  RowCursor cur(L, begin);
  std::array<const float*, kMaxFusedOperands> in;
  std::array<int64_t, kMaxFusedOperands> strides;
  for (int op = 0; op < L.nops; ++op) strides[op] = L.ndim == 2 ? L.strides[op][1] : 0;
  for (size_t k = 0; k < nin; ++k)
    in[k] = reinterpret_cast<const float*>(L.base[k + 1] + cur.off[k + 1]);
  fn(reinterpret_cast<float*>(L.base[0] + cur.off[0]), in.data(), L.inner(), end - begin,
     strides.data());
}

}  // namespace

void fused_kernel(const std::vector<FusedStep>& steps, const TensorImpl& out,
                  const TensorImpl* const* in, size_t nin) {
  TG_INTERNAL_ASSERT(!steps.empty() && steps.size() <= kMaxFusedSteps &&
                     nin + 1 <= kMaxFusedOperands);
  if (out.numel == 0) return;
  Layout L = make_layout(out, in, nin);
  int64_t inner = L.inner(), rows = L.numel / inner;
  // Long rows: blocks are pieces of one row. Short rows: blocks are runs of whole rows.
  bool by_row = inner >= 256;
  int64_t per_row = by_row ? (inner + kBlock - 1) / kBlock : 1;
  int64_t block_len = by_row ? (inner + per_row - 1) / per_row : inner;
  int64_t rows_per_block = by_row ? 1 : std::max<int64_t>(1, kBlock / inner);
  int64_t items = by_row ? rows * per_row : (rows + rows_per_block - 1) / rows_per_block;
  int64_t block_elems = by_row ? block_len : rows_per_block * inner;
  int64_t grain = std::max<int64_t>(1, kParallelGrain / block_elems);
  auto inner_stride = [&](int k) { return L.ndim ? L.strides[k][0] : L.esize[k]; };
  StepKernels kernels(steps);
  kernels.compile(steps, block_runs(L, nin, by_row), nin);

  // Compiled code over whole rows of at most two dims, each operand read and written in place:
  // one call for all of a thread's rows.
  bool rows_at_once = kernels.jit != nullptr && by_row && per_row == 1 && L.ndim <= 2;
  for (int op = 0; op < L.nops && rows_at_once; ++op) {
    int64_t s = inner_stride(op);
    rows_at_once = s == L.esize[op] || (op > 0 && s == 0);
  }
  parallel_for(items, grain, [&](int64_t begin, int64_t end) {
    if (rows_at_once) {
      run_rows(kernels.jit, L, nin, begin, end);
      return;
    }
    Scratch scratch(steps.size(), nin);
    std::array<Reg, kMaxFusedSteps> regs;
    std::array<Reg, kMaxFusedOperands> inputs;
    if (by_row) {
      // The cursor steps from row to row: no divisions per block.
      int64_t piece = begin % per_row;
      RowCursor cur(L, begin / per_row);
      for (int64_t item = begin; item < end; ++item) {
        int64_t col = piece * block_len;
        int64_t n = std::min(block_len, inner - col);
        for (size_t k = 0; k < nin; ++k) {
          int op = static_cast<int>(k + 1);
          int64_t s = inner_stride(op);
          const char* p = L.base[op] + cur.off[op] + col * s;
          DType dt = in[k]->dtype;
          if (s == L.esize[op] || s == 0) {
            inputs[k] = {p, s != 0, dt};
          } else {
            gather(scratch.in(k), p, s, n, L.esize[op]);
            inputs[k] = {scratch.in(k), true, dt};
          }
        }
        int64_t so = inner_stride(0);
        char* o = L.base[0] + cur.off[0] + col * so;
        bool direct = so == L.esize[0];
        run_block(steps, kernels, regs.data(), inputs.data(), scratch, direct ? o : scratch.o(),
                  out.dtype, n);
        if (!direct) scatter(o, so, scratch.o(), n, L.esize[0]);
        if (++piece == per_row) {
          piece = 0;
          cur.next();
        }
      }
      return;
    }
    for (int64_t item = begin; item < end; ++item) {
      int64_t row0 = item * rows_per_block;
      int64_t nrows = std::min(rows_per_block, rows - row0), n = nrows * inner;
      RowCursor cur(L, row0);
      bool any_gather = false;
      for (size_t k = 0; k < nin; ++k) {
        int op = static_cast<int>(k + 1);
        DType dt = in[k]->dtype;
        if (L.flat[op] || L.zero[op]) {
          inputs[k] = {L.base[op] + cur.off[op], !L.zero[op], dt};
        } else {
          inputs[k] = {scratch.in(k), true, dt};
          any_gather = true;
        }
      }
      char* o0 = L.base[0] + cur.off[0];
      if (any_gather) {
        RowCursor c = cur;
        for (int64_t r = 0; r < nrows; ++r, c.next())
          for (size_t k = 0; k < nin; ++k) {
            int op = static_cast<int>(k + 1);
            if (L.flat[op] || L.zero[op]) continue;
            gather(scratch.in(k) + r * inner * L.esize[op], L.base[op] + c.off[op],
                   inner_stride(op), inner, L.esize[op]);
          }
      }
      bool direct = L.flat[0] != 0;
      run_block(steps, kernels, regs.data(), inputs.data(), scratch, direct ? o0 : scratch.o(),
                out.dtype, n);
      if (!direct) {
        RowCursor c = cur;
        for (int64_t r = 0; r < nrows; ++r, c.next())
          scatter(L.base[0] + c.off[0], inner_stride(0), scratch.o() + r * inner * L.esize[0],
                  inner, L.esize[0]);
      }
    }
  });
}

// Note [Fused sums] (pass_fuse.cpp) on the CPU: each row of the value (the reduced dims, at most
// one block long) is computed into a register by the blocked kernel's steps and summed there by
// the same vectorized sum, in the same order, as reduce() sums a stored row: the same bits, and
// the value never leaves L1. Only f32 values of rows that merge into one run of at most kBlock;
// false hands anything else to the reference.
bool fused_sum_kernel(const std::vector<FusedStep>& steps, const TensorImpl& out,
                      const TensorImpl* const* in, size_t nin, int nreduced) {
  TG_INTERNAL_ASSERT(!steps.empty() && steps.size() <= kMaxFusedSteps &&
                     nin + 1 <= kMaxFusedOperands && nin > 0);
  const Shape& full = in[0]->sizes;
  auto nfull = static_cast<int>(full.size());
  if (steps.back().dtype != kF32 || out.dtype != kF32 || nreduced < 1 ||
      static_cast<int>(out.sizes.size()) + nreduced != nfull)
    return false;
  int64_t count = 1;
  int apart = 0;  // reduced dims of size > 1
  for (int d = nfull - nreduced; d < nfull; ++d) {
    count *= full[d];
    apart += full[d] != 1;
  }
  if (count > kBlock || count < 1 || apart < 1 || out.numel == 0) return false;
  // out seen at the value's shape: each reduced row lands on its one element.
  TensorImpl wide;
  wide.storage = out.storage;
  wide.offset = out.offset;
  wide.dtype = out.dtype;
  wide.sizes = full;
  wide.strides = out.strides;
  wide.strides.resize(full.size(), 0);
  wide.numel = in[0]->numel;
  Layout L = make_layout(wide, in, nin, apart);
  if (L.ndim < 1 || L.sizes[0] != count) return false;  // the reduced dims are not one run
  const int64_t inner = count, rows = L.numel / inner;
  const auto sum = vec_kernels().sum_f32;
  auto store = [&](char* o, const float* row) {
    double v = 0.0;  // as reduce() folds its one partial sum into a zero
    v = v + sum(row, inner);
    *reinterpret_cast<float*>(o) = static_cast<float>(v);
  };
  auto inner_stride = [&](int k) { return L.strides[k][0]; };
  // Rows of 256 or more: a block per row, a broadcast along it stays one element (as in
  // fused_kernel). Shorter rows: blocks of whole rows, operands not flat gathered row by row.
  const bool by_row = inner >= 256;
  StepKernels kernels(steps);
  kernels.compile(steps, block_runs(L, nin, by_row), nin);
  {
    // Compiled code that sums each row too, when every operand is read in place along the rows
    // (runs or single elements) and the rows are one dim: one call per thread, no row stored.
    bool in_place = L.ndim <= 2;
    for (size_t k = 0; k < nin && in_place; ++k) {
      int op = static_cast<int>(k + 1);
      in_place = inner_stride(op) == L.esize[op] || inner_stride(op) == 0;
    }
    JitFn summed = in_place ? jit_fused(steps, block_runs(L, nin, true), nin, true) : nullptr;
    if (summed != nullptr) {
      parallel_for(rows, std::max<int64_t>(1, kParallelGrain / inner),
                   [&](int64_t begin, int64_t end) { run_rows(summed, L, nin, begin, end); });
      return true;
    }
  }
  const int64_t rows_per_block = by_row ? 1 : std::max<int64_t>(1, kBlock / inner);
  const int64_t items = (rows + rows_per_block - 1) / rows_per_block;
  const int64_t grain = std::max<int64_t>(1, kParallelGrain / (rows_per_block * inner));
  parallel_for(items, grain, [&](int64_t begin, int64_t end) {
    Scratch scratch(steps.size(), nin);
    std::array<Reg, kMaxFusedSteps> regs;
    std::array<Reg, kMaxFusedOperands> inputs;
    RowCursor cur(L, begin * rows_per_block);
    for (int64_t item = begin; item < end; ++item) {
      int64_t nrows = std::min(rows_per_block, rows - item * rows_per_block);
      for (size_t k = 0; k < nin; ++k) {
        int op = static_cast<int>(k + 1);
        int64_t s = inner_stride(op);
        DType dt = in[k]->dtype;
        if (by_row ? (s == L.esize[op] || s == 0) : (L.flat[op] || L.zero[op])) {
          bool vec = by_row ? s != 0 : !L.zero[op];
          inputs[k] = {L.base[op] + cur.off[op], vec, dt};
          continue;
        }
        RowCursor c = cur;
        for (int64_t r = 0; r < nrows; ++r, c.next())
          gather(scratch.in(k) + r * inner * L.esize[op], L.base[op] + c.off[op], s, inner,
                 L.esize[op]);
        inputs[k] = {scratch.in(k), true, dt};
      }
      run_block(steps, kernels, regs.data(), inputs.data(), scratch, scratch.o(), kF32,
                nrows * inner);
      const auto* value = reinterpret_cast<const float*>(scratch.o());
      for (int64_t r = 0; r < nrows; ++r, cur.next()) store(L.base[0] + cur.off[0], value + r * inner);
    }
  });
  return true;
}

}  // namespace tg::cpu
