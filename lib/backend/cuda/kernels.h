// The CUDA kernels' launch interface: plain structs and functions, so that kernels.cu (nvcc)
// includes no host-only headers (fmt does not compile as CUDA) and cuda_backend.cpp (the C++
// compiler) includes no device code. Every launch is asynchronous on the given stream; the
// caller checks cudaGetLastError() and turns a failure into tg::Error.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "backend/cuda/index_runs.h"
#include "backend/cuda/reduce_plan.h"
#include "backend/op_attrs.h"
#include "ops/op_registry.h"
#include "tapegrad/dtype.h"

namespace tg::cuda_detail {

constexpr int kOperands = 4;  // an elementwise call's output and up to three inputs

// Operands of an elementwise call, all viewed at the output's shape: dims innermost first,
// merged where every operand allows, strides in bytes; operand 0 is the output.
struct Strided {
  int ndim = 0;
  int nops = 0;
  int64_t sizes[kDims];
  int64_t strides[kOperands][kDims];
  char* base[kOperands];
  DType dtype[kOperands];
};

// Sliding windows over contiguous (N, C, H, W) images; columns (N, C*kh*kw, L) with their
// batch and row strides (elements) and contiguous rows.
struct WindowGeom {
  int64_t N, C, H, W, OH, OW;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t col_n_stride, col_row_stride;
};

void launch_copy(const Strided& s, int64_t n, cudaStream_t stream);
// op 0 = value; integers take value_i exactly.
void launch_fill(const Strided& s, int64_t n, double value, int64_t value_i, cudaStream_t stream);
void launch_unary(OpKind kind, const OpAttrs& attrs, const Strided& s, int64_t n,
                  cudaStream_t stream);
// Comparisons write bool; everything else the inputs' dtype.
void launch_binary(OpKind kind, const Strided& s, int64_t n, cudaStream_t stream);
// out, cond (bool), a, b.
void launch_where(const Strided& s, int64_t n, cudaStream_t stream);
void launch_iota(void* dst, DType dtype, int64_t n, double start, double step,
                 cudaStream_t stream);
// kind: 0 uniform [a, b), 1 normal (a, b), 2 integers [a, b): the CPU's Philox streams. With
// `slot` (device, two i64) the seed and offset are read from there when the kernel runs.
void launch_random(int kind, void* dst, DType dtype, int64_t n, uint64_t seed, uint64_t offset,
                   const int64_t* slot, double a, double b, cudaStream_t stream);
// dst[i] = words[i] for i < n (device, i64): the values travel as the kernel's parameters.
void launch_words(int64_t* dst, const int64_t* words, int64_t n, cudaStream_t stream);
// Sets the conditional node `handle` (a cudaGraphConditionalHandle) of the graph being recorded
// to 1 where flags[2k] is zero for every k < nflags (device), else 0.
void launch_guard(unsigned long long handle, const int64_t* flags, int64_t nflags,
                  cudaStream_t stream);
// Few long rows are reduced in two passes through a workspace of this many bytes (0: none).
size_t reduce_workspace_bytes(const ReduceGeom& g);
void launch_reduce(OpKind kind, DType dtype, const char* x, char* out, const ReduceGeom& g,
                   void* workspace, cudaStream_t stream);
// softmax, log_softmax or logsumexp of floating x over its last dims, where softmax_rows_fit(g)
// (Note [Softmax rows], softmax_rows.h).
void launch_softmax_rows(OpKind kind, DType dtype, const char* x, char* out, const ReduceGeom& g,
                         cudaStream_t stream);
// flag (device, two i64, zeroed by the caller): flag[0] becomes 1 when an index of the strided
// i64 operand 0 of s lies outside [-size, size), and flag[1] one such index.
void launch_check_indices(const Strided& s, int64_t n, int64_t size, int64_t* flag,
                          cudaStream_t stream);
// scatter_add of floats sorts (Note [Scatter without atomics]) in a workspace of this many
// bytes (0: none needed); it is a device query, so it needs the GPU.
size_t index_workspace_bytes(OpKind kind, DType dtype, const IndexGeom& g, int64_t n);
// The error of the sort (CUB), if any; launch errors are left to cudaGetLastError(). With
// `skip` (device), nothing is written when *skip is not zero at the time the kernels run.
cudaError_t launch_index(OpKind kind, DType dtype, char* out, const char* x, const int64_t* index,
                         const IndexGeom& g, int64_t n, void* workspace, size_t workspace_bytes,
                         const int64_t* skip, cudaStream_t stream);
void launch_window(OpKind kind, DType dtype, char* out, const char* x, int64_t* indices,
                   const WindowGeom& g, cudaStream_t stream);

}  // namespace tg::cuda_detail

#ifndef __CUDACC__
#include <initializer_list>

namespace tg {
struct TensorImpl;
struct Window2d;
namespace cuda_detail {
// The operands of an elementwise call, the first its output, as Strided holds them (host code,
// cuda_backend.cpp).
Strided make_strided(std::initializer_list<const TensorImpl*> ops);
// The geometry of backend window(kind, out, x, w).
WindowGeom make_window_geom(OpKind kind, const TensorImpl& out, const TensorImpl& x,
                            const Window2d& w);
}  // namespace cuda_detail
}  // namespace tg
#endif
