// One instruction set's vectorized f32 kernels: this file is compiled three times with different
// -m flags and TG_VEC_NS (see lib/CMakeLists.txt). Plain loops over branch-free math that the
// compiler vectorizes; the polynomials are Cephes' single-precision ones (about 1 ulp).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "backend/cpu/vec_kernels.h"

namespace tg::cpu::TG_VEC_NS {
namespace {

inline float exp_f32(float x) {
  const float inv_ln2 = 1.44269504088896341f, c1 = 0.693359375f, c2 = -2.12194440e-4f;
  const float magic = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer in the low bits
  float xc = x < -104.0f ? -104.0f : x;
  xc = xc > 89.0f ? 89.0f : xc;
  float t = xc * inv_ln2 + magic;
  float n = t - magic;
  int32_t ni = std::bit_cast<int32_t>(t) - std::bit_cast<int32_t>(magic);
  float r = xc - n * c1 - n * c2;  // |r| <= ln2/2
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = p * r * r + r + 1.0f;
  // 2^n in two halves, so that n down to -150 (denormal results) stays representable.
  int32_t n1 = ni >> 1, n2 = ni - n1;
  float s1 = std::bit_cast<float>((n1 + 127) << 23), s2 = std::bit_cast<float>((n2 + 127) << 23);
  float res = y * s1 * s2;
  res = x > 88.72283935f ? INFINITY : res;
  res = x < -103.972084f ? 0.0f : res;
  return x != x ? x : res;
}

inline float log_f32(float x) {
  bool denormal = x < 1.17549435e-38f;
  float xs = denormal ? x * 8388608.0f : x;  // 2^23
  int32_t bits = std::bit_cast<int32_t>(xs);
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126) - (denormal ? 23.0f : 0.0f);
  float m = std::bit_cast<float>((bits & 0x007fffff) | 0x3f000000);  // [0.5, 1)
  bool small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  float z = m * m;
  float p = 7.0376836292e-2f;
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  float y = p * m * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  float r = m + y + 0.693359375f * e;
  r = x == INFINITY ? x : r;
  r = x == 0.0f ? -INFINITY : r;
  r = x < 0.0f ? NAN : r;
  return x != x ? x : r;
}

inline float tanh_f32(float x) {
  float ax = std::fabs(x);
  // Small |x|: odd polynomial (no cancellation). Else 1 - 2/(e^2|x| + 1), with x's sign.
  float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  float small = p * z * x + x;
  float big = 1.0f - 2.0f / (exp_f32(2.0f * ax) + 1.0f);
  big = std::copysign(big, x);
  float r = ax < 0.625f ? small : big;
  return x != x ? x : r;
}

inline float sigmoid_f32(float x) { return 1.0f / (1.0f + exp_f32(-x)); }

// log(1 + x) as log(u) · x / (u - 1) with u = 1 + x rounded: the quotient corrects u's rounding.
inline float log1p_f32(float x) {
  float u = 1.0f + x;
  float r = log_f32(u) * (x / (u - 1.0f));
  r = u == 1.0f ? x : r;
  return u == INFINITY ? u : r;
}

// e^x for x <= 0 (no overflow to handle; NaN passes through the arithmetic).
inline float exp_neg_f32(float x) {
  const float inv_ln2 = 1.44269504088896341f, c1 = 0.693359375f, c2 = -2.12194440e-4f;
  const float magic = 12582912.0f;
  float xc = x < -104.0f ? -104.0f : x;
  float t = xc * inv_ln2 + magic;
  float n = t - magic;
  int32_t ni = std::bit_cast<int32_t>(t) - std::bit_cast<int32_t>(magic);
  float r = xc - n * c1 - n * c2;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = p * r * r + r + 1.0f;
  int32_t n1 = ni >> 1, n2 = ni - n1;
  float s1 = std::bit_cast<float>((n1 + 127) << 23), s2 = std::bit_cast<float>((n2 + 127) << 23);
  return y * s1 * s2;
}

// Note [Vectorized erf]
// The normal tail Q(t) = P(N(0,1) > t) = erfc(t/√2)/2 is e^(-t²/2) · u·K(u) for t >= 0, with
// u = 1/(1 + 0.3t) in (0, 1]: K is a degree-10 fit over all of it (mpmath's Chebyshev fit of
// the exact function; 4.2e-8 relative error with the coefficients rounded to f32). The square in
// e^(-t²/2) is split into its rounded value and its rounding error (Dekker's product), so Q
// keeps its relative accuracy far into the tail. GELU is x·Φ(x), Φ(x) = 1 - Q(x) for x >= 0 and
// Q(-x) below: one tail, no cancellation on either side (gelu(-12) is about -1e-32 and comes out
// with f32's relative precision, where 1 + erf(x/√2) would give 0), and no second branch to
// compute and throw away. erf(z) = z·P(z²) for |z| < 0.5 (P degree 4 in z² over [0, 0.25], fit
// error 1.4e-9), 1 - 2Q(√2|z|) with z's sign beyond.
inline float erf_small_f32(float z, float zz) {
  float p = 4.7190825672e-3f;
  p = p * zz - 2.6757732735e-2f;
  p = p * zz + 1.1282831428e-1f;
  p = p * zz - 3.7612609007e-1f;
  p = p * zz + 1.1283791656e+0f;
  return z * p;
}

// The exact square x·x = hi + lo: one fused multiply-add where the ISA has it, else Dekker's
// splitting.
inline void square_f32(float x, float& hi, float& lo) {
#ifdef __FMA__
  hi = x * x;
  lo = std::fma(x, x, -hi);
  return;
#endif
  const float split = 4097.0f;  // 2^12 + 1
  float c = split * x;
  float xh = c - (c - x), xl = x - xh;
  hi = x * x;
  lo = ((xh * xh - hi) + 2.0f * xh * xl) + xl * xl;
}

// Q(t) = P(N(0,1) > t) = erfc(t/√2)/2 for 0 <= t <= 30, given t² = sq_hi + sq_lo.
inline float normal_tail_f32(float t, float sq_hi, float sq_lo) {
#ifdef __FMA__
  using Real = float;
#else
  // Without fused multiply-adds, u's rounding (which K's slope amplifies) and Horner's would
  // cost f32 its last bits: there u·K(u) is worked out in f64.
  using Real = double;
#endif
  Real u = Real(1) / (Real(1) + static_cast<Real>(0.3f) * t);
  Real k = Real(-9.328864515e-03f);
  k = k * u + Real(3.188470751e-02f);
  k = k * u - Real(1.604540832e-02f);
  k = k * u - Real(4.890748486e-02f);
  k = k * u + Real(3.437221795e-02f);
  k = k * u + Real(1.101758610e-02f);
  k = k * u + Real(6.186449900e-02f);
  k = k * u + Real(8.683051914e-02f);
  k = k * u + Real(1.089477837e-01f);
  k = k * u + Real(1.196817458e-01f);
  k = k * u + Real(1.196826920e-01f);
  float e = exp_neg_f32(-0.5f * sq_hi);
  e = e - e * (0.5f * sq_lo);  // e^(-(hi+lo)/2) = e^(-hi/2)·(1 - lo/2), lo below an ulp of hi
  return e * static_cast<float>(u * k);
}

inline float erf_f32(float z) {
  const float sqrt2 = 1.41421356237309505f;
  float a = std::fabs(z), hi, lo;
  a = a > 20.0f ? 20.0f : a;  // erfc(20) is 0 in f32
  float t = a * sqrt2;        // (its rounding moves erfc by far less than erf's ulp)
  square_f32(t, hi, lo);
  float big = std::copysign(1.0f - 2.0f * normal_tail_f32(t, hi, lo), z);
  float r = a < 0.5f ? erf_small_f32(z, a * a) : big;
  return z != z ? z : r;
}

inline float gelu_f32(float x) {
  float t = std::fabs(x);
  t = t > 30.0f ? 30.0f : t;  // Q(30) is 0 in f32 (so gelu(-inf) is -inf·0, NaN, as defined)
  float hi, lo;
  square_f32(t, hi, lo);
  float q = normal_tail_f32(t, hi, lo);
  return x * (x < 0.0f ? q : 1.0f - q);
}

template <class F>
void map(float* __restrict out, const float* __restrict x, int64_t n, F f) {
  for (int64_t i = 0; i < n; ++i) out[i] = f(x[i]);
}
// out may alias x exactly (in-place ops), which restrict-free loops handle.
template <class F>
void map_alias(float* out, const float* x, int64_t n, F f) {
  if (out == x) {
    for (int64_t i = 0; i < n; ++i) out[i] = f(out[i]);
  } else {
    map(out, x, n, f);
  }
}

#define TG_VEC_UNARY(name, expr)                                     \
  void name(float* out, const float* x, int64_t n, const OpAttrs&) { \
    map_alias(out, x, n, [](float v) { return expr; });              \
  }
TG_VEC_UNARY(v_exp, exp_f32(v))
TG_VEC_UNARY(v_log, log_f32(v))
TG_VEC_UNARY(v_tanh, tanh_f32(v))
TG_VEC_UNARY(v_sigmoid, sigmoid_f32(v))
TG_VEC_UNARY(v_neg, -v)
TG_VEC_UNARY(v_abs, std::fabs(v))
TG_VEC_UNARY(v_sqrt, std::sqrt(v))
TG_VEC_UNARY(v_rsqrt, 1.0f / std::sqrt(v))
TG_VEC_UNARY(v_relu, v > 0.0f ? v : (v != v ? v : 0.0f))
TG_VEC_UNARY(v_erf, erf_f32(v))
#if defined(__AVX512F__)
// gelu_f32's arithmetic, 16 lanes at a time by hand: the exponent's 2^n is one vscalefps (exact
// down into the denormals, no clamp, no integer work) and the tail's mask one compare, about a
// quarter fewer instructions than the compiler's version of the scalar code.
__m512 gelu16(__m512 x) {
  auto c = [](float v) { return _mm512_set1_ps(v); };
  const __m512 one = c(1.0f);
  __m512 t = _mm512_min_ps(_mm512_abs_ps(x), c(30.0f));
  __m512 hi = _mm512_mul_ps(t, t), lo = _mm512_fmsub_ps(t, t, hi);
  __m512 u = _mm512_div_ps(one, _mm512_fmadd_ps(c(0.3f), t, one));
  __m512 k = c(-9.328864515e-03f);
  for (float coef :
       {3.188470751e-02f, -1.604540832e-02f, -4.890748486e-02f, 3.437221795e-02f, 1.101758610e-02f,
        6.186449900e-02f, 8.683051914e-02f, 1.089477837e-01f, 1.196817458e-01f, 1.196826920e-01f})
    k = _mm512_fmadd_ps(k, u, c(coef));
  // e^(-hi/2): n = round(a/ln2), a - n·ln2 in two parts, the Cephes polynomial, times 2^n.
  __m512 a = _mm512_mul_ps(hi, c(-0.5f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(a, c(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, c(0.693359375f), a);
  r = _mm512_fnmadd_ps(n, c(-2.12194440e-4f), r);
  __m512 p = c(1.9875691500e-4f);
  for (float coef :
       {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
    p = _mm512_fmadd_ps(p, r, c(coef));
  __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), one);
  __m512 e = _mm512_scalef_ps(y, n);
  e = _mm512_fnmadd_ps(e, _mm512_mul_ps(lo, c(0.5f)), e);
  __m512 q = _mm512_mul_ps(e, _mm512_mul_ps(u, k));
  __mmask16 negative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
  __m512 phi = _mm512_mask_blend_ps(negative, _mm512_sub_ps(one, q), q);
  return _mm512_mul_ps(x, phi);
}

void v_gelu(float* out, const float* x, int64_t n, const OpAttrs&) {
  for (int64_t i = 0; i < n; i += 16) {
    auto m = static_cast<__mmask16>(n - i >= 16 ? 0xffff : (1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(out + i, m, gelu16(_mm512_maskz_loadu_ps(m, x + i)));
  }
}
#else
TG_VEC_UNARY(v_gelu, gelu_f32(v))
#endif
TG_VEC_UNARY(v_log1p, log1p_f32(v))
TG_VEC_UNARY(v_softplus, (v > 0.0f ? v : 0.0f) + log1p_f32(exp_f32(-std::fabs(v))))
TG_VEC_UNARY(v_log_sigmoid, (v < 0.0f ? v : 0.0f) - log1p_f32(exp_f32(-std::fabs(v))))
TG_VEC_UNARY(v_sign, v != v ? v : static_cast<float>((v > 0.0f) - (v < 0.0f)))
#undef TG_VEC_UNARY

void v_clamp(float* out, const float* x, int64_t n, const OpAttrs& attrs) {
  const float lo = static_cast<float>(attrs.a), hi = static_cast<float>(attrs.b);
  map_alias(out, x, n, [=](float v) {
    float r = v < lo ? lo : v;
    r = r > hi ? hi : r;
    return v != v ? v : r;
  });
}

// Common exponents get exact short forms; the rest go through std::pow, one element at a time.
void v_pow_scalar(float* out, const float* x, int64_t n, const OpAttrs& attrs) {
  const double e = attrs.a;
  if (e == 2) {
    map_alias(out, x, n, [](float v) { return v * v; });
  } else if (e == 1) {
    map_alias(out, x, n, [](float v) { return v; });
  } else if (e == 3) {
    map_alias(out, x, n, [](float v) { return v * v * v; });
  } else {
    const float ef = static_cast<float>(e);
    map_alias(out, x, n, [=](float v) { return std::pow(v, ef); });
  }
}

#if defined(__AVX512F__)
// 16 lanes of the same scalar definitions as the kernels above, for compiled fused groups to
// call (jit.cpp): a loop of 16 the compiler turns into one pass of the vector code it makes for
// the kernels' loops, lane for lane the same arithmetic.
#define TG_LANES16(name, expr)     \
  __m512 name(__m512 in) {         \
    alignas(64) float lanes[16];   \
    _mm512_store_ps(lanes, in);    \
    for (float& v : lanes) v = expr; \
    return _mm512_load_ps(lanes);  \
  }
TG_LANES16(exp16, exp_f32(v))
TG_LANES16(log16, log_f32(v))
TG_LANES16(tanh16, tanh_f32(v))
TG_LANES16(sigmoid16, sigmoid_f32(v))
TG_LANES16(log1p16, log1p_f32(v))
TG_LANES16(erf16, erf_f32(v))
TG_LANES16(softplus16, (v > 0.0f ? v : 0.0f) + log1p_f32(exp_f32(-std::fabs(v))))
TG_LANES16(log_sigmoid16, (v < 0.0f ? v : 0.0f) - log1p_f32(exp_f32(-std::fabs(v))))
#undef TG_LANES16

const void* lanes16(OpKind kind) {
  switch (kind) {
    case OpKind::Exp: return reinterpret_cast<const void*>(&exp16);
    case OpKind::Log: return reinterpret_cast<const void*>(&log16);
    case OpKind::Tanh: return reinterpret_cast<const void*>(&tanh16);
    case OpKind::Sigmoid: return reinterpret_cast<const void*>(&sigmoid16);
    case OpKind::Log1p: return reinterpret_cast<const void*>(&log1p16);
    case OpKind::Erf: return reinterpret_cast<const void*>(&erf16);
    case OpKind::Softplus: return reinterpret_cast<const void*>(&softplus16);
    case OpKind::LogSigmoid: return reinterpret_cast<const void*>(&log_sigmoid16);
    case OpKind::Gelu: return reinterpret_cast<const void*>(&gelu16);
    default: return nullptr;
  }
}
#else
const void* lanes16(OpKind) { return nullptr; }
#endif

UnaryF32 unary(OpKind kind) {
  switch (kind) {
    case OpKind::Exp:
      return v_exp;
    case OpKind::Log:
      return v_log;
    case OpKind::Tanh:
      return v_tanh;
    case OpKind::Sigmoid:
      return v_sigmoid;
    case OpKind::Neg:
      return v_neg;
    case OpKind::Abs:
      return v_abs;
    case OpKind::Sqrt:
      return v_sqrt;
    case OpKind::Rsqrt:
      return v_rsqrt;
    case OpKind::Relu:
      return v_relu;
    case OpKind::Erf:
      return v_erf;
    case OpKind::Gelu:
      return v_gelu;
    case OpKind::Log1p:
      return v_log1p;
    case OpKind::Softplus:
      return v_softplus;
    case OpKind::LogSigmoid:
      return v_log_sigmoid;
    case OpKind::Sign:
      return v_sign;
    case OpKind::Clamp:
      return v_clamp;
    case OpKind::PowScalar:
      return v_pow_scalar;
    default:
      return nullptr;
  }
}

template <class F>
void zip(float* out, const float* a, bool av, const float* b, bool bv, int64_t n, F f) {
  if (av && bv) {
    for (int64_t i = 0; i < n; ++i) out[i] = f(a[i], b[i]);
  } else if (av) {
    const float s = *b;
    for (int64_t i = 0; i < n; ++i) out[i] = f(a[i], s);
  } else if (bv) {
    const float s = *a;
    for (int64_t i = 0; i < n; ++i) out[i] = f(s, b[i]);
  } else {
    const float r = f(*a, *b);
    for (int64_t i = 0; i < n; ++i) out[i] = r;
  }
}

#define TG_VEC_BINARY(name, expr)                                                      \
  void name(float* out, const float* a, bool av, const float* b, bool bv, int64_t n) { \
    zip(out, a, av, b, bv, n, [](float x, float y) { return expr; });                  \
  }
TG_VEC_BINARY(v_add, x + y)
TG_VEC_BINARY(v_sub, x - y)
TG_VEC_BINARY(v_mul, x* y)
TG_VEC_BINARY(v_div, x / y)
TG_VEC_BINARY(v_max, (x != x || y != y) ? x + y : (x > y ? x : y))
TG_VEC_BINARY(v_min, (x != x || y != y) ? x + y : (x < y ? x : y))
#undef TG_VEC_BINARY

BinaryF32 binary(OpKind kind) {
  switch (kind) {
    case OpKind::Add:
      return v_add;
    case OpKind::Sub:
      return v_sub;
    case OpKind::Mul:
      return v_mul;
    case OpKind::Div:
      return v_div;
    case OpKind::Maximum:
      return v_max;
    case OpKind::Minimum:
      return v_min;
    default:
      return nullptr;
  }
}

// Note [Skinny products]
// A product with few rows (a batch of 1 to 16 going forward or back) or a short inner dimension
// (the weight gradient of a small batch, k = batch) is mostly memory traffic, and BLAS's general
// path spends it packing both operands and clearing c before it starts (its SSE3 fallback, which
// OpenBLAS picks in VMs it does not recognize, is slower still). Two kernels, no packing:
//   b's rows contiguous (x·W): c is cut into panels of 128 columns, so the panel of b (k × 128)
//     stays in L2 while every group of 4 rows of c streams it; a tile of 4 rows by 32 columns
//     of c lives in eight 16-float registers, each a value broadcast from wherever it is;
//   b's columns contiguous (δ·Wᵀ, a's rows contiguous too): c[i][j] is the dot product of two
//     contiguous rows; tiles of 4 by 4 dot products, 16 lanes each, summed at the end.
// c is read (beta != 0) and written once; beta = 0 never reads it, so a NaN there cannot leak.
// Column tails use masked loads and stores (AVX-512) or plain loops.
// Which memory is warm matters as much as the arithmetic at batch 10: a training step reads a
// 784×500 weight (1.6 MB, more than L2) going forward, then reads and writes it in its update.
// Updates walk the panels last to first, so they start on what the forward product left in L2,
// and the next forward starts on what the update touched last; a batch of 9 to 12 rows is one
// group, so each panel of b is streamed once. On a traced MLP step at batch 10 (AMD EPYC, one
// core) the first took 182 to 150 µs and the second 150 to 140. Neither changes a bit: panels
// and row groups only reorder independent sums.
// Dot products are the wrong shape when they are short: δ·Wᵀ through a 10-wide layer is 5000
// dot products of 10 terms, each one masked multiply and a 16-lane horizontal sum. With k at
// most 16, b (k×n) is copied row-major first (20 KB at 10×500; not when it would pass 4 MB)
// and c's rows streamed from it: 20 µs to 2.5 µs at 10×10×500, and 15% off the whole step.
// The kernels keep their epilogue loops unrolled (#pragma GCC unroll): left rolled, GCC kept
// the 16 sums of an 8×2 tile in memory, cleared with rep stos, and the update of a 784×500
// weight at batch 10 took 110 µs instead of 65.
using V16 = float __attribute__((vector_size(64), aligned(4)));

inline V16 load16(const float* p) {
  V16 v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
inline void store16(float* p, V16 v) { __builtin_memcpy(p, &v, sizeof v); }
// The first `count` (< 16) lanes; the others are zero, or left alone when storing.
inline V16 load_part(const float* p, int64_t count) {
#if defined(__AVX512F__)
  return reinterpret_cast<V16>(_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << count) - 1), p));
#else
  V16 v = {};
  for (int64_t i = 0; i < count; ++i) v[i] = p[i];
  return v;
#endif
}
inline void store_part(float* p, V16 v, int64_t count) {
#if defined(__AVX512F__)
  _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << count) - 1), reinterpret_cast<__m512>(v));
#else
  for (int64_t i = 0; i < count; ++i) p[i] = v[i];
#endif
}
// 32 running f64 sums (four 512-bit registers), so the adds do not wait on each other. Each
// takes four elements at a time, added in f32 as a pairwise tree (error at most 1.5 ulp of their
// magnitudes): the conversions to f64 and the f64 adds, which cost the most, are a quarter.
// In full, the order every table keeps (tests/test_kernels.cpp checks it bit for bit):
//   acc[k] += f64((x[i+k] + x[i+k+32]) + (x[i+k+64] + x[i+k+96])) per 128 elements, k < 32;
//   acc[k] += f64(x[i+k]) per 32 after that, then for the k < 32 that are left;
//   acc[k] += acc[k+w] for w = 16, 8, 4, 2, 1 and k < w; acc[0] is the sum.
// The sums stay in registers throughout; lanes past the end add +0, which changes nothing (a
// sum that starts at +0 is never -0).
using V8d = double __attribute__((vector_size(64), aligned(8)));
using V4d = double __attribute__((vector_size(32), aligned(8)));
using V2d = double __attribute__((vector_size(16), aligned(8)));
double sum(const float* x, int64_t n) {
  V8d a0 = {}, a1 = {}, a2 = {}, a3 = {};  // acc[0..7], [8..15], [16..23], [24..31]
  auto add = [](V16 v, V8d& lo, V8d& hi) {
    lo += __builtin_convertvector(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7), V8d);
    hi += __builtin_convertvector(__builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15), V8d);
  };
  int64_t i = 0;
  for (; i + 128 <= n; i += 128) {
    const float* p = x + i;
    add((load16(p) + load16(p + 32)) + (load16(p + 64) + load16(p + 96)), a0, a1);
    add((load16(p + 16) + load16(p + 48)) + (load16(p + 80) + load16(p + 112)), a2, a3);
  }
  for (; i + 32 <= n; i += 32) {
    add(load16(x + i), a0, a1);
    add(load16(x + i + 16), a2, a3);
  }
  if (i < n) {
    const int64_t rest = n - i;
    add(rest >= 16 ? load16(x + i) : load_part(x + i, rest), a0, a1);
    if (rest > 16) add(load_part(x + i + 16, rest - 16), a2, a3);
  }
  a0 += a2;
  a1 += a3;
  a0 += a1;
  V4d q = __builtin_shufflevector(a0, a0, 0, 1, 2, 3) + __builtin_shufflevector(a0, a0, 4, 5, 6, 7);
  V2d h = __builtin_shufflevector(q, q, 0, 1) + __builtin_shufflevector(q, q, 2, 3);
  return h[0] + h[1];
}

