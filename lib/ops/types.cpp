// Shared op helpers: dims, broadcasting and type promotion.
#include <algorithm>

#include <cstring>

#include "ops/ops_common.h"
#include "tapegrad/trace.h"

namespace tg {

int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op) {
  int64_t n = std::max<int64_t>(ndim, 1);  // a 0-d tensor accepts dim 0 and -1, as in PyTorch
  TG_CHECK(dim >= -n && dim < n, "{}: dim {} is out of range for a tensor of {} dims (expected {} to {})",
           op, dim, ndim, -n, n - 1);
  return dim < 0 ? dim + n : dim;
}

std::vector<bool> reduced_mask(const Shape& dims, int64_t ndim, const char* op) {
  std::vector<bool> mask(static_cast<size_t>(ndim), dims.empty());
  for (int64_t d : dims) {
    int64_t w = wrap_dim(d, ndim, op);
    if (ndim == 0) continue;
    TG_CHECK(!mask[w], "{}: dim {} appears more than once in {}", op, d, dims);
    mask[w] = true;
  }
  return mask;
}

Shape reduced_shape(const Shape& in, const std::vector<bool>& mask, bool keepdim) {
  Shape out;
  for (size_t i = 0; i < in.size(); ++i) {
    if (!mask[i]) out.push_back(in[i]);
    else if (keepdim) out.push_back(1);
  }
  return out;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t sa = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t sb = i < n - b.size() ? 1 : b[i - (n - b.size())];
    TG_CHECK(sa == sb || sa == 1 || sb == 1,
             "{}: shapes {} and {} cannot be broadcast (size {} vs {} at dim {})", op, a, b, sa,
             sb, i);
    out[i] = sa == 1 ? sb : sa;
  }
  return out;
}

Tensor expand_to(const Tensor& t, const Shape& shape) {
  if (t.shape() == shape) return t;
  const Shape& in = t.shape();
  size_t lead = shape.size() - in.size();
  Shape strides(shape.size(), 0);
  for (size_t i = 0; i < in.size(); ++i)
    strides[lead + i] = in[i] == shape[lead + i] ? t.strides()[i] : 0;
  return make_view(t, shape, std::move(strides), t.storage_offset());
}

void check_defined(const Tensor& t, const char* op, const char* what) {
  TG_CHECK(t.defined(), "{}: {} is an undefined tensor (default-constructed)", op, what);
}

void check_same_device(const Tensor& a, const Tensor& b, const char* op) {
  TG_CHECK(a.device() == b.device(), "{}: expected all tensors on one device, got {} and {}", op,
           a.device().str(), b.device().str());
}

// Note [Type promotion]
// As PyTorch: operands fall in three groups by priority: tensors with dims, 0-d tensors, and C++
// numbers. The result is the promoted dtype of the highest group, lifted by a lower group only
// when that group is of a higher category (bool < integer < float). A C++ float counts as the
// default float dtype (f32). So i32 tensor + 2 → i32, i32 tensor + 2.5 → f32, f32 tensor +
// f64 0-d tensor → f32, bool tensor + 1 → i64.
namespace {
int category(DType t) { return t == kBool ? 0 : is_integral(t) ? 1 : 2; }

std::optional<DType> combine(std::optional<DType> higher, std::optional<DType> lower) {
  if (!higher) return lower;
  if (!lower) return higher;
  if (category(*lower) > category(*higher)) return promote_types(*higher, *lower);
  return higher;
}
}  // namespace

DType result_type(std::initializer_list<TypeOperand> operands) {
  std::optional<DType> group[3];
  for (const auto& o : operands) {
    auto& g = group[o.kind];
    g = g ? promote_types(*g, o.dtype) : o.dtype;
  }
  return *combine(group[0], combine(group[1], group[2]));
}

Tensor cast_if_needed(const Tensor& t, DType dtype) { return t.dtype() == dtype ? t : t.to(dtype); }

// Note [Scalars on a GPU]
// A C++ number in an op (x * 0.1, where(mask, 0, x)) becomes a 0-d tensor of the op's dtype on
// the op's device. On a GPU that is a fill kernel per use, which an optimizer's update or a loss
// pays at every step: there the tensor is kept, per thread, for the next use of the same number,
// dtype and device (64 of them, the oldest replaced). These tensors never leave the ops that take
// them as operands, so nothing writes them. While tracing, each is made afresh: the recorder must
// see its fill, or the graph would read it as state. While the backend records (capture()), too:
// a fill recorded would never run eagerly, and a recording must not read a tensor that the cache
// may free.
Tensor scalar_tensor(Scalar value, DType dtype, Device device) {
  if (!device.is_cpu() && !is_tracing() && !backend_for(device).capturing_here()) {
    struct Kept {
      double d;
      int64_t i;
      Scalar::Kind kind;
      DType dtype;
      Device device;
      Tensor t;
    };
    thread_local std::vector<Kept> kept;
    thread_local size_t next = 0;
    const double d = value.to_double();
    const int64_t i = value.to_int();
    for (const Kept& k : kept)
      if (std::memcmp(&k.d, &d, sizeof d) == 0 && k.i == i && k.kind == value.kind() &&
          k.dtype == dtype && k.device == device)
        return k.t;
    Tensor t = make_tensor({}, dtype, device);
    backend_for(device).fill(impl_of(t), value);
    constexpr size_t kKept = 64;
    Kept entry{d, i, value.kind(), dtype, device, t};
    if (kept.size() < kKept) {
      kept.push_back(std::move(entry));
    } else {
      kept[next] = std::move(entry);
      next = (next + 1) % kKept;
    }
    return t;
  }
  Tensor t = make_tensor({}, dtype, device);
  backend_for(device).fill(impl_of(t), value);
  return t;
}

}  // namespace tg
