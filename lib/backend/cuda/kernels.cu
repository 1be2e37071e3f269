// CUDA kernels for every backend primitive. The scalar definitions are the CPU's own
// (backend/cpu/scalar_math.h, philox.h, compiled for the device too), so both devices compute the
// same functions; only the order of floating sums and the device's libm differ.
#include <cuda_runtime.h>

#include <cub/device/device_radix_sort.cuh>

#include <cmath>
#include <cstdint>
#include <limits>

#include "backend/cpu/philox.h"
#include "backend/cpu/scalar_math.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/softmax_rows.h"

namespace tg::cuda_detail {
namespace {

using cpu::convert;
using cpu::scalar_binary;
using cpu::scalar_compare;
using cpu::scalar_unary;

constexpr int kThreads = 256;

// Enough blocks to fill the GPU many times over; the loops stride over the rest.
unsigned blocks_for(int64_t n) {
  int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65536 ? 65536 : b));
}

// Calls f(type tag) with T bound to dtype's C++ type.
template <class T>
struct Tag {
  using type = T;
};
template <class F>
void dispatch(DType dtype, F&& f) {
  switch (dtype) {
    case DType::F32: return f(Tag<float>{});
    case DType::F64: return f(Tag<double>{});
    case DType::I32: return f(Tag<int32_t>{});
    case DType::I64: return f(Tag<int64_t>{});
    case DType::Bool: return f(Tag<bool>{});
  }
}

// --- elementwise -------------------------------------------------------------------------------

template <class F>
__global__ void elementwise(Strided s, int64_t n, F f) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    int64_t off[kOperands] = {0, 0, 0, 0};
    if (s.ndim == 1) {
#pragma unroll
      for (int k = 0; k < kOperands; ++k) off[k] = i * s.strides[k][0];
    } else {
      int64_t r = i;
      for (int d = 0; d < s.ndim; ++d) {
        int64_t q = r % s.sizes[d];
        r /= s.sizes[d];
#pragma unroll
        for (int k = 0; k < kOperands; ++k) off[k] += q * s.strides[k][d];
      }
    }
    f(s.base, off);
  }
}

template <class F>
void launch(const Strided& s, int64_t n, cudaStream_t stream, F f) {
  if (n > 0) elementwise<<<blocks_for(n), kThreads, 0, stream>>>(s, n, f);
}

template <class T>
__device__ T& at(char* const* base, const int64_t* off, int k) {
  return *reinterpret_cast<T*>(base[k] + off[k]);
}

template <class To, class From>
struct CopyF {
  __device__ void operator()(char* const* b, const int64_t* o) const {
    at<To>(b, o, 0) = convert<To>(at<From>(b, o, 1));
  }
};

template <class T>
struct FillF {
  T value;
  __device__ void operator()(char* const* b, const int64_t* o) const { at<T>(b, o, 0) = value; }
};

template <class T>
struct UnaryF {
  OpKind kind;
  OpAttrs attrs;
  __device__ void operator()(char* const* b, const int64_t* o) const {
    at<T>(b, o, 0) = scalar_unary(kind, at<T>(b, o, 1), attrs);
  }
};

template <class T>
struct BinaryF {
  OpKind kind;
  __device__ void operator()(char* const* b, const int64_t* o) const {
    at<T>(b, o, 0) = scalar_binary(kind, at<T>(b, o, 1), at<T>(b, o, 2));
  }
};

template <class T>
struct CompareF {
  OpKind kind;
  __device__ void operator()(char* const* b, const int64_t* o) const {
    at<bool>(b, o, 0) = scalar_compare(kind, at<T>(b, o, 1), at<T>(b, o, 2));
  }
};

template <class T>
struct WhereF {
  __device__ void operator()(char* const* b, const int64_t* o) const {
    at<T>(b, o, 0) = at<bool>(b, o, 1) ? at<T>(b, o, 2) : at<T>(b, o, 3);
  }
};

struct CheckF {
  int64_t size;
  int64_t* flag;
  __device__ void operator()(char* const* b, const int64_t* o) const {
    int64_t v = at<int64_t>(b, o, 0);
    if (v < -size || v >= size) {
      flag[1] = v;  // any one of them
      flag[0] = 1;
    }
  }
};

// Contiguous f32 operands (an input may be one broadcast value): four elements a thread through
// 16-byte loads and stores, the tail one by one.
struct UnaryF32 {
  OpKind kind;
  OpAttrs attrs;
  __device__ float operator()(float x, float) const { return scalar_unary(kind, x, attrs); }
};
struct BinaryF32 {
  OpKind kind;
  __device__ float operator()(float x, float y) const { return scalar_binary(kind, x, y); }
};

