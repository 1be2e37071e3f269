// Backend lookup by device.
#include "backend/backend.h"

#include "core/check.h"

namespace tg {

thread_local TraceHook* t_trace_hook = nullptr;

Backend& device_backend(Device device) {
  if (device.is_cpu()) return cpu_backend();
  return cuda_backend(device.index);
}

Backend& backend_for(Device device) {
  if (t_trace_hook != nullptr) return t_trace_hook->backend(device);
  return device_backend(device);
}

// The reference way to run a fused group: each step into a contiguous temporary of out's shape.
void Backend::fused(const std::vector<FusedStep>& steps, const TensorImpl& out,
                    const TensorImpl* const* inputs, size_t ninputs) {
  TG_INTERNAL_ASSERT(!steps.empty());
  std::vector<TensorImpl> temps(steps.size() - 1);
  std::vector<const TensorImpl*> values(steps.size());
  auto operand = [&](int32_t r) -> const TensorImpl& {
    if (r < 0) {
      TG_INTERNAL_ASSERT(static_cast<size_t>(-r - 1) < ninputs);
      return *inputs[-r - 1];
    }
    return *values[static_cast<size_t>(r)];
  };
  for (size_t i = 0; i < steps.size(); ++i) {
    const FusedStep& s = steps[i];
    if (i + 1 == steps.size()) {
      values[i] = &out;
    } else {
      TensorImpl& t = temps[i];
      t.sizes = out.sizes;
      t.strides = contiguous_strides(out.sizes);
      t.numel = out.numel;
      t.dtype = s.dtype;
      t.storage = allocate_storage(static_cast<size_t>(out.numel) * element_size(s.dtype),
                                   out.storage->device);
      values[i] = &t;
    }
    const TensorImpl& v = *values[i];
    switch (s.kind) {
      case FusedStep::Kind::Unary: unary(s.op, v, operand(s.a), s.attrs); break;
      case FusedStep::Kind::Binary: binary(s.op, v, operand(s.a), operand(s.b)); break;
      case FusedStep::Kind::Where: where(v, operand(s.a), operand(s.b), operand(s.c)); break;
      case FusedStep::Kind::Convert: copy(v, operand(s.a)); break;
    }
  }
}

bool Backend::softmax_rows(OpKind, const TensorImpl&, const TensorImpl&, int) { return false; }

void Backend::transfer(const TensorImpl& dst, const TensorImpl& src) {
  const Device from = src.storage->device, to = dst.storage->device;
  if (from == to) {
    copy(dst, src);
  } else if (from.is_cpu()) {
    copy_from_host(dst, src.data());
  } else if (to.is_cpu()) {
    copy_to_host(dst.data(), src);
  } else {  // between two devices, through the host (a backend may do better)
    std::vector<char> host(static_cast<size_t>(src.numel) * element_size(src.dtype));
    device_backend(from).copy_to_host(host.data(), src);
    copy_from_host(dst, host.data());
  }
}

std::unique_ptr<CapturedWork> Backend::capture(const std::function<void()>&) { return nullptr; }
std::unique_ptr<CapturedWork> Backend::capture_guarded(const std::function<void()>&,
                                                       const TensorImpl&,
                                                       const std::function<void()>&) {
  return nullptr;
}

void Backend::index_flagged(OpKind, const TensorImpl&, const TensorImpl&, int, const TensorImpl&,
                            const TensorImpl&) {
  TG_INTERNAL_ASSERT(false && "index_flagged: this backend has no device-side arguments");
}

void Backend::random_from(RandomKind, const TensorImpl&, const TensorImpl&, double, double) {
  TG_INTERNAL_ASSERT(false && "random_from: this backend has no device-side arguments");
}

void Backend::write_words(const TensorImpl& dst, const std::vector<int64_t>& words) {
  TG_INTERNAL_ASSERT(dst.dtype == kI64 && dst.numel == static_cast<int64_t>(words.size()));
  for (size_t i = 0; i < words.size(); ++i) {
    TensorImpl one;
    one.storage = dst.storage;
    one.offset = dst.offset + static_cast<int64_t>(i) * (dst.strides.empty() ? 0 : dst.strides[0]);
    one.dtype = kI64;
    one.numel = 1;
    fill(one, Scalar(words[i]));
  }
}

// The reference way to run a fused sum: the group's value into a temporary, then the reduction.
void Backend::fused_sum(const std::vector<FusedStep>& steps, const TensorImpl& out,
                        const TensorImpl* const* inputs, size_t ninputs, int nreduced) {
  TG_INTERNAL_ASSERT(!steps.empty() && ninputs > 0);
  TensorImpl value;
  value.sizes = inputs[0]->sizes;
  value.strides = contiguous_strides(value.sizes);
  value.numel = inputs[0]->numel;
  value.dtype = steps.back().dtype;
  value.storage = allocate_storage(static_cast<size_t>(value.numel) * element_size(value.dtype),
                                   out.storage->device);
  fused(steps, value, inputs, ninputs);
  reduce(OpKind::Sum, out, value, nreduced);
}

// The reference way to run a matmul update: the product into a temporary, then elementwise.
void Backend::matmul_update(const TensorImpl& out, const TensorImpl& a, const TensorImpl& b,
                            double alpha, double beta, const TensorImpl* scale) {
  auto temp = [&](const Shape& sizes) {
    TensorImpl t;
    t.sizes = sizes;
    t.strides = contiguous_strides(sizes);
    t.numel = 1;
    for (int64_t d : sizes) t.numel *= d;
    t.dtype = out.dtype;
    t.storage = allocate_storage(static_cast<size_t>(t.numel) * element_size(out.dtype),
                                 out.storage->device);
    return t;
  };
  auto broadcast = [&](const TensorImpl& one) {  // one element viewed with out's shape
    TensorImpl t;
    t.storage = one.storage;
    t.offset = one.offset;
    t.dtype = one.dtype;
    t.sizes = out.sizes;
    t.strides = Shape(out.sizes.size(), 0);
    t.numel = out.numel;
    return t;
  };
  TensorImpl product = temp(out.sizes), factor = temp({});
  matmul(product, a, b);
  fill(factor, Scalar(alpha));
  binary(OpKind::Mul, product, product, broadcast(factor));
  if (scale != nullptr) binary(OpKind::Mul, product, product, broadcast(*scale));
  if (beta == 0) return copy(out, product);
  if (beta != 1) {
    fill(factor, Scalar(beta));
    binary(OpKind::Mul, out, out, broadcast(factor));
  }
  binary(OpKind::Add, out, out, product);
}

}  // namespace tg
