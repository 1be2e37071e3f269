// Element types, PyTorch's type promotion, and Scalar (a C++ number passed to an op).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>

namespace tg {

enum class DType : uint8_t { F32, F64, I32, I64, Bool };

inline constexpr DType kF32 = DType::F32;
inline constexpr DType kF64 = DType::F64;
inline constexpr DType kI32 = DType::I32;
inline constexpr DType kI64 = DType::I64;
inline constexpr DType kBool = DType::Bool;
inline constexpr DType kFloat = kF32;
inline constexpr DType kDouble = kF64;
inline constexpr DType kInt = kI32;
inline constexpr DType kLong = kI64;

constexpr size_t element_size(DType t) {
  switch (t) {
    case DType::F32: case DType::I32: return 4;
    case DType::F64: case DType::I64: return 8;
    case DType::Bool: return 1;
  }
  return 0;
}
constexpr bool is_floating(DType t) { return t == kF32 || t == kF64; }
constexpr bool is_integral(DType t, bool include_bool = false) {
  return t == kI32 || t == kI64 || (include_bool && t == kBool);
}
std::string_view dtype_name(DType t);  // "f32", "f64", "i32", "i64", "bool"

// The dtype a C++ element type maps to: float → f32, double → f64, int → i32,
// int64_t/long → i64, bool → bool.
template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = kF32; };
template <> struct dtype_of<double> { static constexpr DType value = kF64; };
template <> struct dtype_of<int32_t> { static constexpr DType value = kI32; };
template <> struct dtype_of<int64_t> { static constexpr DType value = kI64; };
template <> struct dtype_of<long long> { static constexpr DType value = kI64; };
template <> struct dtype_of<bool> { static constexpr DType value = kBool; };
template <class T> inline constexpr DType dtype_of_v = dtype_of<std::remove_cv_t<T>>::value;

// Promotion of two dtypes of the same group (what torch.promote_types does).
DType promote_types(DType a, DType b);

// A number from C++ code: `x + 2`, `x * 0.5`, `full({2}, true)`. Keeps its kind so that promotion
// treats it as PyTorch treats a Python number (a "wrapped number": int 2 does not lift an i32
// tensor, 0.5 lifts an integer tensor to the default float dtype f32).
class Scalar {
 public:
  enum class Kind : uint8_t { Float, Int, Bool };
  constexpr Scalar() = default;
  template <class T>
    requires std::is_arithmetic_v<T>
  constexpr Scalar(T v) {  // NOLINT: implicit on purpose
    if constexpr (std::is_same_v<T, bool>) {
      kind_ = Kind::Bool;
      i_ = v;
      d_ = v;
    } else if constexpr (std::is_integral_v<T>) {
      kind_ = Kind::Int;
      i_ = static_cast<int64_t>(v);
      d_ = static_cast<double>(v);
    } else {
      kind_ = Kind::Float;
      d_ = static_cast<double>(v);
      i_ = static_cast<int64_t>(v);
    }
  }
  constexpr Kind kind() const { return kind_; }
  constexpr double to_double() const { return d_; }
  constexpr int64_t to_int() const { return i_; }
  constexpr bool is_floating() const { return kind_ == Kind::Float; }
  // The dtype this number has when it stands alone: f32 (the default float), i64 or bool.
  constexpr DType dtype() const {
    return kind_ == Kind::Float ? kF32 : kind_ == Kind::Int ? kI64 : kBool;
  }

 private:
  Kind kind_ = Kind::Int;
  double d_ = 0;
  int64_t i_ = 0;
};

}  // namespace tg