template <class Op>
__global__ void contiguous_f32(int64_t n, float* out, const float* a, bool a_vec, const float* b,
                               bool b_vec, Op op) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t n4 = n / 4;
  const float as = a_vec ? 0.0f : *a, bs = b_vec ? 0.0f : *b;
  for (int64_t g = first; g < n4; g += step) {
    float4 x = a_vec ? reinterpret_cast<const float4*>(a)[g] : make_float4(as, as, as, as);
    float4 y = b_vec ? reinterpret_cast<const float4*>(b)[g] : make_float4(bs, bs, bs, bs);
    reinterpret_cast<float4*>(out)[g] =
        make_float4(op(x.x, y.x), op(x.y, y.y), op(x.z, y.z), op(x.w, y.w));
  }
  for (int64_t i = n4 * 4 + first; i < n; i += step)
    out[i] = op(a_vec ? a[i] : as, b_vec ? b[i] : bs);
}

// Operand k of s is consecutive f32 (vec) or one value (!vec), at a 16-byte boundary if vec.
bool f32_run(const Strided& s, int k, bool& vec) {
  if (s.dtype[k] != DType::F32 || s.ndim != 1) return false;
  vec = s.strides[k][0] != 0;
  if (vec && s.strides[k][0] != 4) return false;
  return !vec || reinterpret_cast<uintptr_t>(s.base[k]) % 16 == 0;
}

template <class Op>
bool try_contiguous(const Strided& s, int64_t n, cudaStream_t stream, Op op) {
  bool out_vec = false, a_vec = false;
  if (!f32_run(s, 0, out_vec) || !out_vec || !f32_run(s, 1, a_vec)) return false;
  bool b_vec = a_vec;  // a unary op reads its one input again as b, and ignores it
  if (s.nops > 2 && !f32_run(s, 2, b_vec)) return false;
  const float* b = s.nops > 2 ? reinterpret_cast<const float*>(s.base[2])
                              : reinterpret_cast<const float*>(s.base[1]);
  if (n > 0)
    contiguous_f32<<<blocks_for((n + 3) / 4), kThreads, 0, stream>>>(
        n, reinterpret_cast<float*>(s.base[0]), reinterpret_cast<const float*>(s.base[1]), a_vec, b,
        b_vec, op);
  return true;
}

// --- fill patterns -----------------------------------------------------------------------------

template <class T>
__global__ void iota_kernel(T* out, int64_t n, double start, double step) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = static_cast<T>(start + static_cast<double>(i) * step);
}

// One thread per block of four elements, as backend/cpu/random.cpp.
template <class T>
__global__ void random_kernel(int kind, T* out, int64_t n, uint64_t seed, uint64_t offset,
                              const int64_t* slot, double a, double b) {
  if (slot != nullptr) {
    seed = static_cast<uint64_t>(slot[0]);
    offset = static_cast<uint64_t>(slot[1]);
  }
  const int64_t blocks = (n + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t blk = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; blk < blocks;
       blk += stride) {
    cpu::Philox4 r = cpu::philox4x32_10(seed, offset + static_cast<uint64_t>(blk));
    double v[4];
    if (kind == 1) {
      cpu::normal4(r, v);
      for (double& x : v) x = a + b * x;
    } else if (kind == 0) {
      for (int k = 0; k < 4; ++k) v[k] = a + (b - a) * cpu::uniform01(r.v[k], r.v[(k + 1) & 3]);
      if constexpr (std::is_same_v<T, float>) {
        double top = nextafterf(static_cast<float>(b), -INFINITY);
        for (double& x : v) x = x < top ? x : top;
      }
    } else {
      auto range = static_cast<uint64_t>(b - a);
      for (int k = 0; k < 4; ++k) {
        uint64_t bits = (static_cast<uint64_t>(r.v[k]) << 32) | r.v[(k + 1) & 3];
        int64_t iv = static_cast<int64_t>(a) + static_cast<int64_t>(__umul64hi(bits, range));
        if (blk * 4 + k < n) out[blk * 4 + k] = static_cast<T>(iv);
      }
      continue;
    }
    for (int k = 0; k < 4 && blk * 4 + k < n; ++k) out[blk * 4 + k] = static_cast<T>(v[k]);
  }
}

// A few words as the kernel's parameters (Note [Device-side arguments], lib/trace/executor.cpp).
constexpr int kWordsPerLaunch = 32;
struct Words {
  int64_t v[kWordsPerLaunch];
};
__global__ void words_kernel(int64_t* dst, Words w, int n) {
  if (static_cast<int>(threadIdx.x) < n) dst[threadIdx.x] = w.v[threadIdx.x];
}