inline float hsum(V16 v) {
  float s = 0;
  for (int i = 0; i < 16; ++i) s += v[i];
  return s;
}

// R rows × C vectors of c at column j; w lanes in the last vector (16: all). ap holds the R rows
// of a packed p-major (ap[p·R + r]), so one pointer walks them.
constexpr int64_t kAhead = 24;  // rows of b prefetched ahead

template <int R, int C>
void nn_tile(int64_t j, int64_t w, int64_t k, float alpha, const float* ap, const float* b,
             int64_t ldb, float beta, float* c, int64_t ldc) {
  V16 acc[R][C] = {};
  const float* bp = b + j;
  for (int64_t p = 0; p < k; ++p, bp += ldb, ap += R) {
    V16 bv[C];
    // b's rows are far apart: the hardware does not prefetch that stride, so ask ahead.
    for (int h = 0; h < C; ++h) __builtin_prefetch(bp + kAhead * ldb + 16 * h);
    for (int h = 0; h < C; ++h)
      bv[h] = (h + 1 < C || w == 16) ? load16(bp + 16 * h) : load_part(bp + 16 * h, w);
    for (int r = 0; r < R; ++r)
      for (int h = 0; h < C; ++h) acc[r][h] += ap[r] * bv[h];
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int h = 0; h < C; ++h) {
      float* cp = c + r * ldc + j + 16 * h;
      bool full = h + 1 < C || w == 16;
      V16 v = alpha * acc[r][h];
      if (beta != 0) v += beta * (full ? load16(cp) : load_part(cp, w));
      if (full)
        store16(cp, v);
      else
        store_part(cp, v, w);
    }
}

