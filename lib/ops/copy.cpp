// Tensor accessors, conversions (to dtype, to device, clone, contiguous) and the in-place ops.
#include "autograd/node.h"
#include "ops/ops_common.h"
#include "tapegrad/trace.h"

namespace tg {

// --- accessors ----------------------------------------------------------------------------------

namespace {
const TensorImpl& checked(const TensorImpl* impl, const char* what) {
  if (impl == nullptr)
    throw_error(fmt::format("{}: the tensor is undefined (default-constructed)", what));
  return *impl;
}
}  // namespace

const Shape& Tensor::shape() const { return checked(impl(), "shape").sizes; }
const Shape& Tensor::strides() const { return checked(impl(), "strides").strides; }
int64_t Tensor::dim() const { return static_cast<int64_t>(checked(impl(), "dim").sizes.size()); }
int64_t Tensor::numel() const { return checked(impl(), "numel").numel; }
int64_t Tensor::storage_offset() const { return checked(impl(), "storage_offset").offset; }
DType Tensor::dtype() const { return checked(impl(), "dtype").dtype; }
Device Tensor::device() const { return checked(impl(), "device").device(); }
bool Tensor::is_contiguous() const { return checked(impl(), "is_contiguous").is_contiguous(); }
uint64_t Tensor::version() const { return checked(impl(), "version").storage->version.load(); }
void* Tensor::raw_data_ptr() const {
  check_host_read("data_ptr");
  return checked(impl(), "data_ptr").data();
}
bool Tensor::is_alias_of(const Tensor& other) const {
  return defined() && other.defined() && impl()->storage == other.impl()->storage;
}
int64_t Tensor::size(int64_t d, Loc loc) const {
  OpScope scope("size", loc);
  return shape()[wrap_dim(d, dim(), "size")];
}
int64_t Tensor::stride(int64_t d, Loc loc) const {
  OpScope scope("stride", loc);
  return strides()[wrap_dim(d, dim(), "stride")];
}

void Tensor::item_into(DType want, void* out, Loc loc) const {
  OpScope scope("item", loc);
  check_defined(*this, "item");
  check_host_read("item");
  NoGradGuard no_grad;
  TG_CHECK(numel() == 1, "item: the tensor has {} elements (shape {}); item() needs exactly one",
           numel(), shape());
  Tensor v = cast_if_needed(reshape({}), want).to(kCPU).contiguous();
  device_backend(kCPU).copy_to_host(out, impl_of(v));
}

void Tensor::to_vector_into(DType want, void* out, Loc loc) const {
  OpScope scope("to_vector", loc);
  check_defined(*this, "to_vector");
  check_host_read("to_vector");
  NoGradGuard no_grad;
  Tensor v = cast_if_needed(*this, want).to(kCPU).contiguous();
  if (numel() > 0) device_backend(kCPU).copy_to_host(out, impl_of(v));
}

void* Tensor::data_ptr_checked(DType want, Loc loc) const {
  OpScope scope("data_ptr", loc);
  check_defined(*this, "data_ptr");
  check_host_read("data_ptr");
  TG_CHECK(want == dtype(), "data_ptr: the tensor is {}, but data_ptr<{}> was asked for",
           dtype_name(dtype()), dtype_name(want));
  TG_CHECK(device().is_cpu(), "data_ptr: the tensor is on {}; copy it with .to(kCPU) first",
           device().str());
  return impl()->data();
}

void check_host_read(const char* what) {
  if (t_trace_hook == nullptr) return;
  throw_error(fmt::format(
      "{}: reads a tensor's value on the host while tg::trace records the function; the traced "
      "graph would keep this one value (and any branch taken on it) forever. Compute with tensor "
      "ops instead (tg::where for a branch), read the value outside the traced function, or put "
      "code that must run only once in a tg::NoTraceGuard scope",
      what));
}

// --- conversions --------------------------------------------------------------------------------

Tensor Tensor::clone(Loc loc) const {
  OpScope scope("clone", loc);
  check_defined(*this, "clone");
  RecordScope rec{this};
  Tensor out = make_tensor(shape(), dtype(), device());
  if (numel() > 0) backend_of(*this).copy(impl_of(out), impl_of(*this));
  return rec.finish(OpKind::Clone, out);
}

Tensor Tensor::contiguous(Loc loc) const {
  OpScope scope("contiguous", loc);
  check_defined(*this, "contiguous");
  return is_contiguous() ? *this : clone();
}

Tensor Tensor::to(DType dtype, Loc loc) const {
  OpScope scope("to", loc);
  check_defined(*this, "to");
  if (dtype == this->dtype()) return *this;
  RecordScope rec{this};
  Tensor out = make_tensor(shape(), dtype, device());
  if (numel() > 0) backend_of(*this).copy(impl_of(out), impl_of(*this));
  return rec.finish(OpKind::Cast, out);
}

Tensor Tensor::to(Device device, Loc loc) const {
  OpScope scope("to", loc);
  check_defined(*this, "to");
  if (device == this->device()) return *this;
  RecordScope rec{this};
  Backend& dst_be = backend_for(device);
  Tensor src = contiguous();
  Tensor out = make_tensor(shape(), dtype(), device);
  if (numel() == 0) return rec.finish(OpKind::ToDevice, out);
  if (src.device().is_cpu()) {
    dst_be.transfer(impl_of(out), impl_of(src));
  } else if (device.is_cpu()) {
    backend_of(src).transfer(impl_of(out), impl_of(src));
  } else {  // device to device, straight (Note [Copies between GPUs], cuda_backend.cpp)
    dst_be.transfer(impl_of(out), impl_of(src));
  }
  return rec.finish(OpKind::ToDevice, out);
}

// --- in place -----------------------------------------------------------------------------------

namespace {

bool can_cast(DType from, DType to) {
  if (is_floating(from) && !is_floating(to)) return false;
  if (from != kBool && to == kBool) return false;
  return true;
}

void check_writable(const Tensor& self, const char* op) {
  for (int64_t d = 0; d < self.dim(); ++d)
    TG_CHECK(self.strides()[d] != 0 || self.shape()[d] <= 1,
             "{}: cannot write in place into an expanded tensor (shape {}, strides {}): several "
             "elements share memory; clone() it first",
             op, self.shape(), self.strides());
}

// `src` broadcast to `self`'s shape, in dtype `dtype`, never sharing memory with self unless it is
// the very same view (so an elementwise kernel reading it while writing self is safe).
Tensor operand_for(const Tensor& self, const Tensor& src, DType dtype, const char* op) {
  Shape shape = broadcast_shapes(self.shape(), src.shape(), op);
  TG_CHECK(shape == self.shape(),
           "{}: the other operand of shape {} does not broadcast to this tensor's shape {}", op,
           src.shape(), self.shape());
  Tensor s = cast_if_needed(src, dtype);
  bool same_view = s.impl() == self.impl() ||
                   (s.is_alias_of(self) && s.shape() == self.shape() &&
                    s.strides() == self.strides() && s.storage_offset() == self.storage_offset());
  if (s.is_alias_of(self) && !same_view) s = s.clone();
  return expand_to(s, self.shape());
}

// See Note [In-place ops] (autograd/record.cpp).
void inplace_with_grad(Tensor& self, OpKind kind, const Tensor& other, const char* op) {
  check_inplace(self, op);
  Shape shape = broadcast_shapes(self.shape(), other.shape(), op);
  TG_CHECK(shape == self.shape(),
           "{}: the other operand of shape {} does not broadcast to this tensor's shape {}", op,
           other.shape(), self.shape());
  // mul and div save their first input for the other's gradient: keep the old value intact.
  bool saves_self = (kind == OpKind::Mul || kind == OpKind::Div) && other.requires_grad();
  Tensor o = other.is_alias_of(self) ? other.clone() : other;
  Tensor result = binary_op(kind, saves_self ? self.clone() : self, o, Loc::current());
  rebase_history(self, result.to(self.dtype()));
}

Tensor& inplace_binary(Tensor& self, OpKind kind, const Tensor& other_in, Loc loc, const char* op) {
  OpScope scope(op, loc);
  check_defined(self, op);
  check_defined(other_in, op, "other operand");
  // A 0-d CPU operand joins a GPU tensor there, as in binary_op.
  const Tensor other =
      other_in.device() != self.device() && other_in.dim() == 0 && other_in.device().is_cpu()
          ? other_in.to(self.device())
          : other_in;
  check_same_device(self, other, op);
  DType promoted = result_type({operand(self), operand(other)});
  DType compute = kind == OpKind::Div && !is_floating(promoted) ? kF32 : promoted;
  TG_CHECK(can_cast(compute, self.dtype()),
           "{}: the result type {} cannot be stored in place into a {} tensor (shape {})", op,
           dtype_name(compute), dtype_name(self.dtype()), self.shape());
  check_writable(self, op);
  if (inplace_needs_grad(self, &other)) {
    inplace_with_grad(self, kind, other, op);
    return self;
  }
  if (compute == self.dtype()) {
    Tensor o = operand_for(self, other, compute, op);
    if (self.numel() > 0) backend_of(self).binary(kind, impl_of(self), impl_of(self), impl_of(o));
  } else {
    Tensor result = binary_op(kind, self, other, loc);
    Shape shape = broadcast_shapes(self.shape(), other.shape(), op);
    TG_CHECK(shape == self.shape(),
             "{}: the other operand of shape {} does not broadcast to this tensor's shape {}", op,
             other.shape(), self.shape());
    if (self.numel() > 0) backend_of(self).copy(impl_of(self), impl_of(result));
  }
  self.impl()->bump_version();
  return self;
}

Tensor& inplace_scalar(Tensor& self, OpKind kind, Scalar other, Loc loc, const char* op) {
  OpScope scope(op, loc);
  check_defined(self, op);
  DType promoted = result_type({operand(self), operand(other)});
  return inplace_binary(self, kind, scalar_tensor(other, promoted, self.device()), loc, op);
}

// Note [Scaled in-place updates]
// add_(other, alpha), addcmul_ and addcdiv_ are how optimizers update their state (PyTorch's
// formulas are written with them). Outside autograd and tracing they run as one fused pass over
// self (Backend::fused: each step the same kernel as the plain op, so the same numbers):
//   add_:     t = alpha·other;          self = self + t
//   addcmul_: t = value·t1; t = t·t2;   self = self + t
//   addcdiv_: t = t1 / t2; t = value·t; self = self + t
// With autograd on one of them, or while tracing (the trace fuses by itself, and its files hold
// only plain ops), they are those plain ops. The scale becomes a one-element tensor of self's
// dtype, as a number does in a binary op.
enum class Update { Add, Addcmul, Addcdiv };

Tensor& scaled_update(Tensor& self, Update kind, const Tensor& t1, const Tensor* t2,
                      const Tensor& scale, Loc loc, const char* op) {
  OpScope scope(op, loc);
  check_defined(self, op);
  check_defined(t1, op, "first operand");
  if (t2) check_defined(*t2, op, "second operand");
  check_defined(scale, op, "scale");
  TG_CHECK(scale.numel() == 1, "{}: the scale must be one element, got shape {}", op,
           scale.shape());
  check_same_device(self, t1, op);
  if (t2) check_same_device(self, *t2, op);
  bool grad = inplace_needs_grad(self, &t1) || (t2 && inplace_needs_grad(self, t2)) ||
              inplace_needs_grad(self, &scale);
  bool fused = !grad && !is_tracing() && is_floating(self.dtype()) && self.numel() > 0 &&
               scale.device() == self.device() &&
               result_type({operand(self), operand(t1)}) == self.dtype() &&
               (!t2 || result_type({operand(self), operand(*t2)}) == self.dtype());
  if (!fused) {
    // The scale in self's dtype, as in the fused pass (an f64 rate would otherwise promote
    // one-element updates to f64).
    Tensor s = is_floating(self.dtype()) ? scale.reshape({}).to(self.dtype()) : scale.reshape({});
    switch (kind) {
      case Update::Add: return self.add_(s * t1, loc);
      case Update::Addcmul: return self.add_(s * t1 * *t2, loc);
      case Update::Addcdiv: return self.add_(s * (t1 / *t2), loc);
    }
  }
  check_writable(self, op);
  DType dt = self.dtype();
  Tensor a = operand_for(self, t1, dt, op);
  Tensor b = t2 ? operand_for(self, *t2, dt, op) : Tensor();
  Tensor c = expand_to(scale.reshape({}).to(dt), self.shape());
  using K = FusedStep::Kind;
  auto step = [&](OpKind o, int32_t x, int32_t y) {
    FusedStep f;
    f.kind = K::Binary;
    f.op = o;
    f.dtype = dt;
    f.a = x;
    f.b = y;
    return f;
  };
  // Inputs: -1 self, -2 t1, -3 t2 or nothing, -4 the scale (Backend::fused's numbering).
  const TensorImpl* in[4] = {&impl_of(self), &impl_of(a), t2 ? &impl_of(b) : &impl_of(a),
                             &impl_of(c)};
  std::vector<FusedStep> steps;
  switch (kind) {
    case Update::Add: steps = {step(OpKind::Mul, -4, -2), step(OpKind::Add, -1, 0)}; break;
    case Update::Addcmul:
      steps = {step(OpKind::Mul, -4, -2), step(OpKind::Mul, 0, -3), step(OpKind::Add, -1, 1)};
      break;
    case Update::Addcdiv:
      steps = {step(OpKind::Div, -2, -3), step(OpKind::Mul, -4, 0), step(OpKind::Add, -1, 1)};
      break;
  }
  backend_of(self).fused(steps, impl_of(self), in, 4);
  self.impl()->bump_version();
  return self;
}

Tensor scale_tensor(Scalar s, const Tensor& self) {
  return scalar_tensor(s, result_type({operand(self), operand(s)}), self.device());
}

}  // namespace

Tensor& Tensor::add_(const Tensor& o, Scalar alpha, Loc loc) {
  return scaled_update(*this, Update::Add, o, nullptr, scale_tensor(alpha, *this), loc, "add_");
}
Tensor& Tensor::add_(const Tensor& o, const Tensor& alpha, Loc loc) {
  return scaled_update(*this, Update::Add, o, nullptr, alpha, loc, "add_");
}
Tensor& Tensor::addcmul_(const Tensor& t1, const Tensor& t2, Scalar value, Loc loc) {
  return scaled_update(*this, Update::Addcmul, t1, &t2, scale_tensor(value, *this), loc, "addcmul_");
}
Tensor& Tensor::addcmul_(const Tensor& t1, const Tensor& t2, const Tensor& value, Loc loc) {
  return scaled_update(*this, Update::Addcmul, t1, &t2, value, loc, "addcmul_");
}
Tensor& Tensor::addcdiv_(const Tensor& t1, const Tensor& t2, Scalar value, Loc loc) {
  return scaled_update(*this, Update::Addcdiv, t1, &t2, scale_tensor(value, *this), loc, "addcdiv_");
}
Tensor& Tensor::addcdiv_(const Tensor& t1, const Tensor& t2, const Tensor& value, Loc loc) {
  return scaled_update(*this, Update::Addcdiv, t1, &t2, value, loc, "addcdiv_");
}

Tensor& Tensor::add_(const Tensor& o, Loc loc) { return inplace_binary(*this, OpKind::Add, o, loc, "add_"); }
Tensor& Tensor::sub_(const Tensor& o, Loc loc) { return inplace_binary(*this, OpKind::Sub, o, loc, "sub_"); }
Tensor& Tensor::mul_(const Tensor& o, Loc loc) { return inplace_binary(*this, OpKind::Mul, o, loc, "mul_"); }
Tensor& Tensor::div_(const Tensor& o, Loc loc) { return inplace_binary(*this, OpKind::Div, o, loc, "div_"); }
Tensor& Tensor::add_(Scalar o, Loc loc) { return inplace_scalar(*this, OpKind::Add, o, loc, "add_"); }
Tensor& Tensor::sub_(Scalar o, Loc loc) { return inplace_scalar(*this, OpKind::Sub, o, loc, "sub_"); }
Tensor& Tensor::mul_(Scalar o, Loc loc) { return inplace_scalar(*this, OpKind::Mul, o, loc, "mul_"); }
Tensor& Tensor::div_(Scalar o, Loc loc) { return inplace_scalar(*this, OpKind::Div, o, loc, "div_"); }

Tensor& Tensor::fill_(Scalar value, Loc loc) {
  OpScope scope("fill_", loc);
  check_defined(*this, "fill_");
  check_writable(*this, "fill_");
  if (inplace_needs_grad(*this, nullptr)) {  // the new values are constants: history ends here
    check_inplace(*this, "fill_");
    rebase_history(*this, full_like(*this, value));
    return *this;
  }
  if (numel() > 0) backend_of(*this).fill(impl_of(*this), value);
  impl()->bump_version();
  return *this;
}

Tensor& Tensor::zero_(Loc loc) { return fill_(0, loc); }

Tensor& Tensor::copy_(const Tensor& src, Loc loc) {
  OpScope scope("copy_", loc);
  check_defined(*this, "copy_");
  check_defined(src, "copy_", "source");
  check_writable(*this, "copy_");
  if (inplace_needs_grad(*this, &src)) {
    check_inplace(*this, "copy_");
    Shape shape = broadcast_shapes(this->shape(), src.shape(), "copy_");
    TG_CHECK(shape == this->shape(),
             "copy_: the source of shape {} does not broadcast to this tensor's shape {}",
             src.shape(), this->shape());
    rebase_history(*this, src.to(device()).to(dtype()).expand(this->shape()));
    return *this;
  }
  Tensor s = src.device() == device() ? src : src.to(device());
  s = operand_for(*this, s, s.dtype(), "copy_");
  if (numel() > 0) backend_of(*this).copy(impl_of(*this), impl_of(s));
  impl()->bump_version();
  return *this;
}

Tensor& Tensor::clamp_(std::optional<Scalar> min, std::optional<Scalar> max, Loc loc) {
  OpScope scope("clamp_", loc);
  check_defined(*this, "clamp_");
  bool with_grad = inplace_needs_grad(*this, nullptr);
  if (with_grad) check_inplace(*this, "clamp_");
  // clamp saves its input: under autograd it reads a copy, since *this is about to change.
  Tensor result = tg::clamp(with_grad ? clone() : *this, min, max);
  TG_CHECK(can_cast(result.dtype(), dtype()),
           "clamp_: float bounds cannot clamp a {} tensor in place", dtype_name(dtype()));
  if (result.requires_grad()) {
    rebase_history(*this, result);
    return *this;
  }
  return copy_(result);
}

// --- bprops of the copies -------------------------------------------------------------------------

namespace {
void cast_bprop(BpropCtx& ctx) { ctx.set(0, ctx.grad.to(ctx.input_dtype(0))); }
void to_device_bprop(BpropCtx& ctx) { ctx.set(0, ctx.grad.to(ctx.input_device(0))); }
void clone_bprop(BpropCtx& ctx) { ctx.set(0, ctx.grad); }

const bool registered = [] {
  register_bprop(OpKind::Cast, cast_bprop, kSaveNone);
  register_bprop(OpKind::ToDevice, to_device_bprop, kSaveNone);
  register_bprop(OpKind::Clone, clone_bprop, kSaveNone);
  return true;
}();
}  // namespace

}  // namespace tg
