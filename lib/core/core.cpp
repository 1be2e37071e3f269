// dtype and device helpers, storage, tensor construction, and error reporting.
#include <climits>

#include "backend/backend.h"
#include "core/pool.h"
#include "core/check.h"
#include "core/tensor_impl.h"

namespace tg {

std::string_view dtype_name(DType t) {
  switch (t) {
    case kF32: return "f32";
    case kF64: return "f64";
    case kI32: return "i32";
    case kI64: return "i64";
    case kBool: return "bool";
  }
  return "?";
}

DType promote_types(DType a, DType b) {
  if (a == b) return a;
  if (a == kBool) return b;
  if (b == kBool) return a;
  if (is_floating(a) && is_floating(b)) return kF64;
  if (is_floating(a)) return a;
  if (is_floating(b)) return b;
  return kI64;  // i32 with i64
}

std::string Device::str() const {
  return is_cpu() ? std::string("cpu") : fmt::format("cuda:{}", index);
}

// --- errors ---------------------------------------------------------------------------------------

namespace {
struct ScopeState {
  const char* op = nullptr;
  Loc loc;
};
thread_local ScopeState t_scope;
}  // namespace

OpScope::OpScope(const char* op, Loc loc) : outermost_(t_scope.op == nullptr) {
  if (outermost_) t_scope = {op, loc};
}
OpScope::~OpScope() {
  if (outermost_) t_scope.op = nullptr;
}
const char* OpScope::current_op() { return t_scope.op; }
Loc OpScope::current_loc() { return t_scope.loc; }

void throw_error(std::string message) {
  if (t_scope.op == nullptr) throw Error(message, "", Loc{});
  const Loc& loc = t_scope.loc;
  message += fmt::format("\n  in tg::{} called at {}:{}", t_scope.op, loc.file_name(), loc.line());
  throw Error(message, t_scope.op, loc);
}

void throw_index_error(std::string_view op, int64_t bad, int dim, int64_t size) {
  std::string message =
      fmt::format("{}: index {} is out of bounds for dim {} of size {}", op, bad, dim, size);
  if (t_scope.op == nullptr) throw IndexError(message, "", Loc{}, bad, size);
  const Loc& loc = t_scope.loc;
  message += fmt::format("\n  in tg::{} called at {}:{}", t_scope.op, loc.file_name(), loc.line());
  throw IndexError(message, t_scope.op, loc, bad, size);
}

// --- storage and tensors --------------------------------------------------------------------------

namespace {
constexpr int kMaxDevices = 17;  // the CPU, then cuda:0..15
struct Counters {
  std::atomic<int64_t> allocated{0};
  std::atomic<int64_t> peak{0};
};
Counters& counters(Device d) {
  static Counters c[kMaxDevices];
  int i = d.is_cpu() ? 0 : 1 + d.index;
  return c[i >= 0 && i < kMaxDevices ? i : kMaxDevices - 1];
}
}  // namespace

MemoryStats memory_stats(Device device) {
  Counters& c = counters(device);
  return {c.allocated.load(), c.peak.load()};
}

void reset_peak_memory(Device device) {
  Counters& c = counters(device);
  c.peak = c.allocated.load();
}

Storage::~Storage() {
  if (data != nullptr && owns_data) {
    counters(device).allocated.fetch_sub(static_cast<int64_t>(nbytes));
    backend_for(device).deallocate(data, nbytes);
  }
}

std::shared_ptr<Storage> allocate_storage(size_t nbytes, Device device) {
  Backend& be = backend_for(device);
  void* data = nbytes ? be.allocate(nbytes) : nullptr;
  auto storage = std::allocate_shared<Storage>(pool::Allocator<Storage>(), data, nbytes, device);
  if (data != nullptr) {
    Counters& c = counters(device);
    int64_t now = c.allocated.fetch_add(static_cast<int64_t>(nbytes)) + static_cast<int64_t>(nbytes);
    int64_t peak = c.peak.load();
    while (now > peak && !c.peak.compare_exchange_weak(peak, now)) {}
  }
  if (t_trace_hook != nullptr) t_trace_hook->on_allocate(storage);
  return storage;
}

void Shape::too_long(size_t n) {
  throw_error(fmt::format("tensors have at most {} dims; a list of {} values was given", kMaxDims, n));
}

Shape contiguous_strides(const Shape& sizes) {
  Shape strides(sizes.size());
  int64_t s = 1;
  for (size_t i = sizes.size(); i-- > 0;) {
    strides[i] = s;
    s *= std::max<int64_t>(sizes[i], 1);
  }
  return strides;
}

int64_t checked_numel(const Shape& sizes) {
  TG_CHECK(sizes.size() <= 16, "tensors have at most 16 dims, got {} (shape {})", sizes.size(),
           sizes);
  int64_t n = 1;
  for (int64_t s : sizes) {
    TG_CHECK(s >= 0, "negative size in shape {}", sizes);
    TG_CHECK(!__builtin_mul_overflow(n, s, &n), "shape {} has more elements than fit in int64",
             sizes);
  }
  return n;
}

bool TensorImpl::is_contiguous() const {
  int64_t expected = 1;
  for (size_t i = sizes.size(); i-- > 0;) {
    if (sizes[i] == 1) continue;
    if (strides[i] != expected) return numel == 0;
    expected *= sizes[i];
  }
  return true;
}

Tensor make_tensor(const Shape& sizes, DType dtype, Device device) {
  auto impl = std::allocate_shared<TensorImpl>(pool::Allocator<TensorImpl>());
  impl->numel = checked_numel(sizes);
  size_t nbytes = 0;
  TG_CHECK(!__builtin_mul_overflow(static_cast<size_t>(impl->numel), element_size(dtype), &nbytes),
           "shape {} is too large to allocate", sizes);
  impl->storage = allocate_storage(nbytes, device);
  impl->sizes = sizes;
  impl->strides = contiguous_strides(sizes);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor make_view(const Tensor& base, Shape sizes, Shape strides, int64_t offset) {
  auto impl = std::allocate_shared<TensorImpl>(pool::Allocator<TensorImpl>());
  impl->numel = checked_numel(sizes);
  impl->storage = base.impl()->storage;
  impl->sizes = std::move(sizes);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = base.dtype();
  impl->is_view = true;
  return Tensor(std::move(impl));
}

}  // namespace tg
