// The geometry of index_select / gather / scatter_add on CUDA, and the per-thread steps of
// scatter_add without atomics (Note [Scatter without atomics]). Plain C++ that nvcc compiles for
// the device and the test suite runs on the host, so the steps are tested on machines without a
// GPU; kernels.cu only launches them, one thread per element or per chunk.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define TG_HD_STEP __host__ __device__
#else
#define TG_HD_STEP
#endif

namespace tg::cuda_detail {

constexpr int kDims = 16;  // tensors have at most 16 dims

// index_select / gather / scatter_add: the iteration space (out's shape for the first two,
// x's for scatter_add), outermost first, with each operand's element strides over it.
struct IndexGeom {
  int ndim = 0;
  int dim = 0;
  int64_t dim_size = 0;     // the size of the indexed dim of the operand indexed into
  int64_t index_step = 0;   // index_select: the index vector's stride
  int64_t out_extent = 1;   // scatter_add: 1 + the largest element offset into out
  int64_t sizes[kDims];
  int64_t out_strides[kDims], x_strides[kDims], index_strides[kDims];
};

TG_HD_STEP inline int64_t wrap_index(int64_t v, int64_t size) { return v < 0 ? v + size : v; }

// Element i of the iteration space: its offsets into out, x and index, and its position along
// the indexed dim.
struct IndexPoint {
  int64_t out = 0, x = 0, index = 0, pos = 0;
};
TG_HD_STEP inline IndexPoint index_point(const IndexGeom& g, int64_t i) {
  int64_t idx[kDims];
  for (int d = g.ndim - 1; d >= 0; --d) {
    idx[d] = i % g.sizes[d];
    i /= g.sizes[d];
  }
  IndexPoint p;
  for (int d = 0; d < g.ndim; ++d) {
    p.out += idx[d] * g.out_strides[d];
    p.x += idx[d] * g.x_strides[d];
    p.index += idx[d] * g.index_strides[d];
  }
  p.pos = g.ndim ? idx[g.dim] : 0;
  return p;
}

// index_select (by_vector) or gather: element i of out, read from x.
template <class T>
TG_HD_STEP void gather_one(bool by_vector, const IndexGeom& g, const int64_t* index, int64_t i,
                           T* out, const T* x) {
  const IndexPoint p = index_point(g, i);
  if (g.ndim == 0) {
    out[0] = x[0];
    return;
  }
  int64_t sel = wrap_index(index[by_vector ? p.pos * g.index_step : p.index], g.dim_size);
  out[p.out] = x[p.x + (sel - p.pos) * g.x_strides[g.dim]];
}

// scatter_add's element i of the iteration space (x's shape): the element offsets of its
// destination in out and of its value in x.
TG_HD_STEP inline void scatter_offsets(const IndexGeom& g, const int64_t* index, int64_t i,
                                       int64_t& dst, int64_t& src) {
  const IndexPoint p = index_point(g, i);
  src = p.x;
  dst = g.ndim == 0 ? 0
                    : p.out + (wrap_index(index[p.index], g.dim_size) - p.pos) * g.out_strides[g.dim];
}

// Note [Scatter without atomics]
// scatter_add of floats on the GPU gives the same bits on every run: no atomics, whose order of
// arrival would change the last bits of a sum when an index repeats (an embedding's gradient).
//  1. keys: element i of x gets its destination's offset as key and its own offset as value
//     (scatter_offsets);
//  2. a stable radix sort (CUB) brings equal destinations together, in the order of i;
//  3. chunk_pieces: thread c folds the sorted elements [c·C, (c+1)·C) into pieces, one per run of
//     equal keys, summed in f64 in sorted order;
//  4. join_runs: thread c adds each run that starts in its chunk to out, with the first pieces of
//     the chunks the run goes on into. Every destination is written by one thread.
// How elements group into pieces depends only on the keys, so the result depends only on the
// inputs. It rounds differently from the CPU's one-by-one sum (f64 partial sums, then one
// rounding into out), within the tolerance the devices are compared at.
constexpr int64_t kRunChunk = 64;

// Step 3. piece_keys and piece_sums have room for n entries (chunk c writes from c·C); counts
// gets the number of pieces of chunk c.
template <class T>
TG_HD_STEP void chunk_pieces(int64_t c, int64_t n, const uint64_t* keys, const uint64_t* srcs,
                             const T* x, uint64_t* piece_keys, double* piece_sums,
                             int32_t* counts) {
  const int64_t begin = c * kRunChunk;
  const int64_t end = begin + kRunChunk < n ? begin + kRunChunk : n;
  int32_t m = 0;
  uint64_t key = keys[begin];
  double sum = 0;
  for (int64_t k = begin; k < end; ++k) {
    if (keys[k] != key) {
      piece_keys[begin + m] = key;
      piece_sums[begin + m] = sum;
      ++m;
      key = keys[k];
      sum = 0;
    }
    sum += static_cast<double>(x[srcs[k]]);
  }
  piece_keys[begin + m] = key;
  piece_sums[begin + m] = sum;
  counts[c] = m + 1;
}

// Step 4. keys are the sorted keys of step 2; out is indexed by element offset.
template <class T>
TG_HD_STEP void join_runs(int64_t c, int64_t nchunks, const uint64_t* keys,
                          const uint64_t* piece_keys, const double* piece_sums,
                          const int32_t* counts, T* out) {
  const int64_t begin = c * kRunChunk;
  const int32_t m = counts[c];
  // The first piece goes on from the chunk before when the key before it is its own: that run's
  // owner adds it.
  const int32_t first = c > 0 && keys[begin - 1] == keys[begin] ? 1 : 0;
  for (int32_t j = first; j < m; ++j) {
    const uint64_t key = piece_keys[begin + j];
    double total = piece_sums[begin + j];
    if (j == m - 1) {  // the last run of the chunk may go on into the next ones
      for (int64_t d = c + 1; d < nchunks && piece_keys[d * kRunChunk] == key; ++d) {
        total += piece_sums[d * kRunChunk];
        if (counts[d] > 1) break;  // it ends inside chunk d
      }
    }
    out[key] = static_cast<T>(static_cast<double>(out[key]) + total);
  }
}

}  // namespace tg::cuda_detail

#ifndef __CUDACC__
#include "core/tensor_impl.h"
#include "ops/op_registry.h"

namespace tg::cuda_detail {

// The geometry of backend index(kind, out, x, dim, index); the caller has checked the indices.
inline IndexGeom make_index_geom(OpKind kind, const TensorImpl& out, const TensorImpl& x, int dim,
                                 const TensorImpl& index) {
  const TensorImpl& target = kind == OpKind::ScatterAdd ? out : x;
  const TensorImpl& space = kind == OpKind::ScatterAdd ? x : out;
  IndexGeom g;
  g.ndim = static_cast<int>(space.sizes.size());
  g.dim = dim;
  g.dim_size = target.sizes.empty() ? 1 : target.sizes[dim];
  g.index_step = index.strides.empty() ? 0 : index.strides[0];
  for (int d = 0; d < g.ndim; ++d) {
    g.sizes[d] = space.sizes[d];
    g.out_strides[d] = out.strides[d];
    g.x_strides[d] = x.strides[d];
    g.index_strides[d] =
        kind == OpKind::IndexSelect || index.strides.size() <= static_cast<size_t>(d)
            ? 0
            : index.strides[d];
  }
  g.out_extent = 1;
  for (size_t d = 0; d < out.sizes.size(); ++d)
    if (out.sizes[d] > 0) g.out_extent += (out.sizes[d] - 1) * out.strides[d];
  return g;
}

}  // namespace tg::cuda_detail
#endif
