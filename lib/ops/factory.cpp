// Factories: constant, range and random tensors, and tensors from host data.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <numeric>

#include "ops/ops_common.h"

namespace tg {
namespace {

// The global generator: a seed and a counter of Philox blocks already handed out.
struct Generator {
  std::atomic<uint64_t> seed{0x5EED5EED5EEDull};
  std::atomic<uint64_t> offset{0};
};
Generator& generator() {
  static Generator g;
  return g;
}

Tensor random_tensor(RandomKind kind, const Shape& shape, DType dtype, Device device, double a,
                     double b) {
  Tensor out = make_tensor(shape, dtype, device);
  Generator& g = generator();
  uint64_t blocks = static_cast<uint64_t>((out.numel() + 3) / 4);
  uint64_t offset = g.offset.fetch_add(blocks);
  if (out.numel() > 0) backend_for(device).random(kind, impl_of(out), g.seed.load(), offset, a, b);
  return out;
}

}  // namespace

uint64_t random_offset() { return generator().offset.load(); }
void set_random_offset(uint64_t offset) { generator().offset.store(offset); }

std::pair<uint64_t, uint64_t> take_random_blocks(uint64_t blocks) {
  Generator& g = generator();
  uint64_t offset = g.offset.fetch_add(blocks);
  return {g.seed.load(), offset};
}

Tensor empty(const Shape& shape, TensorOptions opts, Loc loc) {
  OpScope scope("empty", loc);
  return make_tensor(shape, opts.dtype.value_or(kF32), opts.device);
}

Tensor full(const Shape& shape, Scalar value, TensorOptions opts, Loc loc) {
  OpScope scope("full", loc);
  Tensor out = make_tensor(shape, opts.dtype.value_or(value.dtype()), opts.device);
  if (out.numel() > 0) backend_for(opts.device).fill(impl_of(out), value);
  return out;
}

Tensor zeros(const Shape& shape, TensorOptions opts, Loc loc) {
  OpScope scope("zeros", loc);
  return full(shape, 0, {.dtype = opts.dtype.value_or(kF32), .device = opts.device});
}
Tensor ones(const Shape& shape, TensorOptions opts, Loc loc) {
  OpScope scope("ones", loc);
  return full(shape, 1, {.dtype = opts.dtype.value_or(kF32), .device = opts.device});
}

namespace {
TensorOptions like(const Tensor& t, const TensorOptions& opts, const char* op) {
  check_defined(t, op);
  TensorOptions o = opts;
  if (!o.dtype) o.dtype = t.dtype();
  if (opts.device == kCPU) o.device = t.device();  // default device: follow the tensor
  return o;
}
}  // namespace

Tensor zeros_like(const Tensor& t, TensorOptions opts, Loc loc) {
  OpScope scope("zeros_like", loc);
  return zeros(t.shape(), like(t, opts, "zeros_like"));
}
Tensor ones_like(const Tensor& t, TensorOptions opts, Loc loc) {
  OpScope scope("ones_like", loc);
  return ones(t.shape(), like(t, opts, "ones_like"));
}
Tensor full_like(const Tensor& t, Scalar value, TensorOptions opts, Loc loc) {
  OpScope scope("full_like", loc);
  return full(t.shape(), value, like(t, opts, "full_like"));
}
Tensor empty_like(const Tensor& t, TensorOptions opts, Loc loc) {
  OpScope scope("empty_like", loc);
  return empty(t.shape(), like(t, opts, "empty_like"));
}

Tensor arange(Scalar end, TensorOptions opts, Loc loc) { return arange(0, end, 1, opts, loc); }

Tensor arange(Scalar start, Scalar end, Scalar step, TensorOptions opts, Loc loc) {
  OpScope scope("arange", loc);
  bool all_int = !start.is_floating() && !end.is_floating() && !step.is_floating();
  DType dt = opts.dtype.value_or(all_int ? kI64 : kF32);
  double s = start.to_double(), e = end.to_double(), st = step.to_double();
  TG_CHECK(st != 0, "arange: step must be non-zero");
  TG_CHECK(std::isfinite(s) && std::isfinite(e) && std::isfinite(st),
           "arange: start, end and step must be finite, got {}, {}, {}", s, e, st);
  TG_CHECK((st > 0 && e >= s) || (st < 0 && e <= s),
           "arange: step {} does not lead from {} towards {}", st, s, e);
  double count = std::ceil((e - s) / st);
  TG_CHECK(count < 9.0e15, "arange: {} elements are too many", count);
  Tensor out = make_tensor({static_cast<int64_t>(count)}, dt, opts.device);
  if (out.numel() > 0) backend_for(opts.device).iota(impl_of(out), s, st);
  return out;
}

Tensor linspace(double start, double end, int64_t steps, TensorOptions opts, Loc loc) {
  OpScope scope("linspace", loc);
  TG_CHECK(steps >= 0, "linspace: steps must be non-negative, got {}", steps);
  Tensor out = make_tensor({steps}, opts.dtype.value_or(kF32), opts.device);
  double step = steps > 1 ? (end - start) / static_cast<double>(steps - 1) : 0.0;
  if (steps > 0) backend_for(opts.device).iota(impl_of(out), start, step);
  return out;
}

Tensor eye(int64_t n, std::optional<int64_t> m, TensorOptions opts, Loc loc) {
  OpScope scope("eye", loc);
  int64_t cols = m.value_or(n);
  TG_CHECK(n >= 0 && cols >= 0, "eye: sizes must be non-negative, got {} and {}", n, cols);
  Tensor out = zeros({n, cols}, {.dtype = opts.dtype.value_or(kF32), .device = opts.device});
  if (n > 0 && cols > 0) out.diagonal().fill_(1);
  return out;
}

Tensor from_blob_copy(const void* data, size_t count, DType src, const Shape& shape,
                      TensorOptions opts, Loc loc) {
  OpScope scope("tensor", loc);
  int64_t declared = 1;
  for (int64_t s : shape) {
    TG_CHECK(s >= 0, "tensor: nested lists must be rectangular (rows of different lengths), "
                     "or the shape {} has a negative size", shape);
    declared *= s;
  }
  TG_CHECK(static_cast<size_t>(declared) == count,
           "tensor: {} values do not fill shape {} ({} elements)", count, shape, declared);
  Tensor host = make_tensor(shape, src, kCPU);
  backend_for(kCPU).copy_from_host(impl_of(host), data);
  Tensor out = cast_if_needed(host, opts.dtype.value_or(src));
  return opts.device == kCPU ? out : out.to(opts.device);
}

// --- random -------------------------------------------------------------------------------------

void manual_seed(uint64_t seed) {
  generator().seed = seed;
  generator().offset = 0;
}

Tensor rand(const Shape& shape, TensorOptions opts, Loc loc) {
  OpScope scope("rand", loc);
  DType dt = opts.dtype.value_or(kF32);
  TG_CHECK(is_floating(dt), "rand: needs a floating dtype, got {}", dtype_name(dt));
  return random_tensor(RandomKind::Uniform, shape, dt, opts.device, 0.0, 1.0);
}

Tensor randn(const Shape& shape, TensorOptions opts, Loc loc) {
  OpScope scope("randn", loc);
  DType dt = opts.dtype.value_or(kF32);
  TG_CHECK(is_floating(dt), "randn: needs a floating dtype, got {}", dtype_name(dt));
  return random_tensor(RandomKind::Normal, shape, dt, opts.device, 0.0, 1.0);
}

Tensor randint(int64_t low, int64_t high, const Shape& shape, TensorOptions opts, Loc loc) {
  OpScope scope("randint", loc);
  TG_CHECK(low < high, "randint: low ({}) must be less than high ({})", low, high);
  return random_tensor(RandomKind::Int, shape, opts.dtype.value_or(kI64), opts.device,
                       static_cast<double>(low), static_cast<double>(high));
}

Tensor randperm(int64_t n, TensorOptions opts, Loc loc) {
  OpScope scope("randperm", loc);
  TG_CHECK(n >= 0, "randperm: n must be non-negative, got {}", n);
  // Sorting uniform keys from the generator: the same permutation on every device and thread count.
  std::vector<double> keys = rand({n}, {.dtype = kF64}).to_vector<double>();
  std::vector<int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), int64_t{0});
  std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) {
    return keys[static_cast<size_t>(a)] < keys[static_cast<size_t>(b)];
  });
  Tensor out = tensor(perm, {.dtype = opts.dtype.value_or(kI64)});
  return opts.device == kCPU ? out : out.to(opts.device);
}

Tensor rand_like(const Tensor& t, TensorOptions opts, Loc loc) {
  OpScope scope("rand_like", loc);
  return rand(t.shape(), like(t, opts, "rand_like"));
}
Tensor randn_like(const Tensor& t, TensorOptions opts, Loc loc) {
  OpScope scope("randn_like", loc);
  return randn(t.shape(), like(t, opts, "randn_like"));
}

}  // namespace tg