// The decision of a guarded replay (Note [Guarded updates], lib/trace/executor.cpp): the
// conditional node runs its body where no flag is set. A handful of flags: one thread reads them.
__global__ void guard_kernel(cudaGraphConditionalHandle handle, const int64_t* flags, int64_t n) {
  bool clear = true;
  for (int64_t k = 0; k < n; ++k) clear = clear && flags[2 * k] == 0;
  cudaGraphSetConditional(handle, clear ? 1u : 0u);
}

// --- reductions --------------------------------------------------------------------------------
// Note [Reduction kernels] (reduce_plan.h) says which kernel runs and why. Arg reductions keep
// the smallest index on ties, and NaN wins (its first index), as the CPU's fold does.

template <class T>
using Acc = std::conditional_t<std::is_floating_point_v<T>, double,
                               std::conditional_t<std::is_same_v<T, bool>, int64_t, T>>;

template <class T>
struct RState {
  Acc<T> v;
  int64_t idx;
  bool nan;
  bool valid;
};

template <class T>
__device__ RState<T> combine(OpKind kind, RState<T> a, RState<T> b) {
  if (!b.valid) return a;
  if (!a.valid) return b;
  switch (kind) {
    case OpKind::Sum: a.v = cpu::wrap_add(a.v, b.v); return a;
    case OpKind::Prod: a.v = cpu::wrap_mul(a.v, b.v); return a;
    default: break;
  }
  bool is_max = kind == OpKind::Amax || kind == OpKind::Argmax;
  if (a.nan || b.nan) {
    if (a.nan && b.nan) return a.idx <= b.idx ? a : b;
    return a.nan ? a : b;
  }
  bool b_better = is_max ? b.v > a.v : b.v < a.v;
  if (b_better || (b.v == a.v && b.idx < a.idx)) return b;
  return a;
}

template <class T>
__device__ void fold(OpKind kind, RState<T>& s, T x, int64_t i) {
  RState<T> e{static_cast<Acc<T>>(x), i, false, true};
  if constexpr (std::is_floating_point_v<T>) e.nan = x != x;
  s = combine(kind, s, e);
}

// Lane 0 gets the warp's states combined, halves first (the same tree on every run). The lanes
// that shuffle from past lane 31 read their own state, but lane 0 never depends on them.
template <class T>
__device__ RState<T> warp_combine(OpKind kind, RState<T> s) {
  constexpr unsigned kAll = 0xffffffffu;
  for (int off = 16; off > 0; off /= 2) {
    RState<T> o;
    o.v = __shfl_down_sync(kAll, s.v, off);
    o.idx = __shfl_down_sync(kAll, s.idx, off);
    o.nan = __shfl_down_sync(kAll, static_cast<int>(s.nan), off) != 0;
    o.valid = __shfl_down_sync(kAll, static_cast<int>(s.valid), off) != 0;
    s = combine(kind, s, o);
  }
  return s;
}

template <class T>
__device__ RState<T> invalid_state() {
  RState<T> s{};
  s.valid = false;
  return s;
}

// The block's states combined: each warp by shuffles, then the warps' results by warp 0. Every
// thread gets the result. blockDim.x is a multiple of 32, at most 1024.
template <class T>
__device__ RState<T> block_combine(OpKind kind, RState<T>* warps, RState<T> s) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  s = warp_combine(kind, s);
  if (lane == 0) warps[warp] = s;
  __syncthreads();
  if (warp == 0) {
    RState<T> t = warp_combine(kind, lane < nwarps ? warps[lane] : invalid_state<T>());
    if (lane == 0) warps[0] = t;
  }
  __syncthreads();
  RState<T> r = warps[0];
  __syncthreads();  // before warps is written again
  return r;
}

template <class T>
__device__ void store_result(OpKind kind, char* out, int64_t o, const RState<T>& t) {
  if (kind == OpKind::Argmax || kind == OpKind::Argmin) {
    reinterpret_cast<int64_t*>(out)[o] = t.valid ? t.idx : 0;
  } else if (!t.valid) {  // nothing reduced: the identity
    reinterpret_cast<T*>(out)[o] = kind == OpKind::Prod ? T(1) : T(0);
  } else {
    reinterpret_cast<T*>(out)[o] = static_cast<T>(t.v);
  }
}

// Positions [begin, end) of output o's reduced elements, every `step`-th from `first`.
template <class T>
__device__ RState<T> fold_range(OpKind kind, const T* x, const ReduceGeom& g, int64_t o,
                                int64_t begin, int64_t end, int64_t first, int64_t step) {
  const int64_t base = kept_offset(g, o);
  RState<T> s = invalid_state<T>();
  for (int64_t j = begin + first; j < end; j += step) fold(kind, s, x[base + red_offset(g, j)], j);
  return s;
}

