// CPU fused elementwise groups (Note [Elementwise fusion], lib/trace/pass_fuse.cpp): the steps run
// block by block over the output, so the values between steps stay in cache.
#include <array>
#include <cstring>
#include <memory>

#include "backend/cpu/cpu_kernels.h"
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

Layout make_layout(const TensorImpl& out, const TensorImpl* const* in, size_t nin) {
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

// Runs step `s` for a block of n elements into `dst`; returns the value's register.
Reg run_step(const FusedStep& s, const Reg* regs, const Reg* inputs, char* dst, int64_t n) {
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
      UnaryF32 fn = s.dtype == kF32 ? vec_kernels().unary_f32(s.op) : nullptr;
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
      BinaryF32 fn = s.dtype == kF32 ? vec_kernels().binary_f32(s.op) : nullptr;
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
void run_block(const std::vector<FusedStep>& steps, Reg* regs, const Reg* inputs, Scratch& scratch,
               char* dst, DType out_dtype, int64_t n) {
  size_t last = steps.size() - 1;
  for (size_t i = 0; i < steps.size(); ++i)
    regs[i] = run_step(steps[i], regs, inputs, i == last ? dst : scratch.reg(i), n);
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

  parallel_for(items, grain, [&](int64_t begin, int64_t end) {
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
        run_block(steps, regs.data(), inputs.data(), scratch, direct ? o : scratch.o(), out.dtype,
                  n);
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
      run_block(steps, regs.data(), inputs.data(), scratch, direct ? o0 : scratch.o(), out.dtype,
                n);
      if (!direct) {
        RowCursor c = cur;
        for (int64_t r = 0; r < nrows; ++r, c.next())
          scatter(L.base[0] + c.off[0], inner_stride(0), scratch.o() + r * inner * L.esize[0],
                  inner, L.esize[0]);
      }
    }
  });
}

}  // namespace tg::cpu
