// Helpers every op family shares: dim wrapping, broadcasting, type promotion, device checks.
#pragma once

#include <optional>
#include <vector>

#include "backend/backend.h"
#include "core/check.h"
#include "core/tensor_impl.h"
#include "tapegrad/ops.h"

namespace tg {

// A dim in [-ndim, ndim) to [0, ndim); `ndim` is the rank the dim refers to.
int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op);
// Sorted unique dims for a reduction; empty means all.
std::vector<bool> reduced_mask(const Shape& dims, int64_t ndim, const char* op);

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);
// A view of t with the shape `shape` (t's shape broadcast to it): strides 0 where expanded.
Tensor expand_to(const Tensor& t, const Shape& shape);

void check_defined(const Tensor& t, const char* op, const char* what = "input");
void check_same_device(const Tensor& a, const Tensor& b, const char* op);

// PyTorch's result_type over tensors and C++ numbers (see Note [Type promotion] in types.cpp).
struct TypeOperand {
  DType dtype;
  enum Kind { Dimensioned, ZeroDim, Wrapped } kind;
};
DType result_type(std::initializer_list<TypeOperand> operands);
inline TypeOperand operand(const Tensor& t) {
  return {t.dtype(), t.dim() == 0 ? TypeOperand::ZeroDim : TypeOperand::Dimensioned};
}
inline TypeOperand operand(Scalar s) { return {s.dtype(), TypeOperand::Wrapped}; }

// t itself when it already has the dtype, else a converted copy.
Tensor cast_if_needed(const Tensor& t, DType dtype);
// A 0-d tensor holding `value` converted to dtype.
Tensor scalar_tensor(Scalar value, DType dtype, Device device);

// Throws when the thread is recording a trace (see Note [Trace hooks]): `what` reads values on
// the host.
void check_host_read(const char* what);
// Hands out `blocks` Philox blocks of the global generator: {seed, first block}.
std::pair<uint64_t, uint64_t> take_random_blocks(uint64_t blocks);
// The global generator's block counter (Mode::Debug replays a graph twice with the same draws).
uint64_t random_offset();
void set_random_offset(uint64_t offset);

inline Backend& backend_of(const Tensor& t) { return backend_for(t.device()); }
inline const TensorImpl& impl_of(const Tensor& t) { return *t.impl(); }

// Shape of a reduction's output: reduced dims dropped, or kept as 1.
Shape reduced_shape(const Shape& in, const std::vector<bool>& mask, bool keepdim);

}  // namespace tg

namespace tg {
// Binary elementwise op with broadcasting and promotion (binary.cpp); in-place ops build on it.
Tensor binary_op(OpKind kind, const Tensor& a, const Tensor& b, Loc loc);
Tensor binary_op(OpKind kind, const Tensor& a, Scalar b, Loc loc);
Tensor binary_op(OpKind kind, Scalar a, const Tensor& b, Loc loc);
}  // namespace tg
