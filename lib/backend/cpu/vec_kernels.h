// Vectorized f32 kernels over contiguous runs, compiled once per instruction set (baseline x86-64,
// AVX2+FMA, AVX-512) and chosen at run time, so one build runs fast here and still runs on an
// AVX2-only machine. Each returns nullptr for ops it does not cover; the strided reference
// kernels handle those.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "backend/backend.h"

namespace tg::cpu {

using UnaryF32 = void (*)(float* out, const float* x, int64_t n, const OpAttrs& attrs);
// a_vec / b_vec false: that operand is one value broadcast over the run.
using BinaryF32 = void (*)(float* out, const float* a, bool a_vec, const float* b, bool b_vec,
                           int64_t n);

struct VecKernels {
  std::string_view isa;
  UnaryF32 (*unary_f32)(OpKind kind);
  BinaryF32 (*binary_f32)(OpKind kind);
  // The sum of n contiguous floats, accumulated in f64 (in a fixed order for a given n).
  double (*sum_f32)(const float* x, int64_t n);
  // c (m×n, row stride ldc) = alpha·a·b + beta·c, a (m×k) and b (k×n) with element strides
  // (ars, acs), (brs, bcs); either b's rows are contiguous (bcs == 1 or n == 1), or b's columns
  // and a's rows are (brs == 1, acs == 1), which makes c dot products unless b's rows are
  // contiguous and n >= 16. beta 0 only writes c (Note [Skinny products]).
  void (*gemm_skinny_f32)(int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                          int64_t ars, int64_t acs, const float* b, int64_t brs, int64_t bcs,
                          float beta, float* c, int64_t ldc);
  // out = cond ? a : b over a run; a_vec / b_vec false: that operand is one broadcast value.
  void (*where_f32)(float* out, const bool* cond, const float* a, bool a_vec, const float* b,
                    bool b_vec, int64_t n);
  // Max pooling of one contiguous plane (row length W) with 2x2 windows and stride 2: OH x OW
  // maxima and their flat indices in the plane (NaN wins, the first maximum on ties).
  void (*max_pool_2x2_f32)(float* out, int64_t* idx, const float* plane, int64_t OH, int64_t OW,
                           int64_t W);
  // The AVX-512 table's 16-lane GELU, __m512 (*)(__m512) (zmm0 in and out), which compiled
  // fused groups call (jit.cpp); null in the other tables.
  const void* gelu16;
  // The AVX-512 table's 16-lane form of a unary op with the same bits as its kernel (same
  // calling convention as gelu16), or null: exp, log, tanh, sigmoid, log1p, erf, softplus,
  // log_sigmoid, gelu.
  const void* (*lanes16)(OpKind kind);
};

// The best table this CPU supports (TAPEGRAD_ISA=baseline|avx2|avx512 forces one, for tests and
// benchmarks; a forced ISA the CPU lacks falls back to the best available).
const VecKernels& vec_kernels();
// Every table this CPU can run, best last.
std::vector<const VecKernels*> available_vec_kernels();

}  // namespace tg::cpu