// R rows of c over columns [j0, j1): tiles of 16·C columns, then of 16, then one partial
// vector. AVX-512's 32 registers hold 8 rows × 2 vectors of sums; other ISAs use fewer rows.
#if defined(__AVX512F__)
constexpr int kTileRows = 8;
#else
constexpr int kTileRows = 4;
#endif
template <int R>
void nn_rows(int64_t j0, int64_t j1, int64_t k, float alpha, const float* ap, const float* b,
             int64_t ldb, float beta, float* c, int64_t ldc) {
  constexpr int C = R >= 4 ? 2 : 8 / R;
  int64_t j = j0;
  for (; j + 16 * C <= j1; j += 16 * C) nn_tile<R, C>(j, 16, k, alpha, ap, b, ldb, beta, c, ldc);
  for (; j + 16 <= j1; j += 16) nn_tile<R, 1>(j, 16, k, alpha, ap, b, ldb, beta, c, ldc);
  if (j < j1) nn_tile<R, 1>(j, j1 - j, k, alpha, ap, b, ldb, beta, c, ldc);
}

// Dot products of R rows of a with J rows of bt (b transposed), each k long and contiguous.
template <int R, int J>
void nt_tile(int64_t k, float alpha, const float* a, int64_t ars, const float* bt, int64_t ldb,
             float beta, float* c, int64_t ldc) {
  V16 acc[R][J] = {};
  int64_t p = 0;
  auto step = [&](int64_t w) {
    V16 av[R], bv[J];
    for (int r = 0; r < R; ++r)
      av[r] = w == 16 ? load16(a + r * ars + p) : load_part(a + r * ars + p, w);
    for (int q = 0; q < J; ++q)
      bv[q] = w == 16 ? load16(bt + q * ldb + p) : load_part(bt + q * ldb + p, w);
    for (int r = 0; r < R; ++r)
      for (int q = 0; q < J; ++q) acc[r][q] += av[r] * bv[q];
  };
  for (; p + 16 <= k; p += 16) step(16);
  if (p < k) step(k - p);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int q = 0; q < J; ++q) {
      float* cp = c + r * ldc + q;
      float v = alpha * hsum(acc[r][q]);
      *cp = beta == 0 ? v : v + beta * *cp;
    }
}