// The kernels of Note [Reduction kernels] (reduce_plan.h). Block: long rows, one block per
// output.
template <class T>
__global__ void reduce_kernel(OpKind kind, const T* x, char* out, ReduceGeom g) {
  __shared__ RState<T> warps[32];
  for (int64_t o = blockIdx.x; o < g.nout; o += gridDim.x) {
    RState<T> t = block_combine(kind, warps, fold_range(kind, x, g, o, 0, g.count, threadIdx.x,
                                                        blockDim.x));
    if (threadIdx.x == 0) store_result(kind, out, o, t);
  }
}

// A grid of warps, each taking every step-th row from its first.
__device__ int64_t warp_first_row() {
  return static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
}
__device__ int64_t warp_row_step() { return static_cast<int64_t>(gridDim.x) * (blockDim.x / 32); }

// Warps: short rows (softmax's, a layer norm's), one warp per output.
template <class T>
__global__ void reduce_warps(OpKind kind, const T* x, char* out, ReduceGeom g) {
  const int lane = threadIdx.x % 32;
  for (int64_t o = warp_first_row(), step = warp_row_step(); o < g.nout; o += step) {
    RState<T> t = warp_combine(kind, fold_range(kind, x, g, o, 0, g.count, lane, 32));
    if (lane == 0) store_result(kind, out, o, t);
  }
}

// Columns: blocks of 32 outputs × kColumnSlices; blockIdx.y is the part of the columns.
template <class T>
__global__ void reduce_columns(OpKind kind, const T* x, char* out, ReduceGeom g,
                               RState<T>* pieces, int64_t parts) {
  __shared__ RState<T> slices[kColumnSlices][32];
  const int64_t o = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  int64_t begin = 0, end = 0;
  part_range(g.count, parts, blockIdx.y, begin, end);
  RState<T> s = invalid_state<T>();
  if (o < g.nout) s = fold_range(kind, x, g, o, begin, end, threadIdx.y, kColumnSlices);
  slices[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y != 0 || o >= g.nout) return;
  for (int y = 1; y < kColumnSlices; ++y) s = combine(kind, s, slices[y][threadIdx.x]);
  if (parts == 1) store_result(kind, out, o, s);
  else pieces[blockIdx.y * g.nout + o] = s;
}

template <class T>
__global__ void reduce_columns_join(OpKind kind, const RState<T>* pieces, char* out,
                                    int64_t nout, int64_t parts) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; o < nout;
       o += stride) {
    RState<T> s = invalid_state<T>();
    for (int64_t p = 0; p < parts; ++p) s = combine(kind, s, pieces[p * nout + o]);
    store_result(kind, out, o, s);
  }
}

template <class T>
__global__ void reduce_pieces(OpKind kind, const T* x, RState<T>* pieces, ReduceGeom g,
                              int64_t chunks) {
  __shared__ RState<T> warps[32];
  const int64_t o = blockIdx.x / chunks, c = blockIdx.x % chunks;
  int64_t begin = 0, end = 0;
  part_range(g.count, chunks, c, begin, end);
  RState<T> t = block_combine(kind, warps, fold_range(kind, x, g, o, begin, end, threadIdx.x,
                                                      blockDim.x));
  if (threadIdx.x == 0) pieces[blockIdx.x] = t;
}

template <class T>
__global__ void reduce_join(OpKind kind, const RState<T>* pieces, char* out, int64_t chunks) {
  __shared__ RState<T> warps[32];
  const int64_t o = blockIdx.x;
  RState<T> s = invalid_state<T>();
  for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) s = combine(kind, s, pieces[o * chunks + c]);
  RState<T> t = block_combine(kind, warps, s);
  if (threadIdx.x == 0) store_result(kind, out, o, t);
}

// --- softmax rows (Note [Softmax rows], softmax_rows.h) ---------------------------------------

// The warp's values combined (max or sum) in a fixed tree; every lane gets lane 0's result.
__device__ double warp_all(double v, bool is_max) {
  constexpr unsigned kAll = 0xffffffffu;
  for (int off = 16; off > 0; off /= 2) {
    const double o = __shfl_down_sync(kAll, v, off);
    v = is_max ? max_fold(v, o) : v + o;
  }
  return __shfl_sync(kAll, v, 0);
}

// The block's values combined: each warp, then the warps' results by warp 0; every thread gets
// the result. blockDim.x is a multiple of 32.
__device__ double block_all(double* warps, double v, bool is_max) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  v = warp_all(v, is_max);
  if (lane == 0) warps[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const double identity = is_max ? -INFINITY : 0.0;
    const double t = warp_all(lane < nwarps ? warps[lane] : identity, is_max);
    if (lane == 0) warps[0] = t;
  }
  __syncthreads();
  const double r = warps[0];
  __syncthreads();  // before warps is written again
  return r;
}

