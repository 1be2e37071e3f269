// How a product becomes one cuBLAS strided-batched gemm (Note [Products on cuBLAS]). Plain C++,
// no cuBLAS types, so that the plan is tested on machines without a GPU (test_cuda_runs.cpp).
#pragma once

#include <algorithm>
#include <cstdint>

#include "core/tensor_impl.h"

namespace tg::cuda_detail {

// Note [Products on cuBLAS]
// cuBLAS is column-major; tapegrad's matrices are row-major views. A row-major (r × c) view with
// element strides (rs, cs) is, read column-major, its own transpose with leading dimension rs
// when cs is 1 (no op), or itself with leading dimension cs when rs is 1 (op T). So out = a · b
// (out B×m×n contiguous) is computed as outᵀ = bᵀ · aᵀ: cuBLAS's first operand is b, its second
// a, its m and n are our n and m, and out's leading dimension is n. An operand with no unit
// stride in its matrix (a broadcast row, a strided slice of both dims) is copied contiguous
// first; a batch of one, or a batch stride of 0, is a stride of 0 for cuBLAS.

// A row-major (r × c) operand with element strides (rs, cs) as cuBLAS sees it; ok false: neither.
struct BlasView {
  bool ok = false;
  bool transpose = false;  // op T
  int64_t ld = 0;
};
inline BlasView blas_view(int64_t r, int64_t c, int64_t rs, int64_t cs) {
  if (c == 1) cs = 1;
  if (r == 1) rs = std::max<int64_t>(c, 1);
  if (cs == 1 && rs >= std::max<int64_t>(c, 1)) return {true, false, rs};
  if (rs == 1 && cs >= std::max<int64_t>(r, 1)) return {true, true, cs};
  return {};
}

// The arguments of cublas<t>gemmStridedBatched for out = a · b, in its order: the first operand
// is b, the second a. a and b are 3-D views blas_view takes (after any copy).
struct GemmPlan {
  bool trans_first = false, trans_second = false;
  int64_t m = 0, n = 0, k = 0;  // cuBLAS's: our n, m, k
  int64_t ld_first = 0, ld_second = 0, ld_out = 0;
  int64_t stride_first = 0, stride_second = 0, stride_out = 0;
  int64_t batch = 0;
};
inline GemmPlan plan_gemm(const TensorImpl& out, const TensorImpl& a, const TensorImpl& b) {
  const int64_t m = out.sizes[1], n = out.sizes[2], k = a.sizes[2];
  const BlasView va = blas_view(m, k, a.strides[1], a.strides[2]);
  const BlasView vb = blas_view(k, n, b.strides[1], b.strides[2]);
  GemmPlan p;
  p.trans_first = vb.transpose;
  p.trans_second = va.transpose;
  p.m = n;
  p.n = m;
  p.k = k;
  p.ld_first = vb.ld;
  p.ld_second = va.ld;
  p.ld_out = n;
  p.stride_first = b.sizes[0] == 1 ? 0 : b.strides[0];
  p.stride_second = a.sizes[0] == 1 ? 0 : a.strides[0];
  p.stride_out = m * n;
  p.batch = out.sizes[0];
  return p;
}

}  // namespace tg::cuda_detail
