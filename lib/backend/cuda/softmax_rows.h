// softmax, log_softmax and logsumexp over rows in one CUDA kernel (Note [Softmax rows]): the
// per-thread steps, plain C++ that nvcc compiles for the device and the test suite runs on the
// host, like reduce_plan.h.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "backend/cuda/reduce_plan.h"
#include "ops/op_registry.h"

namespace tg::cuda_detail {

// Note [Softmax rows]
// Eagerly, softmax is eight kernels as a composite (amax, the shift's abs, == and where, the
// subtraction, exp, sum, division), each a pass over memory and a launch; on CUDA it is one
// kernel. A warp (rows of up to 1,024 elements) or a block (longer rows) owns a row, and each of
// its threads takes every nlanes-th element, in three steps with a combine between them:
//   1. m, the row's max (NaN wins, as in amax); the shift is m, or 0 where m is ±inf, as in the
//      composite, so a row of -inf gives NaN (softmax) or -inf (logsumexp) rather than inf - inf;
//   2. s = Σ exp(x - shift), each exp in the row's dtype, summed in f64 as every CUDA sum is;
//   3. the output: exp(x - shift) / s, x - (log s + shift), or log s + shift for logsumexp.
// These are the composite's own operations in the composite's order, so the kernel gives its
// bits: the max is exact; each exp is scalar_math.h's function of the same value in the row's
// dtype; each lane folds every 32nd (warp) or 256th (block) element in f64 and the lanes combine
// in the tree of reduce's Warps and Block kernels (Note [Reduction kernels]), whose plan is the
// same for the contiguous rows the op passes as for the composite's exp(x - shift); the last
// steps are the same operations in the row's dtype. So a traced graph, which records the
// composite, replays an eager run's bits (Mode::FastCompile), and the bits depend only on the
// input.
// Plans that split a row (Pieces) or read it down a column (Columns: softmax over dim 0 of a
// row-major matrix) keep the composite, whose reductions handle those shapes.
// softmax and log_softmax write out at x's element offsets (same sizes and strides; the op
// makes both contiguous); logsumexp writes one element per row, out contiguous.

TG_HD_STEP inline double max_fold(double m, double v) {
  if (m != m) return m;  // NaN stays
  return (v != v || v > m) ? v : m;
}

// Step 1: the max over this lane's elements of row `base`.
template <class T>
TG_HD_STEP double row_max_part(const T* x, const ReduceGeom& g, int64_t base, int64_t lane,
                               int64_t nlanes) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = lane; j < g.count; j += nlanes)
    m = max_fold(m, static_cast<double>(x[base + red_offset(g, j)]));
  return m;
}

// The shift of a row whose max is m.
template <class T>
TG_HD_STEP T row_shift(double m) {
  return (m == std::numeric_limits<double>::infinity() ||
          m == -std::numeric_limits<double>::infinity())
             ? T(0)
             : static_cast<T>(m);
}

// Step 2: this lane's part of Σ exp(x - shift).
template <class T>
TG_HD_STEP double row_sum_part(const T* x, const ReduceGeom& g, int64_t base, T shift, int64_t lane,
                               int64_t nlanes) {
  double s = 0;
  for (int64_t j = lane; j < g.count; j += nlanes)
    s += static_cast<double>(std::exp(x[base + red_offset(g, j)] - shift));
  return s;
}

// Step 3: this lane's outputs of row o (at element offset base), given the row's sum.
template <class T>
TG_HD_STEP void row_write(OpKind kind, const T* x, T* out, const ReduceGeom& g, int64_t o,
                          int64_t base, T shift, double sum, int64_t lane, int64_t nlanes) {
  const T s = static_cast<T>(sum);
  if (kind == OpKind::Logsumexp) {
    if (lane == 0) out[o] = std::log(s) + shift;
    return;
  }
  const T lse = std::log(s) + shift;
  for (int64_t j = lane; j < g.count; j += nlanes) {
    const int64_t at = base + red_offset(g, j);
    out[at] = kind == OpKind::Softmax ? std::exp(x[at] - shift) / s : x[at] - lse;
  }
}

// Whether the one-kernel path takes a row geometry (else the composite runs).
inline bool softmax_rows_fit(const ReduceGeom& g) {
  if (g.nout <= 0 || g.count <= 0) return false;
  const ReducePath path = plan_reduce(g).path;
  return path == ReducePath::Warps || path == ReducePath::Block;
}

}  // namespace tg::cuda_detail

#ifndef __CUDACC__
#include "core/tensor_impl.h"

namespace tg::cuda_detail {

// The geometry of backend softmax_rows(kind, out, x, nreduced) into g, or false where the
// one-kernel path does not take the call.
inline bool make_softmax_geom(OpKind kind, const TensorImpl& out, const TensorImpl& x, int nreduced,
                              ReduceGeom& g) {
  if (x.dtype != out.dtype || (x.dtype != kF32 && x.dtype != kF64)) return false;
  const bool rows = kind == OpKind::Logsumexp;
  if (!rows && (nreduced != 1 || out.sizes != x.sizes || out.strides != x.strides)) return false;
  g = make_reduce_geom(out, x, nreduced);
  if (!rows) g.nout = g.count > 0 ? x.numel / g.count : 0;  // one row per output's row
  return softmax_rows_fit(g);
}

}  // namespace tg::cuda_detail
#endif