// Rows of up to 1,024 elements: one warp per row.
template <class T>
__global__ void softmax_warps(OpKind kind, const T* x, T* out, ReduceGeom g) {
  const int lane = threadIdx.x % 32;
  for (int64_t o = warp_first_row(), step = warp_row_step(); o < g.nout; o += step) {
    const int64_t base = kept_offset(g, o);
    const T shift = row_shift<T>(warp_all(row_max_part(x, g, base, lane, 32), true));
    const double sum = warp_all(row_sum_part(x, g, base, shift, lane, 32), false);
    row_write(kind, x, out, g, o, base, shift, sum, lane, 32);
  }
}

// Longer rows: one block per row.
template <class T>
__global__ void softmax_block(OpKind kind, const T* x, T* out, ReduceGeom g) {
  __shared__ double warps[32];
  for (int64_t o = blockIdx.x; o < g.nout; o += gridDim.x) {
    const int64_t base = kept_offset(g, o);
    const T shift =
        row_shift<T>(block_all(warps, row_max_part(x, g, base, threadIdx.x, blockDim.x), true));
    const double sum =
        block_all(warps, row_sum_part(x, g, base, shift, threadIdx.x, blockDim.x), false);
    row_write(kind, x, out, g, o, base, shift, sum, threadIdx.x, blockDim.x);
  }
}

// --- indexing ----------------------------------------------------------------------------------

template <class T>
__global__ void index_kernel(OpKind kind, T* out, const T* x, const int64_t* index, IndexGeom g,
                             int64_t n, const int64_t* skip) {
  if (skip != nullptr && *skip != 0) return;  // an index is out of bounds: nothing is written
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    if (kind == OpKind::ScatterAdd) {  // integers and bools: exact, so any order gives the same
      int64_t dst = 0, src = 0;
      scatter_offsets(g, index, i, dst, src);
      if constexpr (std::is_same_v<T, int64_t>) {
        atomicAdd(reinterpret_cast<unsigned long long*>(out + dst),
                  static_cast<unsigned long long>(x[src]));
      } else if constexpr (std::is_same_v<T, int32_t>) {
        atomicAdd(reinterpret_cast<unsigned*>(out + dst), static_cast<unsigned>(x[src]));
      } else if constexpr (std::is_same_v<T, bool>) {
        if (x[src]) out[dst] = true;  // a sum of bools, stored as bool, is an or
      }
      continue;
    }
    gather_one(kind == OpKind::IndexSelect, g, index, i, out, x);
  }
}

// scatter_add of floats (Note [Scatter without atomics], index_runs.h): the three kernels around
// the sort, each a grid-stride loop over the steps of index_runs.h.
__global__ void scatter_keys(IndexGeom g, const int64_t* index, int64_t n, uint64_t* keys,
                             uint64_t* srcs) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    int64_t dst = 0, src = 0;
    scatter_offsets(g, index, i, dst, src);
    keys[i] = static_cast<uint64_t>(dst);
    srcs[i] = static_cast<uint64_t>(src);
  }
}

template <class T>
__global__ void scatter_pieces(int64_t n, int64_t nchunks, const uint64_t* keys,
                               const uint64_t* srcs, const T* x, uint64_t* piece_keys,
                               double* piece_sums, int32_t* counts) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < nchunks;
       c += stride)
    chunk_pieces(c, n, keys, srcs, x, piece_keys, piece_sums, counts);
}

template <class T>
__global__ void scatter_join(int64_t nchunks, const uint64_t* keys, const uint64_t* piece_keys,
                             const double* piece_sums, const int32_t* counts, T* out,
                             const int64_t* skip) {
  if (skip != nullptr && *skip != 0) return;  // an index is out of bounds: nothing is written
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < nchunks;
       c += stride)
    join_runs(c, nchunks, keys, piece_keys, piece_sums, counts, out);
}

// The workspace of a sorted scatter_add, in 256-byte aligned parts: the keys and sources before
// and after the sort (the first two hold the pieces afterwards), the chunks' piece counts, and
// CUB's own temporary storage.
struct ScatterSpace {
  uint64_t *keys_in, *keys, *srcs_in, *srcs;
  int32_t* counts;
  void* cub_temp;
  size_t cub_bytes;
};

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

int sort_bits(const IndexGeom& g) {
  int bits = 1;
  while (bits < 63 && (uint64_t{1} << bits) < static_cast<uint64_t>(g.out_extent)) ++bits;
  return bits;
}

