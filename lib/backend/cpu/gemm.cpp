// CPU matmul: OpenBLAS sgemm/dgemm (gemv when one side is a vector), strided views passed
// through as transposes without copying; integer matmul by plain loops.
#include <vector>

#include "backend/cpu/cpu_kernels.h"
#include "backend/cpu/loops.h"

// The few CBLAS entry points used, declared here so no BLAS header leaks in (enums are ints).
extern "C" {
void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha, const float* a,
                 int lda, const float* b, int ldb, float beta, float* c, int ldc);
void cblas_dgemm(int order, int ta, int tb, int m, int n, int k, double alpha, const double* a,
                 int lda, const double* b, int ldb, double beta, double* c, int ldc);
void cblas_sgemv(int order, int trans, int m, int n, float alpha, const float* a, int lda,
                 const float* x, int incx, float beta, float* y, int incy);
void cblas_dgemv(int order, int trans, int m, int n, double alpha, const double* a, int lda,
                 const double* x, int incx, double beta, double* y, int incy);
void openblas_set_num_threads(int n);
}

namespace tg::cpu {
namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

// How BLAS can read a rows×cols matrix with strides (rs, cs): row-major (NoTrans, ld = rs) or
// column-major (Trans, ld = cs). Neither: copy first.
struct Layout {
  bool ok;
  int trans;
  int64_t ld;
};
Layout blas_layout(int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  if ((cs == 1 || cols == 1) && (rs >= std::max<int64_t>(cols, 1) || rows == 1))
    return {true, kNoTrans, rows == 1 ? std::max<int64_t>(cols, 1) : rs};
  if ((rs == 1 || rows == 1) && (cs >= std::max<int64_t>(rows, 1) || cols == 1))
    return {true, kTrans, cols == 1 ? std::max<int64_t>(rows, 1) : cs};
  return {false, 0, 0};
}

bool fits_int(int64_t v) { return v <= INT32_MAX; }

template <class T>
void gemm(int ta, int tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
          int64_t ldb, T* c, int64_t ldc) {
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(kRowMajor, ta, tb, (int)m, (int)n, (int)k, 1.0f, a, (int)lda, b, (int)ldb, 0.0f, c, (int)ldc);
  else
    cblas_dgemm(kRowMajor, ta, tb, (int)m, (int)n, (int)k, 1.0, a, (int)lda, b, (int)ldb, 0.0, c, (int)ldc);
}

template <class T>
void gemv(int trans, int64_t m, int64_t n, const T* a, int64_t lda, const T* x, int64_t incx, T* y,
          int64_t incy) {
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemv(kRowMajor, trans, (int)m, (int)n, 1.0f, a, (int)lda, x, (int)incx, 0.0f, y, (int)incy);
  else
    cblas_dgemv(kRowMajor, trans, (int)m, (int)n, 1.0, a, (int)lda, x, (int)incx, 0.0, y, (int)incy);
}

// One (m×k)·(k×n) product with element strides; c is m×n with row stride ldc.
template <class T>
void matmul_2d(const T* a, int64_t m, int64_t k, int64_t ars, int64_t acs, const T* b, int64_t n,
               int64_t brs, int64_t bcs, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, T(0));
    return;
  }
  std::vector<T> acopy, bcopy;
  Layout la = blas_layout(m, k, ars, acs), lb = blas_layout(k, n, brs, bcs);
  if (!la.ok || !fits_int(la.ld)) {  // gather into a contiguous copy
    acopy.resize(static_cast<size_t>(m * k));
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < k; ++j) acopy[i * k + j] = a[i * ars + j * acs];
    a = acopy.data(), ars = k, acs = 1;
    la = {true, kNoTrans, k};
  }
  if (!lb.ok || !fits_int(lb.ld)) {
    bcopy.resize(static_cast<size_t>(k * n));
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < n; ++j) bcopy[i * n + j] = b[i * brs + j * bcs];
    b = bcopy.data(), brs = n, bcs = 1;
    lb = {true, kNoTrans, n};
  }
  if (m == 1 && fits_int(acs)) {
    // c (1×n) = a (1×k) · b: y = bᵀ x, with b read in whichever layout it has.
    if (lb.trans == kNoTrans) gemv<T>(kTrans, k, n, b, lb.ld, a, acs, c, 1);
    else gemv<T>(kNoTrans, n, k, b, lb.ld, a, acs, c, 1);
    return;
  }
  if (n == 1 && fits_int(brs) && fits_int(ldc)) {
    if (la.trans == kNoTrans) gemv<T>(kNoTrans, m, k, a, la.ld, b, brs, c, ldc);
    else gemv<T>(kTrans, k, m, a, la.ld, b, brs, c, ldc);
    return;
  }
  gemm<T>(la.trans, lb.trans, m, n, k, a, la.ld, b, lb.ld, c, ldc);
}

