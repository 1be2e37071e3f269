// Strided N-d loops over several operands of one shape, with dim coalescing, and dtype dispatch.
#pragma once

#include <algorithm>
#include <cstdint>

#include "backend/parallel.h"
#include "core/check.h"
#include "core/tensor_impl.h"

namespace tg::cpu {

inline constexpr int kMaxOperands = 4;
inline constexpr int kMaxDims = 16;
// Elements below which a loop runs on one thread: spawning costs more than it saves.
inline constexpr int64_t kParallelGrain = 32768;

// Operands of one shape, dims ordered innermost first and merged where memory allows.
// Strides are in bytes, so operands of different dtypes share one loop.
struct Loop {
  int nops = 0;
  int ndim = 0;
  int64_t numel = 1;
  // Only the first ndim entries (and nops operands) are meaningful; left uninitialized on purpose,
  // since zeroing them costs more than the loop over a small tensor.
  int64_t sizes[kMaxDims];
  int64_t strides[kMaxOperands][kMaxDims];
  char* base[kMaxOperands] = {};
  int64_t inner_size() const { return ndim ? sizes[0] : 1; }
};

// ops[0] is the output; all must share ops[0]'s sizes.
Loop make_loop(std::initializer_list<const TensorImpl*> ops);

// Calls row(ptrs, strides, n) for rows of the innermost dim covering elements [begin, end) in
// row-major order; `strides[k]` is operand k's inner stride in bytes.
template <class Row>
void loop_range(const Loop& L, int64_t begin, int64_t end, Row&& row) {
  if (end <= begin) return;  // nothing; a dim of size 0 would divide below
  char* ptrs[kMaxOperands];
  int64_t inner[kMaxOperands];
  for (int k = 0; k < L.nops; ++k) inner[k] = L.ndim ? L.strides[k][0] : 0;
  if (L.ndim <= 1) {
    for (int k = 0; k < L.nops; ++k) ptrs[k] = L.base[k] + begin * inner[k];
    row(ptrs, inner, end - begin);
    return;
  }
  // Position of `begin` as a multi-index over the outer dims.
  int64_t idx[kMaxDims] = {};
  int64_t n0 = L.sizes[0];
  int64_t rest = begin / n0;
  int64_t col = begin % n0;
  for (int d = 1; d < L.ndim; ++d) {
    idx[d] = rest % L.sizes[d];
    rest /= L.sizes[d];
  }
  int64_t pos = begin;
  while (pos < end) {
    for (int k = 0; k < L.nops; ++k) {
      char* p = L.base[k] + col * inner[k];
      for (int d = 1; d < L.ndim; ++d) p += idx[d] * L.strides[k][d];
      ptrs[k] = p;
    }
    int64_t n = std::min(n0 - col, end - pos);
    row(ptrs, inner, n);
    pos += n;
    col = 0;
    for (int d = 1; d < L.ndim; ++d) {
      if (++idx[d] < L.sizes[d]) break;
      idx[d] = 0;
    }
  }
}

int num_threads();

// Runs loop_range over all elements, split across threads when there are enough of them.
template <class Row>
void for_each_row(const Loop& L, Row&& row) {
  int64_t n = L.numel;
  if (n == 0) return;
  int threads = num_threads();
  if (n < kParallelGrain || threads <= 1) {
    loop_range(L, 0, n, row);
    return;
  }
  int64_t chunks = std::min<int64_t>(threads, n / (kParallelGrain / 2));
  run_chunks(chunks, threads,
             [&](int64_t c) { loop_range(L, n * c / chunks, n * (c + 1) / chunks, row); });
}

// Runs f(begin, end) over [0, n) in parallel chunks when n is large.
template <class F>
void parallel_for(int64_t n, int64_t grain, F&& f) {
  int threads = num_threads();
  if (n < grain || threads <= 1) {
    if (n > 0) f(int64_t{0}, n);
    return;
  }
  int64_t chunks = std::min<int64_t>(threads, (n + grain - 1) / grain);
  run_chunks(chunks, threads, [&](int64_t c) { f(n * c / chunks, n * (c + 1) / chunks); });
}

}  // namespace tg::cpu

// Runs the block with `T` as the C++ type of dtype `dt`.
#define TG_DISPATCH_CASE(dt, ctype, ...) \
  case dt: {                             \
    using T = ctype;                     \
    __VA_ARGS__();                       \
    break;                               \
  }
#define TG_DISPATCH_ALL(dtype, ...)                     \
  switch (dtype) {                                      \
    TG_DISPATCH_CASE(::tg::kF32, float, __VA_ARGS__)    \
    TG_DISPATCH_CASE(::tg::kF64, double, __VA_ARGS__)   \
    TG_DISPATCH_CASE(::tg::kI32, int32_t, __VA_ARGS__)  \
    TG_DISPATCH_CASE(::tg::kI64, int64_t, __VA_ARGS__)  \
    TG_DISPATCH_CASE(::tg::kBool, bool, __VA_ARGS__)    \
  }
#define TG_DISPATCH_FLOAT(dtype, ...)                 \
  switch (dtype) {                                    \
    TG_DISPATCH_CASE(::tg::kF32, float, __VA_ARGS__)  \
    TG_DISPATCH_CASE(::tg::kF64, double, __VA_ARGS__) \
    default: TG_INTERNAL_ASSERT(false && "floating dtype expected"); \
  }