template <int R>
void nt_rows(int64_t n, int64_t k, float alpha, const float* a, int64_t ars, const float* bt,
             int64_t ldb, float beta, float* c, int64_t ldc) {
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) nt_tile<R, 4>(k, alpha, a, ars, bt + j * ldb, ldb, beta, c + j, ldc);
  for (; j < n; ++j) nt_tile<R, 1>(k, alpha, a, ars, bt + j * ldb, ldb, beta, c + j, ldc);
}

// Rows of c in groups of G, then of 4, 2 and 1: f<R>(i) handles rows [i, i + R).
template <int G, class F>
void row_groups(int64_t m, F&& f) {
  int64_t i = 0;
  for (; i + G <= m; i += G) f.template operator()<G>(i);
  if constexpr (G > 4)
    for (; i + 4 <= m; i += 4) f.template operator()<4>(i);
  for (; i + 2 <= m; i += 2) f.template operator()<2>(i);
  for (; i < m; ++i) f.template operator()<1>(i);
}

// The row groups of a skinny product: with AVX-512's registers, 9 to 12 rows (a batch of 10)
// are one group, so each panel of b is streamed once instead of twice (8 rows, then the rest).
// A row's sums are the same whatever group it is in.
template <class F>
void skinny_groups(int64_t m, F&& f) {
  if constexpr (kTileRows == 8) {
    switch (m) {
      case 9: return f.template operator()<9>(0);
      case 10: return f.template operator()<10>(0);
      case 11: return f.template operator()<11>(0);
      case 12: return f.template operator()<12>(0);
      default: break;
    }
  }
  row_groups<kTileRows>(m, f);
}