// With base null, only the sizes: returns the total bytes.
size_t scatter_space(const IndexGeom& g, int64_t n, char* base, ScatterSpace& sp,
                     cudaError_t& error) {
  const size_t keys = align256(static_cast<size_t>(n) * sizeof(uint64_t));
  const size_t counts = align256(static_cast<size_t>((n + kRunChunk - 1) / kRunChunk) * 4);
  sp.cub_bytes = 0;
  error = cub::DeviceRadixSort::SortPairs(nullptr, sp.cub_bytes, static_cast<uint64_t*>(nullptr),
                                          static_cast<uint64_t*>(nullptr),
                                          static_cast<uint64_t*>(nullptr),
                                          static_cast<uint64_t*>(nullptr), n, 0, sort_bits(g));
  if (base != nullptr) {
    sp.keys_in = reinterpret_cast<uint64_t*>(base);
    sp.keys = reinterpret_cast<uint64_t*>(base + keys);
    sp.srcs_in = reinterpret_cast<uint64_t*>(base + 2 * keys);
    sp.srcs = reinterpret_cast<uint64_t*>(base + 3 * keys);
    sp.counts = reinterpret_cast<int32_t*>(base + 4 * keys);
    sp.cub_temp = base + 4 * keys + counts;
  }
  return 4 * keys + counts + align256(sp.cub_bytes);
}

bool sorted_scatter(OpKind kind, DType dtype) {
  return kind == OpKind::ScatterAdd && (dtype == DType::F32 || dtype == DType::F64);
}

// --- sliding windows ---------------------------------------------------------------------------

template <class T>
__global__ void im2col_kernel(T* cols, const T* x, WindowGeom g) {
  const int64_t L = g.OH * g.OW, K = g.kh * g.kw;
  const int64_t n = g.N * g.C * K * L;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    int64_t l = i % L, row = (i / L) % (g.C * K), b = i / (L * g.C * K);
    int64_t c = row / K, k = row % K, ki = k / g.kw, kj = k % g.kw;
    int64_t ih = (l / g.OW) * g.sh - g.ph + ki * g.dh, iw = (l % g.OW) * g.sw - g.pw + kj * g.dw;
    T v = T(0);
    if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) v = x[((b * g.C + c) * g.H + ih) * g.W + iw];
    cols[b * g.col_n_stride + row * g.col_row_stride + l] = v;
  }
}

// The adjoint, one thread per image pixel: it gathers the columns that read it (no atomics).
template <class T>
__global__ void col2im_kernel(T* x, const T* cols, WindowGeom g) {
  const int64_t n = g.N * g.C * g.H * g.W, K = g.kh * g.kw, L = g.OH * g.OW;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    int64_t w = i % g.W, h = (i / g.W) % g.H, c = (i / (g.W * g.H)) % g.C, b = i / (g.W * g.H * g.C);
    Acc<T> sum = 0;
    for (int64_t ki = 0; ki < g.kh; ++ki) {
      int64_t th = h + g.ph - ki * g.dh;
      if (th < 0 || th % g.sh != 0 || th / g.sh >= g.OH) continue;
      for (int64_t kj = 0; kj < g.kw; ++kj) {
        int64_t tw = w + g.pw - kj * g.dw;
        if (tw < 0 || tw % g.sw != 0 || tw / g.sw >= g.OW) continue;
        int64_t row = c * K + ki * g.kw + kj, l = (th / g.sh) * g.OW + tw / g.sw;
        sum += cols[b * g.col_n_stride + row * g.col_row_stride + l];
      }
    }
    (void)L;
    x[i] = static_cast<T>(sum);
  }
}

template <class T>
__global__ void pool_kernel(bool is_max, T* out, int64_t* indices, const T* x, WindowGeom g) {
  const int64_t n = g.N * g.C * g.OH * g.OW;
  const T inv = T(1) / static_cast<T>(g.kh * g.kw);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    int64_t ow = i % g.OW, oh = (i / g.OW) % g.OH, p = i / (g.OW * g.OH);
    const T* plane = x + p * g.H * g.W;
    T best = is_max ? -INFINITY : T(0);
    int64_t arg = -1;
    for (int64_t ki = 0; ki < g.kh; ++ki) {
      int64_t ih = oh * g.sh - g.ph + ki * g.dh;
      if (ih < 0 || ih >= g.H) continue;
      for (int64_t kj = 0; kj < g.kw; ++kj) {
        int64_t iw = ow * g.sw - g.pw + kj * g.dw;
        if (iw < 0 || iw >= g.W) continue;
        int64_t pos = ih * g.W + iw;
        T v = plane[pos];
        if (!is_max) {
          best += v;
        } else if (arg < 0 || v > best || (v != v && best == best)) {  // NaN wins
          best = v;
          arg = pos;
        }
      }
    }
    out[i] = is_max ? best : best * inv;
    if (indices) indices[i] = arg < 0 ? 0 : arg;
  }
}

}  // namespace

void launch_copy(const Strided& s, int64_t n, cudaStream_t stream) {
  dispatch(s.dtype[0], [&](auto to) {
    using To = typename decltype(to)::type;
    dispatch(s.dtype[1], [&](auto from) {
      using From = typename decltype(from)::type;
      launch(s, n, stream, CopyF<To, From>{});
    });
  });
}

