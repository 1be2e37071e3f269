// The CPU backend's kernels, one function per Backend entry (cpu_backend.cpp wires them up).
#pragma once

#include "backend/backend.h"

namespace tg::cpu {

void copy_kernel(const TensorImpl& dst, const TensorImpl& src);
void fill_kernel(const TensorImpl& dst, Scalar value);
void unary_kernel(OpKind kind, const TensorImpl& out, const TensorImpl& x, const OpAttrs& attrs);
void binary_kernel(OpKind kind, const TensorImpl& out, const TensorImpl& a, const TensorImpl& b);
void fused_kernel(const std::vector<FusedStep>& steps, const TensorImpl& out,
                  const TensorImpl* const* in, size_t nin);
// A fused group summed over its trailing nreduced dims; false when this kernel does not take it.
bool fused_sum_kernel(const std::vector<FusedStep>& steps, const TensorImpl& out,
                      const TensorImpl* const* in, size_t nin, int nreduced);
void where_kernel(const TensorImpl& out, const TensorImpl& cond, const TensorImpl& a,
                  const TensorImpl& b);
void reduce_kernel(OpKind kind, const TensorImpl& out, const TensorImpl& x, int nreduced);
void matmul_kernel(const TensorImpl& out, const TensorImpl& a, const TensorImpl& b);
void matmul_update_kernel(const TensorImpl& out, const TensorImpl& a, const TensorImpl& b,
                          double alpha, double beta, const TensorImpl* scale);
void index_kernel(OpKind kind, const TensorImpl& out, const TensorImpl& x, int dim,
                  const TensorImpl& index);
// The first index out of bounds [-size, size) of `index` (i64) in row-major order, if any.
bool find_bad_index(const TensorImpl& index, int64_t size, int64_t& bad);
void window_kernel(OpKind kind, const TensorImpl& out, const TensorImpl& x, const Window2d& w,
                   const TensorImpl* indices);
void random_kernel(RandomKind kind, const TensorImpl& dst, uint64_t seed, uint64_t offset,
                   double a, double b);
void iota_kernel(const TensorImpl& dst, double start, double step);

void set_blas_threads(int n);

}  // namespace tg::cpu
