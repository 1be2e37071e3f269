// The reference scalar definition of every elementwise op (CPU, and CUDA's kernels): the strided kernels use these
// directly, and the vectorized f32 kernels (vec_kernels.cpp) are tested against them.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "backend/op_attrs.h"
#include "ops/op_registry.h"

// Host and device: the CUDA kernels (lib/backend/cuda/kernels.cu) use these same definitions.
#if defined(__CUDACC__)
#define TG_HD __host__ __device__
#else
#define TG_HD
#endif

namespace tg::cpu {

// Integer arithmetic wraps around instead of overflowing (which would be undefined behaviour).
template <class T> TG_HD T wrap_add(T a, T b) {
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    using U = std::make_unsigned_t<T>;
    return static_cast<T>(static_cast<U>(a) + static_cast<U>(b));
  } else {
    return a + b;
  }
}
template <class T> TG_HD T wrap_sub(T a, T b) {
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    using U = std::make_unsigned_t<T>;
    return static_cast<T>(static_cast<U>(a) - static_cast<U>(b));
  } else {
    return a - b;
  }
}
template <class T> TG_HD T wrap_mul(T a, T b) {
  if constexpr (std::is_same_v<T, bool>) {
    return a && b;
  } else if constexpr (std::is_integral_v<T>) {
    using U = std::make_unsigned_t<T>;
    return static_cast<T>(static_cast<U>(a) * static_cast<U>(b));
  } else {
    return a * b;
  }
}

template <class T> TG_HD T int_pow(T base, T e) {
  if constexpr (std::is_same_v<T, bool>) return base || !e;
  if (e < 0) return base == 1 ? 1 : base == -1 ? ((e & 1) ? -1 : 1) : 0;
  T result = 1;
  while (e) {
    if (e & 1) result = wrap_mul(result, base);
    base = wrap_mul(base, base);
    e >>= 1;
  }
  return result;
}

// Converts between element types; float to integer saturates and NaN becomes 0, so no input
// is undefined behaviour.
template <class To, class From> TG_HD To convert(From v) {
  if constexpr (std::is_same_v<To, bool>) {
    return v != From(0);
  } else if constexpr (std::is_integral_v<To> && std::is_floating_point_v<From>) {
    if (!(v == v)) return 0;
    if (v <= static_cast<From>(std::numeric_limits<To>::min())) return std::numeric_limits<To>::min();
    if (v >= static_cast<From>(std::numeric_limits<To>::max())) return std::numeric_limits<To>::max();
    return static_cast<To>(v);
  } else {
    return static_cast<To>(v);
  }
}

template <class T> TG_HD T scalar_unary(OpKind kind, T x, const OpAttrs& attrs) {
  if constexpr (std::is_floating_point_v<T>) {
    switch (kind) {
      case OpKind::Neg: return -x;
      case OpKind::Exp: return std::exp(x);
      case OpKind::Log: return std::log(x);
      case OpKind::Log1p: return std::log1p(x);
      case OpKind::Expm1: return std::expm1(x);
      case OpKind::Sqrt: return std::sqrt(x);
      case OpKind::Rsqrt: return T(1) / std::sqrt(x);
      case OpKind::Abs: return std::abs(x);
      case OpKind::Sign: return x != x ? x : T((x > 0) - (x < 0));
      case OpKind::Sin: return std::sin(x);
      case OpKind::Cos: return std::cos(x);
      case OpKind::Tanh: return std::tanh(x);
      case OpKind::Sigmoid: return T(1) / (T(1) + std::exp(-x));
      case OpKind::Relu: return x > 0 ? x : (x != x ? x : T(0));
      // 1 + erf(x/√2) = erfc(-x/√2), which keeps its precision for negative x.
      case OpKind::Gelu: return T(0.5) * x * std::erfc(-x * T(M_SQRT1_2));
      case OpKind::Erf: return std::erf(x);
      case OpKind::Softplus:  // max(x, 0) + ln(1 + e^-|x|): no overflow for large |x|
        return (x > 0 ? x : T(0)) + std::log1p(std::exp(-std::abs(x)));
      case OpKind::LogSigmoid: return (x < 0 ? x : T(0)) - std::log1p(std::exp(-std::abs(x)));
      case OpKind::PowScalar: return std::pow(x, static_cast<T>(attrs.a));
      case OpKind::Clamp:
        if (x != x) return x;
        return std::min(std::max(x, static_cast<T>(attrs.a)), static_cast<T>(attrs.b));
      default: return x;
    }
  } else if constexpr (std::is_same_v<T, bool>) {
    return kind == OpKind::LogicalNot ? !x : x;  // the ops layer refuses arithmetic on bool
  } else {
    switch (kind) {
      case OpKind::Neg: return wrap_sub(T(0), x);
      case OpKind::Abs: return x < 0 ? wrap_sub(T(0), x) : x;
      case OpKind::Sign: return T((x > 0) - (x < 0));
      case OpKind::Relu: return x > 0 ? x : T(0);
      case OpKind::PowScalar: return int_pow(x, static_cast<T>(attrs.a));
      case OpKind::Clamp: {
        // Bounds are doubles; compare there so that an out-of-range bound cannot wrap.
        double v = std::min(std::max(static_cast<double>(x), attrs.a), attrs.b);
        return convert<T>(v);
      }
      case OpKind::LogicalNot: return !x;
      default: return x;
    }
  }
}

template <class T> TG_HD T scalar_binary(OpKind kind, T a, T b) {
  switch (kind) {
    case OpKind::Add: return wrap_add(a, b);
    case OpKind::Sub: return wrap_sub(a, b);
    case OpKind::Mul: return wrap_mul(a, b);
    case OpKind::Div:
      if constexpr (std::is_floating_point_v<T>) return a / b;
      else return b == 0 ? T(0) : a / b;  // never reached: div is computed in floating point
    case OpKind::Pow:
      if constexpr (std::is_floating_point_v<T>) return std::pow(a, b);
      else if constexpr (std::is_same_v<T, bool>) return a || !b;
      else return int_pow(a, b);
    case OpKind::Maximum:
      if constexpr (std::is_floating_point_v<T>) if (a != a || b != b) return a + b;
      return a > b ? a : b;
    case OpKind::Minimum:
      if constexpr (std::is_floating_point_v<T>) if (a != a || b != b) return a + b;
      return a < b ? a : b;
    case OpKind::LogicalAnd: return a && b;
    case OpKind::LogicalOr: return a || b;
    default: return a;
  }
}

template <class T> TG_HD bool scalar_compare(OpKind kind, T a, T b) {
  switch (kind) {
    case OpKind::Eq: return a == b;
    case OpKind::Ne: return a != b;
    case OpKind::Lt: return a < b;
    case OpKind::Le: return a <= b;
    case OpKind::Gt: return a > b;
    case OpKind::Ge: return a >= b;
    default: return false;
  }
}

TG_HD inline bool is_comparison(OpKind kind) {
  return kind == OpKind::Eq || kind == OpKind::Ne || kind == OpKind::Lt || kind == OpKind::Le ||
         kind == OpKind::Gt || kind == OpKind::Ge;
}

}  // namespace tg::cpu