void gemm_skinny(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t ars,
                 int64_t acs, const float* b, int64_t brs, int64_t bcs, float beta, float* c,
                 int64_t ldc) {
  bool dots = brs == 1 && acs == 1;
  if (dots && bcs != 1 && k <= 16 && n >= 16 && k * n <= (int64_t{1} << 20)) {
    // Short dot products (δ·Wᵀ of a narrow layer, k = its width) would each cost a horizontal
    // sum for a few multiply-adds: b (k×n, at most 16 rows) is copied row-major instead, and
    // its rows streamed like any other (Note [Skinny products]).
    thread_local std::vector<float> rows_of_b;
    if (rows_of_b.size() < static_cast<size_t>(k * n)) rows_of_b.resize(static_cast<size_t>(k * n));
    float* bp = rows_of_b.data();
    for (int64_t j = 0; j < n; ++j)
      for (int64_t p = 0; p < k; ++p) bp[p * n + j] = b[p + j * bcs];
    b = bp, brs = n, bcs = 1, dots = false;
  }
  if ((bcs == 1 || n == 1) && (n >= 16 || !dots)) {
    // a packed once: the group of rows from i holds its R rows p-major at i·k.
    thread_local std::vector<float> packed;
    if (packed.size() < static_cast<size_t>(m * k)) packed.resize(static_cast<size_t>(m * k));
    float* ap = packed.data();
    skinny_groups(m, [&]<int R>(int64_t i) {
      for (int64_t p = 0; p < k; ++p)
        for (int r = 0; r < R; ++r) ap[i * k + p * R + r] = a[(i + r) * ars + p * acs];
    });
    // An update (beta != 0) walks the panels from the last: a training step's forward product
    // read the weight first to last just before, so its last panels are still in L2, and the
    // next step's forward starts on the panels the update touched last (Note [Skinny products]).
    constexpr int64_t kPanel = 128;
    const int64_t npanels = (n + kPanel - 1) / kPanel;
    for (int64_t q = 0; q < npanels; ++q) {
      int64_t j0 = (beta != 0 ? npanels - 1 - q : q) * kPanel;
      int64_t j1 = std::min(n, j0 + kPanel);
      skinny_groups(m, [&]<int R>(int64_t i) {
        nn_rows<R>(j0, j1, k, alpha, ap + i * k, b, brs, beta, c + i * ldc, ldc);
      });
    }
    return;
  }
  // b's columns contiguous (brs == 1) and a's rows contiguous (acs == 1), and c narrow or b's
  // rows strided: dot products, four
  // columns of c at a time against every row of a, so each column of b is read once.
  for (int64_t j = 0; j < n; j += 4) {
    int64_t cols = std::min<int64_t>(4, n - j);
    row_groups<4>(m, [&]<int R>(int64_t i) {
      nt_rows<R>(cols, k, alpha, a + i * ars, ars, b + j * bcs, bcs, beta, c + i * ldc + j, ldc);
    });
  }
}

