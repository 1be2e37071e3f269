// How CUDA reduces: the geometry of a reduction (dims merged), the offsets of its elements, and
// which kernel runs with which split (Note [Reduction kernels]). Plain C++ that nvcc compiles for
// the device and the test suite runs on the host, like index_runs.h.
#pragma once

#include <cstdint>

#include "backend/cuda/index_runs.h"

namespace tg::cuda_detail {

// A reduction of x over its trailing dims: kept and reduced dims outermost first, element
// strides; out is contiguous over the kept dims.
struct ReduceGeom {
  int nkept = 0, nred = 0;
  int64_t kept_sizes[kDims], kept_strides[kDims];
  int64_t red_sizes[kDims], red_strides[kDims];
  int64_t nout = 0, count = 0;
};

// The element offsets in x of output o's first element and of reduced position j after it.
TG_HD_STEP inline int64_t kept_offset(const ReduceGeom& g, int64_t o) {
  int64_t base = 0;
  for (int d = g.nkept - 1; d >= 0; --d) {
    base += (o % g.kept_sizes[d]) * g.kept_strides[d];
    o /= g.kept_sizes[d];
  }
  return base;
}
TG_HD_STEP inline int64_t red_offset(const ReduceGeom& g, int64_t j) {
  if (g.nred == 1) return j * g.red_strides[0];
  int64_t off = 0;
  for (int d = g.nred - 1; d >= 0; --d) {
    off += (j % g.red_sizes[d]) * g.red_strides[d];
    j /= g.red_sizes[d];
  }
  return off;
}

// Dims of size 1 dropped and neighbours that step as one merged, outermost first: the same
// positions in the same order (so the same arg indices), with fewer divisions per element.
inline int merge_dims(int n, int64_t* sizes, int64_t* strides) {
  int m = 0;
  for (int d = 0; d < n; ++d) {
    if (sizes[d] == 1) continue;
    if (m > 0 && sizes[m - 1] != 0 && sizes[d] != 0 && strides[m - 1] == strides[d] * sizes[d]) {
      sizes[m - 1] *= sizes[d];
      strides[m - 1] = strides[d];
    } else {
      sizes[m] = sizes[d];
      strides[m] = strides[d];
      ++m;
    }
  }
  return m;
}

// Note [Reduction kernels]
// Each thread folds a fixed set of an output's positions into a state (f64 for floats), and the
// states combine in a fixed tree (warp shuffles, then across warps): no atomics, and the choice
// of kernel and every split depend only on the shapes, so a result's bits depend only on its
// inputs.
//  - Columns: the kept dims' innermost is contiguous and the reduced elements are not (a sum over
//    the batch, a bias's gradient). Blocks of 32 outputs × kColumnSlices threads: each folds every
//    kColumnSlices-th position of its output's part, so a warp reads 32 neighbours at a time.
//    Long columns are cut into parts whose states a second kernel combines in order.
//  - Pieces: few very long rows, each cut into pieces of a block each, combined in order.
//  - Warps: short rows (softmax's, a layer norm's), one warp per output.
//  - Block: long rows, one block per output.
enum class ReducePath { Columns, Pieces, Warps, Block };
constexpr int kColumnSlices = 8;

struct ReducePlan {
  ReducePath path = ReducePath::Block;
  int64_t parts = 1;  // Columns: parts of each column; Pieces: pieces of each row
};

inline ReducePlan plan_reduce(const ReduceGeom& g) {
  ReducePlan p;
  if (g.nkept >= 1 && g.nred >= 1 && g.kept_strides[g.nkept - 1] == 1 &&
      g.red_strides[g.nred - 1] != 1 && g.count > 1 && g.nout >= 8) {
    // Each thread still folds 32 elements or more, and the grid stays near a thousand blocks.
    p.path = ReducePath::Columns;
    const int64_t xblocks = (g.nout + 31) / 32;
    int64_t parts = g.count / (32 * kColumnSlices), cap = 1024 / xblocks;
    if (parts > cap) parts = cap;
    if (parts > 65535) parts = 65535;
    p.parts = parts < 1 ? 1 : parts;
    return p;
  }
  constexpr int64_t kPiece = 16384;
  if (g.count >= 4 * kPiece && g.nout < 512) {
    int64_t pieces = (g.count + kPiece - 1) / kPiece, cap = 2048 / g.nout;
    pieces = pieces < cap ? pieces : (cap < 1 ? 1 : cap);
    if (pieces > 1) {
      p.path = ReducePath::Pieces;
      p.parts = pieces;
      return p;
    }
  }
  p.path = g.count <= 1024 ? ReducePath::Warps : ReducePath::Block;
  return p;
}

// Part `part` of `parts` of [0, count): [begin, end), possibly empty.
TG_HD_STEP inline void part_range(int64_t count, int64_t parts, int64_t part, int64_t& begin,
                                  int64_t& end) {
  const int64_t len = (count + parts - 1) / parts;
  begin = part * len;
  end = begin + len < count ? begin + len : count;
  if (begin > end) begin = end;
}

}  // namespace tg::cuda_detail

#ifndef __CUDACC__
namespace tg::cuda_detail {

// The geometry of backend reduce(kind, out, x, nreduced): x's last nreduced dims are reduced.
inline ReduceGeom make_reduce_geom(const TensorImpl& out, const TensorImpl& x, int nreduced) {
  ReduceGeom g;
  const int nd = static_cast<int>(x.sizes.size());
  g.nkept = nd - nreduced;
  g.nred = nreduced;
  g.count = 1;
  for (int d = 0; d < nd; ++d) {
    if (d < g.nkept) {
      g.kept_sizes[d] = x.sizes[d];
      g.kept_strides[d] = x.strides[d];
    } else {
      g.red_sizes[d - g.nkept] = x.sizes[d];
      g.red_strides[d - g.nkept] = x.strides[d];
      g.count *= x.sizes[d];
    }
  }
  g.nout = out.numel;
  g.nkept = merge_dims(g.nkept, g.kept_sizes, g.kept_strides);
  g.nred = merge_dims(g.nred, g.red_sizes, g.red_strides);
  return g;
}

}  // namespace tg::cuda_detail
#endif