void launch_fill(const Strided& s, int64_t n, double value, int64_t value_i, cudaStream_t stream) {
  dispatch(s.dtype[0], [&](auto tag) {
    using T = typename decltype(tag)::type;
    T v;
    if constexpr (std::is_floating_point_v<T>) v = static_cast<T>(value);
    else if constexpr (std::is_same_v<T, bool>) v = value_i != 0 || value != 0;
    else v = static_cast<T>(value_i);
    launch(s, n, stream, FillF<T>{v});
  });
}

void launch_unary(OpKind kind, const OpAttrs& attrs, const Strided& s, int64_t n,
                  cudaStream_t stream) {
  if (try_contiguous(s, n, stream, UnaryF32{kind, attrs})) return;
  dispatch(s.dtype[0], [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(s, n, stream, UnaryF<T>{kind, attrs});
  });
}

void launch_binary(OpKind kind, const Strided& s, int64_t n, cudaStream_t stream) {
  if (!cpu::is_comparison(kind) && try_contiguous(s, n, stream, BinaryF32{kind})) return;
  dispatch(s.dtype[1], [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (cpu::is_comparison(kind)) launch(s, n, stream, CompareF<T>{kind});
    else launch(s, n, stream, BinaryF<T>{kind});
  });
}

void launch_where(const Strided& s, int64_t n, cudaStream_t stream) {
  dispatch(s.dtype[0], [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(s, n, stream, WhereF<T>{});
  });
}

void launch_check_indices(const Strided& s, int64_t n, int64_t size, int64_t* flag,
                          cudaStream_t stream) {
  launch(s, n, stream, CheckF{size, flag});
}

void launch_iota(void* dst, DType dtype, int64_t n, double start, double step,
                 cudaStream_t stream) {
  if (n <= 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    iota_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(static_cast<T*>(dst), n, start, step);
  });
}

void launch_random(int kind, void* dst, DType dtype, int64_t n, uint64_t seed, uint64_t offset,
                   const int64_t* slot, double a, double b, cudaStream_t stream) {
  if (n <= 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    random_kernel<T><<<blocks_for((n + 3) / 4), kThreads, 0, stream>>>(kind, static_cast<T*>(dst),
                                                                       n, seed, offset, slot, a, b);
  });
}

void launch_words(int64_t* dst, const int64_t* words, int64_t n, cudaStream_t stream) {
  for (int64_t done = 0; done < n; done += kWordsPerLaunch) {
    const int part = static_cast<int>(n - done < kWordsPerLaunch ? n - done : kWordsPerLaunch);
    Words w{};
    for (int i = 0; i < part; ++i) w.v[i] = words[done + i];
    words_kernel<<<1, kWordsPerLaunch, 0, stream>>>(dst + done, w, part);
  }
}

void launch_guard(unsigned long long handle, const int64_t* flags, int64_t nflags,
                  cudaStream_t stream) {
  guard_kernel<<<1, 1, 0, stream>>>(handle, flags, nflags);
}

size_t reduce_workspace_bytes(const ReduceGeom& g) {
  const ReducePlan plan = plan_reduce(g);
  return plan.parts > 1 ? static_cast<size_t>(g.nout * plan.parts) * sizeof(RState<double>) : 0;
}

void launch_reduce(OpKind kind, DType dtype, const char* x, char* out, const ReduceGeom& g,
                   void* workspace, cudaStream_t stream) {
  if (g.nout <= 0) return;
  const ReducePlan plan = plan_reduce(g);
  if (plan.parts > 1 && workspace == nullptr) return;  // sized by the caller: cannot happen
  dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* xt = reinterpret_cast<const T*>(x);
    auto* pieces = static_cast<RState<T>*>(workspace);
    switch (plan.path) {
      case ReducePath::Columns: {
        dim3 grid(static_cast<unsigned>((g.nout + 31) / 32), static_cast<unsigned>(plan.parts));
        reduce_columns<T><<<grid, dim3(32, kColumnSlices), 0, stream>>>(kind, xt, out, g, pieces,
                                                                        plan.parts);
        if (plan.parts > 1)
          reduce_columns_join<T><<<blocks_for(g.nout), kThreads, 0, stream>>>(kind, pieces, out,
                                                                              g.nout, plan.parts);
        break;
      }
      case ReducePath::Pieces:
        reduce_pieces<T><<<static_cast<unsigned>(g.nout * plan.parts), kThreads, 0, stream>>>(
            kind, xt, pieces, g, plan.parts);
        reduce_join<T><<<static_cast<unsigned>(g.nout), kThreads, 0, stream>>>(kind, pieces, out,
                                                                              plan.parts);
        break;
      case ReducePath::Warps:
        reduce_warps<T><<<blocks_for(g.nout * 32), kThreads, 0, stream>>>(kind, xt, out, g);
        break;
      case ReducePath::Block: {
        unsigned grid = static_cast<unsigned>(g.nout < (1 << 20) ? g.nout : (1 << 20));
        reduce_kernel<T><<<grid, kThreads, 0, stream>>>(kind, xt, out, g);
        break;
      }
    }
  });
}