// --- select and pooling ----------------------------------------------------------------------

// out = c ? a : b over a run (out may be a or b itself: element i reads only index i), 16
// lanes at a time: the mask bytes widen to a lane mask and both sides are selected, never
// branched on (a random mask mispredicts every other element).
using V16b = uint8_t __attribute__((vector_size(16), aligned(1)));
using V16i = int32_t __attribute__((vector_size(64)));

void where(float* out, const bool* c, const float* a, bool av, const float* b, bool bv,
           int64_t n) {
  const V16 x0 = V16{} + *a, y0 = V16{} + *b;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    V16b bytes;
    __builtin_memcpy(&bytes, c + i, sizeof bytes);
    const V16i mask = __builtin_convertvector(bytes, V16i) != 0;
    const V16 x = av ? load16(a + i) : x0, y = bv ? load16(b + i) : y0;
    store16(out + i, mask ? x : y);
  }
  for (; i < n; ++i) {
    const float x = av ? a[i] : x0[0], y = bv ? b[i] : y0[0];
    out[i] = c[i] ? x : y;
  }
}

// 2x2 windows with stride 2 over one plane, 16 outputs at a time: the even and odd columns of
// the two input rows are shuffled apart, then three compare-and-selects pick each maximum and
// the position it came from (code 0..3 within the window). Rows narrower than 16 outputs (14 and
// 5 in LeNet) are one masked step each.
using V16l = int64_t __attribute__((vector_size(128)));

