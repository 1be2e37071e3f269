// cuBLAS for the emulated GPU (Note [An emulated GPU], runtime.cpp): built as libcublas.so.13 in a
// directory the emulated-GPU test program searches first, so the backend's dlopen finds it. The
// entry points the backend uses, with the arguments checked as cuBLAS documents them, the product
// computed on the host by its column-major definition and queued on the handle's stream.
#include <cublas_v2.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>

#include "emu.h"

struct cublasContext {
  int device = 0;  // current when it was made: its products run there only
  cudaStream_t stream = nullptr;
  void* workspace = nullptr;  // the caller's (cublasSetWorkspace), or none: cuBLAS's own pool
  size_t workspace_bytes = 0;
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
};

namespace {

// f32 rounded to TF32 (10 bits of mantissa, to nearest even), as tensor cores read it.
float tf32(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  if ((b & 0x7f800000u) != 0x7f800000u) b = (b + 0xfffu + ((b >> 13) & 1u)) & ~0x1fffu;
  std::memcpy(&v, &b, sizeof b);
  return v;
}

template <class T>
cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                    int k, const T* alpha, const T* A, int lda, long long sa, const T* B, int ldb,
                    long long sb, const T* beta, T* C, int ldc, long long sc, int batch) {
  if (h == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  auto bad = [](const char* why) {
    std::fprintf(stderr, "emulated cuBLAS: %s\n", why);
    return CUBLAS_STATUS_INVALID_VALUE;
  };
  int current = 0;
  (void)cudaGetDevice(&current);
  if (current != h->device) return bad("a handle made on another device (one handle per device)");
  const bool na = ta == CUBLAS_OP_N, nb = tb == CUBLAS_OP_N;
  if ((!na && ta != CUBLAS_OP_T) || (!nb && tb != CUBLAS_OP_T)) return bad("transpose not N or T");
  if (m < 0 || n < 0 || k < 0 || batch < 0) return bad("a negative size");
  if (lda < std::max(1, na ? m : k)) return bad("lda too small");
  if (ldb < std::max(1, nb ? k : n)) return bad("ldb too small");
  if (ldc < std::max(1, m)) return bad("ldc too small");
  if (sa < 0 || sb < 0 || sc < 0) return bad("a negative batch stride");
  if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
  // Every element the product reads or writes lies in one device allocation.
  auto extent = [&](long long rows, long long cols, long long ld, long long stride) {
    return static_cast<size_t>(((batch - 1) * stride + (cols - 1) * ld + rows) *
                               static_cast<long long>(sizeof(T)));
  };
  if (k > 0 && !tgemu_is_device(A, extent(na ? m : k, na ? k : m, lda, sa)))
    return bad("A reaches outside its device allocation");
  if (k > 0 && !tgemu_is_device(B, extent(nb ? k : n, nb ? n : k, ldb, sb)))
    return bad("B reaches outside its device allocation");
  if (!tgemu_is_device(C, extent(m, n, ldc, sc)))
    return bad("C reaches outside its device allocation");
  if (tgemu_capturing(h->stream) && h->workspace == nullptr) {
    std::fprintf(stderr, "emulated cuBLAS: a captured product without the caller's workspace "
                         "(cuBLAS would allocate inside the recording)\n");
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  const T a = *alpha, b = *beta;  // host pointer mode: read at the call
  const bool round = sizeof(T) == 4 && h->math == CUBLAS_TF32_TENSOR_OP_MATH;
  auto* body = new std::function<void()>([=] {
    auto in = [&](T v) { return round ? static_cast<T>(tf32(static_cast<float>(v))) : v; };
    for (int p = 0; p < batch; ++p) {
      const T* Ab = A + p * sa;
      const T* Bb = B + p * sb;
      T* Cb = C + p * sc;
      for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) {
          double acc = 0;
          for (int l = 0; l < k; ++l) {
            const T x = na ? Ab[i + static_cast<long long>(l) * lda]
                           : Ab[l + static_cast<long long>(i) * lda];
            const T y = nb ? Bb[l + static_cast<long long>(j) * ldb]
                           : Bb[j + static_cast<long long>(l) * ldb];
            acc += static_cast<double>(in(x)) * static_cast<double>(in(y));
          }
          T& c = Cb[i + static_cast<long long>(j) * ldc];
          // beta == 0: C is not read (it may hold anything, NaN included).
          c = b == T(0) ? static_cast<T>(a * acc) : static_cast<T>(a * acc + b * c);
        }
    }
  });
  if (tgemu_submit(h->stream, "gemm", body) != cudaSuccess) return CUBLAS_STATUS_EXECUTION_FAILED;
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

extern "C" {

cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  *handle = new cublasContext;
  (void)cudaGetDevice(&(*handle)->device);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

// As documented: setting the stream also puts the handle back on cuBLAS's own workspace pool.
cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  handle->workspace = nullptr;
  handle->workspace_bytes = 0;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void* workspace, size_t bytes) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (bytes > 0 && !tgemu_is_device(workspace, bytes)) return CUBLAS_STATUS_INVALID_VALUE;
  handle->workspace = bytes > 0 ? workspace : nullptr;
  handle->workspace_bytes = bytes;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta,
                                         cublasOperation_t tb, int m, int n, int k,
                                         const float* alpha, const float* A, int lda,
                                         long long sa, const float* B, int ldb, long long sb,
                                         const float* beta, float* C, int ldc, long long sc,
                                         int batch) {
  return gemm(h, ta, tb, m, n, k, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch);
}

cublasStatus_t cublasDgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta,
                                         cublasOperation_t tb, int m, int n, int k,
                                         const double* alpha, const double* A, int lda,
                                         long long sa, const double* B, int ldb, long long sb,
                                         const double* beta, double* C, int ldc, long long sc,
                                         int batch) {
  return gemm(h, ta, tb, m, n, k, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch);
}

const char* cublasGetStatusName(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    default: return "CUBLAS_STATUS_INTERNAL_ERROR";
  }
}

const char* cublasGetStatusString(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid value was used as an argument";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    default: return "emulated cuBLAS error";
  }
}

// How a test tells this library from cuBLAS.
bool tgemu_is_emulated_cublas() { return true; }

}  // extern "C"
