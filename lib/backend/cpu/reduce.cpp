// CPU reductions: sum, prod, amax, amin, argmax, argmin over the trailing dims of a view.
// Floating sums accumulate in f64 and split long rows into fixed-size blocks, so the result does
// not depend on the thread count.
#include <cmath>
#include <limits>
#include <vector>

#include "backend/cpu/cpu_kernels.h"
#include "backend/cpu/loops.h"
#include "backend/cpu/scalar_math.h"
#include "backend/cpu/vec_kernels.h"

namespace tg::cpu {
namespace {

template <class T> using Acc = std::conditional_t<std::is_floating_point_v<T>, double,
                                                  std::conditional_t<std::is_same_v<T, bool>, int64_t, T>>;

// Running state of one output element: value (and index for arg reductions).
template <class T>
struct State {
  Acc<T> v;
  int64_t idx = 0;
  bool nan = false;
};

template <class T>
State<T> init_state(OpKind kind) {
  State<T> s;
  switch (kind) {
    case OpKind::Sum: s.v = 0; break;
    case OpKind::Prod: s.v = 1; break;
    case OpKind::Amax: case OpKind::Argmax: s.v = std::numeric_limits<Acc<T>>::lowest(); break;
    default: s.v = std::numeric_limits<Acc<T>>::max(); break;
  }
  if constexpr (std::is_floating_point_v<T>) {
    if (kind == OpKind::Amax || kind == OpKind::Argmax) s.v = -INFINITY;
    if (kind == OpKind::Amin || kind == OpKind::Argmin) s.v = INFINITY;
  }
  return s;
}

// Folds element x at reduced position i into s. NaN wins max/min (and its first index).
template <class T>
inline void fold(OpKind kind, State<T>& s, T x, int64_t i) {
  Acc<T> v = static_cast<Acc<T>>(x);
  switch (kind) {
    case OpKind::Sum: s.v = wrap_add(s.v, v); break;
    case OpKind::Prod: s.v = wrap_mul(s.v, v); break;
    case OpKind::Amax: case OpKind::Argmax:
      if (s.nan) break;
      if (v != v) { s.nan = true; s.v = v; s.idx = i; }
      else if (v > s.v || i == 0) { s.v = v; s.idx = i; }
      break;
    default:
      if (s.nan) break;
      if (v != v) { s.nan = true; s.v = v; s.idx = i; }
      else if (v < s.v || i == 0) { s.v = v; s.idx = i; }
      break;
  }
}

template <class T>
inline void merge(OpKind kind, State<T>& s, const State<T>& o) {
  switch (kind) {
    case OpKind::Sum: s.v = wrap_add(s.v, o.v); break;
    case OpKind::Prod: s.v = wrap_mul(s.v, o.v); break;
    case OpKind::Amax: case OpKind::Argmax:
      if (!s.nan && (o.nan || o.v > s.v)) s = o;
      break;
    default:
      if (!s.nan && (o.nan || o.v < s.v)) s = o;
      break;
  }
}

// Reduced part of x as a loop of one operand; positions are row-major in the reduced dims.
struct Reduced {
  Loop loop;      // over the reduced dims, base set per output element
  int64_t count;  // elements reduced into each output
};

template <class T>
State<T> reduce_span(OpKind kind, const Loop& L, int64_t begin, int64_t end) {
  State<T> s = init_state<T>(kind);
  loop_range(L, begin, end, [&](char** p, const int64_t* st, int64_t n) {
    // Position of p[0] in the row-major order of the reduced dims: tracked via begin.
    int64_t base_i = begin;
    if (st[0] == sizeof(T) && kind == OpKind::Sum) {
      const T* x = reinterpret_cast<const T*>(p[0]);
      Acc<T> acc = 0;
      if constexpr (std::is_same_v<T, float>) {
        acc = vec_kernels().sum_f32(x, n);
      } else if constexpr (std::is_floating_point_v<T>) {
#pragma omp simd reduction(+ : acc)
        for (int64_t i = 0; i < n; ++i) acc += static_cast<Acc<T>>(x[i]);
      } else {
        for (int64_t i = 0; i < n; ++i) acc = wrap_add(acc, static_cast<Acc<T>>(x[i]));
      }
      s.v = wrap_add(s.v, acc);
    } else {
      for (int64_t i = 0; i < n; ++i)
        fold(kind, s, *reinterpret_cast<const T*>(p[0] + i * st[0]), base_i + i);
    }
    begin += n;
  });
  return s;
}

template <class T>
void store(OpKind kind, char* out, int64_t i, const State<T>& s) {
  if (kind == OpKind::Argmax || kind == OpKind::Argmin) reinterpret_cast<int64_t*>(out)[i] = s.idx;
  else reinterpret_cast<T*>(out)[i] = static_cast<T>(s.v);
}

constexpr int64_t kBlock = 16384;  // reduced elements per partial result of a long row

// Note [Column sums]
// A sum over leading dims (a bias gradient, a sum over the batch) reduces with a stride: each
// output walked its column one scalar at a time. When the outputs are consecutive in the input,
// whole rows are added instead into a block of f64 accumulators, row after row: the same
// additions in the same order, so the same bits, several times faster.
template <class T>
bool column_sums(const TensorImpl& out, const TensorImpl& kept, const Loop& R, int64_t count) {
  Loop K = make_loop({&kept});
  if (R.ndim != 1 || K.ndim != 1 || K.strides[0][0] != sizeof(T) || R.strides[0][0] == sizeof(T) ||
      !out.is_contiguous())
    return false;
  const int64_t rs = R.strides[0][0], ncols = K.sizes[0];
  const char* xbase = R.base[0];
  T* o = reinterpret_cast<T*>(out.data());
  constexpr int64_t kCols = 256;
  int64_t nblocks = (ncols + kCols - 1) / kCols;
  parallel_for(nblocks, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(count * kCols, 1)),
               [&](int64_t b0, int64_t b1) {
                 double acc[kCols];
                 for (int64_t b = b0; b < b1; ++b) {
                   const int64_t j0 = b * kCols, w = std::min(kCols, ncols - j0);
                   for (int64_t j = 0; j < w; ++j) acc[j] = 0;
                   for (int64_t r = 0; r < count; ++r) {
                     const T* row = reinterpret_cast<const T*>(xbase + r * rs) + j0;
                     for (int64_t j = 0; j < w; ++j) acc[j] += static_cast<double>(row[j]);
                   }
                   for (int64_t j = 0; j < w; ++j) o[j0 + j] = static_cast<T>(acc[j]);
                 }
               });
  return true;
}

template <class T>
void reduce_typed(OpKind kind, const TensorImpl& out, const TensorImpl& x, int nreduced) {
  int nd = static_cast<int>(x.sizes.size());
  int nkept = nd - nreduced;
  // Reduced dims as a one-operand loop; kept dims as the output iteration.
  TensorImpl red;
  red.sizes.assign(x.sizes.begin() + nkept, x.sizes.end());
  red.strides.assign(x.strides.begin() + nkept, x.strides.end());
  red.numel = 1;
  for (int64_t s : red.sizes) red.numel *= s;
  red.dtype = x.dtype;
  red.storage = x.storage;
  red.offset = x.offset;
  Loop R = make_loop({&red});
  int64_t count = red.numel;

  TensorImpl kept;
  kept.sizes.assign(x.sizes.begin(), x.sizes.begin() + nkept);
  kept.strides.assign(x.strides.begin(), x.strides.begin() + nkept);
  kept.numel = out.numel;
  kept.dtype = x.dtype;
  kept.storage = x.storage;
  kept.offset = x.offset;
  Shape kept_strides = kept.strides;
  int64_t nout = out.numel;
  char* obase = out.data();

  // Offsets (bytes) of output element i's first input, row-major over kept dims.
  auto in_offset = [&](int64_t i) {
    int64_t off = 0;
    for (int d = nkept - 1; d >= 0; --d) {
      off += (i % kept.sizes[d]) * kept_strides[d];
      i /= kept.sizes[d];
    }
    return off * static_cast<int64_t>(sizeof(T));
  };

  if (nout == 1 && count > kBlock) {
    // One long reduction: fixed blocks in parallel, merged in order (thread-count independent).
    int64_t nblocks = (count + kBlock - 1) / kBlock;
    std::vector<State<T>> partial(static_cast<size_t>(nblocks));
    parallel_for(nblocks, 2, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        partial[b] = reduce_span<T>(kind, R, b * kBlock, std::min(count, (b + 1) * kBlock));
    });
    State<T> s = partial[0];
    for (int64_t b = 1; b < nblocks; ++b) merge(kind, s, partial[b]);
    store(kind, obase, 0, s);
    return;
  }
  if constexpr (std::is_floating_point_v<T>) {
    if (kind == OpKind::Sum && column_sums<T>(out, kept, R, count)) return;
  }
  char* xbase = R.base[0];
  parallel_for(nout, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(count, 1)),
               [&](int64_t i0, int64_t i1) {
                 Loop Ri = R;
                 for (int64_t i = i0; i < i1; ++i) {
                   Ri.base[0] = xbase + in_offset(i);
                   store(kind, obase, i, reduce_span<T>(kind, Ri, 0, count));
                 }
               });
}

}  // namespace

void reduce_kernel(OpKind kind, const TensorImpl& out, const TensorImpl& x, int nreduced) {
  TG_DISPATCH_ALL(x.dtype, [&] { reduce_typed<T>(kind, out, x, nreduced); });
}

}  // namespace tg::cpu