void launch_softmax_rows(OpKind kind, DType dtype, const char* x, char* out, const ReduceGeom& g,
                         cudaStream_t stream) {
  if (!softmax_rows_fit(g)) return;  // checked by the caller: cannot happen
  auto run = [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* xt = reinterpret_cast<const T*>(x);
    T* ot = reinterpret_cast<T*>(out);
    if (plan_reduce(g).path == ReducePath::Warps) {
      softmax_warps<T><<<blocks_for(g.nout * 32), kThreads, 0, stream>>>(kind, xt, ot, g);
    } else {
      unsigned grid = static_cast<unsigned>(g.nout < (1 << 20) ? g.nout : (1 << 20));
      softmax_block<T><<<grid, kThreads, 0, stream>>>(kind, xt, ot, g);
    }
  };
  if (dtype == DType::F32)
    run(Tag<float>{});
  else if (dtype == DType::F64)
    run(Tag<double>{});
}

size_t index_workspace_bytes(OpKind kind, DType dtype, const IndexGeom& g, int64_t n) {
  if (!sorted_scatter(kind, dtype) || n <= 0) return 0;
  ScatterSpace sp{};
  cudaError_t error = cudaSuccess;
  return scatter_space(g, n, nullptr, sp, error);
}

cudaError_t launch_index(OpKind kind, DType dtype, char* out, const char* x, const int64_t* index,
                         const IndexGeom& g, int64_t n, void* workspace, size_t workspace_bytes,
                         const int64_t* skip, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (sorted_scatter(kind, dtype)) {
    ScatterSpace sp{};
    cudaError_t error = cudaSuccess;
    size_t need = scatter_space(g, n, static_cast<char*>(workspace), sp, error);
    if (error != cudaSuccess) return error;
    if (workspace == nullptr || workspace_bytes < need) return cudaErrorInvalidValue;
    const int64_t nchunks = (n + kRunChunk - 1) / kRunChunk;
    scatter_keys<<<blocks_for(n), kThreads, 0, stream>>>(g, index, n, sp.keys_in, sp.srcs_in);
    error = cub::DeviceRadixSort::SortPairs(sp.cub_temp, sp.cub_bytes, sp.keys_in, sp.keys,
                                            sp.srcs_in, sp.srcs, n, 0, sort_bits(g), stream);
    if (error != cudaSuccess) return error;
    // The pieces go where the unsorted keys and sources were.
    auto* piece_keys = sp.keys_in;
    auto* piece_sums = reinterpret_cast<double*>(sp.srcs_in);
    dispatch(dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      if constexpr (std::is_floating_point_v<T>) {
        scatter_pieces<T><<<blocks_for(nchunks), kThreads, 0, stream>>>(
            n, nchunks, sp.keys, sp.srcs, reinterpret_cast<const T*>(x), piece_keys, piece_sums,
            sp.counts);
        scatter_join<T><<<blocks_for(nchunks), kThreads, 0, stream>>>(
            nchunks, sp.keys, piece_keys, piece_sums, sp.counts, reinterpret_cast<T*>(out), skip);
      }
    });
    return cudaSuccess;
  }
  dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    index_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(
        kind, reinterpret_cast<T*>(out), reinterpret_cast<const T*>(x), index, g, n, skip);
  });
  return cudaSuccess;
}

void launch_window(OpKind kind, DType dtype, char* out, const char* x, int64_t* indices,
                   const WindowGeom& g, cudaStream_t stream) {
  auto run = [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* o = reinterpret_cast<T*>(out);
    const T* xi = reinterpret_cast<const T*>(x);
    switch (kind) {
      case OpKind::Im2col: {
        int64_t n = g.N * g.C * g.kh * g.kw * g.OH * g.OW;
        if (n > 0) im2col_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(o, xi, g);
        break;
      }
      case OpKind::Col2im: {
        int64_t n = g.N * g.C * g.H * g.W;
        if (n > 0) col2im_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(o, xi, g);
        break;
      }
      default: {
        int64_t n = g.N * g.C * g.OH * g.OW;
        if (n > 0)
          pool_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(kind == OpKind::MaxPool2d, o,
                                                                 indices, xi, g);
        break;
      }
    }
  };
  if (dtype == DType::F64) run(Tag<double>{});
  else run(Tag<float>{});
}

}  // namespace tg::cuda_detail