// Note [One thread pool]
// OpenBLAS keeps its own pool of threads, and ours (OpenMP) spins for a while after each parallel
// loop: with both on the same cores each steals the other's, and 2 threads ran slower than 1.
// So OpenBLAS always runs single-threaded, and matmul splits its work over our pool: whole
// products of a batch, else blocks of rows (or of columns when there are few rows), each block
// one BLAS call.
template <class T>
void matmul_parallel(const T* a, int64_t m, int64_t k, int64_t ars, int64_t acs, const T* b,
                     int64_t n, int64_t brs, int64_t bcs, T* c) {
  constexpr int64_t kMinWork = 1 << 18;  // multiply-adds per block
  int threads = num_threads();
  int64_t work = m * n * std::max<int64_t>(k, 1);
  int64_t blocks = std::min<int64_t>(threads, work / kMinWork);
  if (blocks <= 1) return matmul_2d<T>(a, m, k, ars, acs, b, n, brs, bcs, c, n);
  bool by_rows = m >= n || m >= 8 * blocks;
  int64_t extent = by_rows ? m : n;
  blocks = std::min(blocks, extent);
#pragma omp parallel for num_threads(static_cast<int>(blocks)) schedule(static)
  for (int64_t t = 0; t < blocks; ++t) {
    int64_t lo = extent * t / blocks, hi = extent * (t + 1) / blocks;
    if (by_rows)
      matmul_2d<T>(a + lo * ars, hi - lo, k, ars, acs, b, n, brs, bcs, c + lo * n, n);
    else
      matmul_2d<T>(a, m, k, ars, acs, b + lo * bcs, hi - lo, brs, bcs, c + lo, n);
  }
}

template <class T>
void matmul_2d_loops(const T* a, int64_t m, int64_t k, int64_t ars, int64_t acs, const T* b,
                     int64_t n, int64_t brs, int64_t bcs, T* c) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      T acc = 0;
      for (int64_t p = 0; p < k; ++p) acc = static_cast<T>(acc + a[i * ars + p * acs] * b[p * brs + j * bcs]);
      c[i * n + j] = acc;
    }
}

}  // namespace

void matmul_kernel(const TensorImpl& out, const TensorImpl& a, const TensorImpl& b) {
  int64_t batch = out.sizes[0], m = out.sizes[1], n = out.sizes[2], k = a.sizes[2];
  TG_CHECK(fits_int(m) && fits_int(n) && fits_int(k),
           "matmul: sizes {}x{}x{} are too large for BLAS (at most 2^31-1 each)", m, k, n);
  TG_DISPATCH_ALL(out.dtype, [&] {
    const T* pa = reinterpret_cast<const T*>(a.data());
    const T* pb = reinterpret_cast<const T*>(b.data());
    T* pc = reinterpret_cast<T*>(out.data());
    auto one = [&](int64_t i) {
      const T* ai = pa + i * a.strides[0];
      const T* bi = pb + i * b.strides[0];
      T* ci = pc + i * m * n;
      if constexpr (std::is_floating_point_v<T>) {
        if (batch == 1)
          matmul_parallel<T>(ai, m, k, a.strides[1], a.strides[2], bi, n, b.strides[1], b.strides[2], ci);
        else
          matmul_2d<T>(ai, m, k, a.strides[1], a.strides[2], bi, n, b.strides[1], b.strides[2], ci, n);
      } else {
        matmul_2d_loops<T>(ai, m, k, a.strides[1], a.strides[2], bi, n, b.strides[1], b.strides[2], ci);
      }
    };
    // A batch goes over the pool one product per task (Note [One thread pool]).
    int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, m * n * k));
    if (batch == 1) one(0);
    else parallel_for(batch, grain, [&](int64_t lo, int64_t hi) { for (int64_t i = lo; i < hi; ++i) one(i); });
  });
}

// OpenBLAS stays on one thread whatever n is (Note [One thread pool]).
void set_blas_threads(int) { openblas_set_num_threads(1); }

}  // namespace tg::cpu
