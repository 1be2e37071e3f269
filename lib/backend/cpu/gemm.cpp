// CPU matmul: OpenBLAS sgemm/dgemm (gemv when one side is a vector), strided views passed
// through as transposes without copying; integer matmul by plain loops.
#include <cctype>
#include <string>
#include <vector>

#include "backend/cpu/cpu_kernels.h"
#include "backend/cpu/loops.h"
#include "backend/cpu/vec_kernels.h"

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
char* openblas_get_corename() __attribute__((weak));
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
void gemm(int ta, int tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(kRowMajor, ta, tb, (int)m, (int)n, (int)k, alpha, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
  else
    cblas_dgemm(kRowMajor, ta, tb, (int)m, (int)n, (int)k, alpha, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
}

template <class T>
void gemv(int trans, int64_t m, int64_t n, T alpha, const T* a, int64_t lda, const T* x,
          int64_t incx, T beta, T* y, int64_t incy) {
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemv(kRowMajor, trans, (int)m, (int)n, alpha, a, (int)lda, x, (int)incx, beta, y, (int)incy);
  else
    cblas_dgemv(kRowMajor, trans, (int)m, (int)n, alpha, a, (int)lda, x, (int)incx, beta, y, (int)incy);
}

// Note [Which GEMM]
// f32 products go to our own unpacked kernels (Note [Skinny products], vec_kernels.cpp) when
//   - they are skinny: at most 16 rows, or an inner dimension of at most 16, where BLAS's
//     packing and clearing cost more than the arithmetic (and c has at least 16 columns, or
//     at most 16 rows and at least 2 columns, or its entries are dot products of contiguous
//     rows). A batch of 10 through a 10-wide layer (10×500 · 500×10) took 4.4 µs in BLAS and
//     2.2 in ours; a tall one (500×10 · 10×10, its weight gradient) stays with BLAS, which
//     took 1.9 µs there against our 5;
//   - or this CPU has AVX-512 and OpenBLAS runs narrower kernels: its SSE3-era ones (in VMs
//     whose CPU it does not recognize; see the README) or its AVX2 ones (Haswell, Zen: what
//     OPENBLAS_CORETYPE=Haswell forces, and what 0.3.21 picks on some AMD CPUs). Ours reach
//     80-90 GFLOP/s at 60×1000×1000 where the SSE3 kernels reach about 33 and the AVX2 ones
//     about 65-70; a whole MLP step at batch 60 ran 34-46% faster with ours on an AVX-512 AMD
//     EPYC. OpenBLAS's AVX-512 kernels reach about 100, so they keep the rest when it has them.
//     Dot-product layouts (a·bᵀ) stay with BLAS above 256 rows.
// Everything else, and f64, goes to BLAS.
constexpr int64_t kSkinny = 16, kDotRows = 256;

bool blas_is_weak() {
  static const bool weak = [] {
    if (vec_kernels().isa != "avx512" || openblas_get_corename == nullptr) return false;
    std::string name = openblas_get_corename();
    for (char& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    for (const char* strong : {"skylakex", "cooperlake", "sapphirerapids"})
      if (name.find(strong) != std::string::npos) return false;
    return true;
  }();
  return weak;
}

// c (m×n, row stride ldc) = alpha·a·b + beta·c for one (m×k)·(k×n) product with element strides;
// beta 0 only writes c.
template <class T>
void matmul_2d(const T* a, int64_t m, int64_t k, int64_t ars, int64_t acs, const T* b, int64_t n,
               int64_t brs, int64_t bcs, T* c, int64_t ldc, T alpha = 1, T beta = 0) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0 ? T(0) : beta * c[i * ldc + j];
    return;
  }
  if constexpr (std::is_same_v<T, float>) {
    // Rows of b need a full vector of columns; a matrix times a vector is dot products (or gemv).
    bool skinny = m <= kSkinny || k <= kSkinny, weak = blas_is_weak();
    bool rows = bcs == 1 && (n >= 16 || (m <= kSkinny && n > 1)), dots = brs == 1 && acs == 1;
    if ((rows && (skinny || weak)) || (dots && (m <= kSkinny || (weak && m <= kDotRows))))
      return vec_kernels().gemm_skinny_f32(m, n, k, alpha, a, ars, acs, b, brs, bcs, beta, c, ldc);
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
    if (lb.trans == kNoTrans) gemv<T>(kTrans, k, n, alpha, b, lb.ld, a, acs, beta, c, 1);
    else gemv<T>(kNoTrans, n, k, alpha, b, lb.ld, a, acs, beta, c, 1);
    return;
  }
  if (n == 1 && fits_int(brs) && fits_int(ldc)) {
    if (la.trans == kNoTrans) gemv<T>(kNoTrans, m, k, alpha, a, la.ld, b, brs, beta, c, ldc);
    else gemv<T>(kTrans, k, m, alpha, a, la.ld, b, brs, beta, c, ldc);
    return;
  }
  gemm<T>(la.trans, lb.trans, m, n, k, alpha, a, la.ld, b, lb.ld, beta, c, ldc);
}

// Note [One thread pool]
// OpenBLAS keeps its own pool of threads, and ours spins for a while after each parallel loop
// (Note [Waking the pool], backend/parallel.cpp): with both on the same cores each steals the
// other's, and 2 threads ran slower than 1.
// So OpenBLAS always runs single-threaded, and matmul splits its work over our pool: whole
// products of a batch, else blocks of rows (or of columns when there are few rows), each block
// one BLAS call.
template <class T>
void matmul_parallel(const T* a, int64_t m, int64_t k, int64_t ars, int64_t acs, const T* b,
                     int64_t n, int64_t brs, int64_t bcs, T* c, int64_t ldc, T alpha = 1,
                     T beta = 0) {
  constexpr int64_t kMinWork = 1 << 18;  // multiply-adds per block
  int threads = num_threads();
  int64_t work = m * n * std::max<int64_t>(k, 1);
  int64_t blocks = std::min<int64_t>(threads, work / kMinWork);
  if (blocks <= 1) return matmul_2d<T>(a, m, k, ars, acs, b, n, brs, bcs, c, ldc, alpha, beta);
  bool by_rows = m >= n || m >= 8 * blocks;
  int64_t extent = by_rows ? m : n;
  blocks = std::min(blocks, extent);
  run_chunks(blocks, static_cast<int>(blocks), [&](int64_t t) {
    int64_t lo = extent * t / blocks, hi = extent * (t + 1) / blocks;
    if (by_rows)
      matmul_2d<T>(a + lo * ars, hi - lo, k, ars, acs, b, n, brs, bcs, c + lo * ldc, ldc, alpha,
                   beta);
    else
      matmul_2d<T>(a, m, k, ars, acs, b + lo * bcs, hi - lo, brs, bcs, c + lo, ldc, alpha, beta);
  });
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
          matmul_parallel<T>(ai, m, k, a.strides[1], a.strides[2], bi, n, b.strides[1], b.strides[2], ci, n);
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

void matmul_update_kernel(const TensorImpl& out, const TensorImpl& a, const TensorImpl& b,
                          double alpha, double beta, const TensorImpl* scale) {
  int64_t m = out.sizes[1], n = out.sizes[2], k = a.sizes[2];
  TG_INTERNAL_ASSERT(out.sizes[0] == 1 && (out.strides[2] == 1 || n == 1) && out.strides[1] >= n);
  TG_CHECK(fits_int(m) && fits_int(n) && fits_int(k) && fits_int(out.strides[1]),
           "matmul: sizes {}x{}x{} are too large for BLAS (at most 2^31-1 each)", m, k, n);
  double s = 1;
  if (scale != nullptr) {
    TG_INTERNAL_ASSERT(is_floating(scale->dtype) && scale->numel == 1);
    s = scale->dtype == kF64 ? *reinterpret_cast<const double*>(scale->data())
                             : static_cast<double>(*reinterpret_cast<const float*>(scale->data()));
  }
  TG_DISPATCH_FLOAT(out.dtype, [&] {
    matmul_parallel<T>(reinterpret_cast<const T*>(a.data()), m, k, a.strides[1], a.strides[2],
                       reinterpret_cast<const T*>(b.data()), n, b.strides[1], b.strides[2],
                       reinterpret_cast<T*>(out.data()), out.strides[1],
                       static_cast<T>(alpha * s), static_cast<T>(beta));
  });
}

// OpenBLAS stays on one thread whatever n is (Note [One thread pool]).
void set_blas_threads(int) { openblas_set_num_threads(1); }

}  // namespace tg::cpu