inline V16 evens(V16 lo, V16 hi) {
  return __builtin_shufflevector(lo, hi, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
}
inline V16 odds(V16 lo, V16 hi) {
  return __builtin_shufflevector(lo, hi, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}
// The first n (<= 32) floats at p as two vectors, zeros past n.
inline void load32(const float* p, int64_t n, V16& lo, V16& hi) {
  lo = n >= 16 ? load16(p) : load_part(p, n);
  hi = n >= 32 ? load16(p + 16) : n > 16 ? load_part(p + 16, n - 16) : V16{};
}

void max_pool_2x2(float* __restrict out, int64_t* __restrict idx, const float* __restrict plane,
                  int64_t OH, int64_t OW, int64_t W) {
  auto better = [](V16 v, V16 b) { return (v > b) | ((v != v) & (b == b)); };  // NaN wins
  const V16l lane2 = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
  for (int64_t oh = 0; oh < OH; ++oh) {
    const float* r0 = plane + 2 * oh * W;
    const float* r1 = r0 + W;
    for (int64_t ow = 0; ow < OW; ow += 16) {
      const int64_t count = std::min<int64_t>(16, OW - ow);
      V16 lo, hi;
      load32(r0 + 2 * ow, 2 * count, lo, hi);
      const V16 a = evens(lo, hi), b = odds(lo, hi);
      load32(r1 + 2 * ow, 2 * count, lo, hi);
      const V16 c = evens(lo, hi), d = odds(lo, hi);
      V16i t = better(b, a);
      V16 m = t ? b : a;
      V16i code = t & 1;
      t = better(c, m);
      m = t ? c : m;
      code = t ? V16i{} + 2 : code;
      t = better(d, m);
      m = t ? d : m;
      code = t ? V16i{} + 3 : code;
      const V16l k = __builtin_convertvector(code, V16l);
      const V16l at = (2 * oh * W + 2 * ow) + lane2 + (k & 1) + (k >> 1) * W;
      if (count == 16) {
        store16(out + oh * OW + ow, m);
        __builtin_memcpy(idx + oh * OW + ow, &at, sizeof at);
      } else {
        store_part(out + oh * OW + ow, m, count);
        __builtin_memcpy(idx + oh * OW + ow, &at, static_cast<size_t>(count) * sizeof(int64_t));
      }
    }
  }
}

}  // namespace

extern const VecKernels kTable;
#if defined(__AVX512F__)
const VecKernels kTable{TG_VEC_NAME, unary, binary, sum, gemm_skinny, where, max_pool_2x2,
                        reinterpret_cast<const void*>(&gelu16), lanes16};
#else
const VecKernels kTable{TG_VEC_NAME, unary, binary, sum, gemm_skinny, where, max_pool_2x2, nullptr,
                        lanes16};
#endif

}  // namespace tg::cpu::TG_VEC_NS
