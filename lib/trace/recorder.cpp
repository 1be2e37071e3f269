// Recording: the trace hook, the backend that records, and how storages become buffers.
#include "trace/recorder.h"

#include "core/check.h"
#include "ops/ops_common.h"

namespace tg {

bool is_tracing() { return t_trace_hook != nullptr; }

NoTraceGuard::NoTraceGuard() : saved_(t_trace_hook) { t_trace_hook = nullptr; }
NoTraceGuard::~NoTraceGuard() { t_trace_hook = static_cast<TraceHook*>(saved_); }

void on_replay(std::function<void()> fn) {
  if (t_trace_hook == nullptr) return;
  static_cast<trace_detail::Recorder*>(t_trace_hook)->add_replay_hook(std::move(fn));
}

namespace trace_detail {

int64_t View::numel() const {
  int64_t n = 1;
  for (int64_t s : sizes) n *= s;
  return n;
}

bool View::contiguous() const { return strides == contiguous_strides(sizes); }

bool Program::full_write(const Node& n) const {
  if (n.reads_out()) return false;
  const Buffer& b = buffers[n.out.buf];
  const View& v = n.out.view;
  return v.offset == 0 && v.contiguous() &&
         static_cast<size_t>(v.numel() * esize(v.dtype)) == b.nbytes;
}

// --- the recording backend ---------------------------------------------------------------------

namespace {
Node make(Call call, OpKind op = OpKind::Clone) {
  Node n;
  n.call = call;
  n.op = op;
  return n;
}
}  // namespace

void RecordingBackend::copy(const TensorImpl& dst, const TensorImpl& src) {
  real().copy(dst, src);
  Node n = make(Call::Copy);
  n.out = rec_.operand(dst);
  n.in = {rec_.operand(src)};
  rec_.add(std::move(n));
}

void RecordingBackend::copy_from_host(const TensorImpl& dst, const void* src) {
  real().copy_from_host(dst, src);
  Node n = make(Call::Constant);
  n.out = rec_.operand(dst);
  const char* p = static_cast<const char*>(src);
  n.bytes.assign(p, p + dst.numel * esize(dst.dtype));
  rec_.add(std::move(n));
}

// A tensor moved between the CPU and the device: a node, so that each replay copies the CPU
// side's elements as they are then (an argument's, a captured tensor's).
void RecordingBackend::transfer(const TensorImpl& dst, const TensorImpl& src) {
  real().transfer(dst, src);
  Node n = make(Call::Transfer, OpKind::ToDevice);
  n.out = rec_.operand(dst);
  n.in = {rec_.operand(src)};
  rec_.add(std::move(n));
}

void RecordingBackend::copy_to_host(void* dst, const TensorImpl& src) {
  (void)dst;
  (void)src;
  check_host_read("a copy to the host");
}

void RecordingBackend::fill(const TensorImpl& dst, Scalar value) {
  real().fill(dst, value);
  Node n = make(Call::Fill);
  n.out = rec_.operand(dst);
  n.value = value;
  rec_.add(std::move(n));
}

void RecordingBackend::iota(const TensorImpl& dst, double start, double step) {
  real().iota(dst, start, step);
  Node n = make(Call::Iota);
  n.out = rec_.operand(dst);
  n.start = start;
  n.step = step;
  rec_.add(std::move(n));
}

void RecordingBackend::random(RandomKind kind, const TensorImpl& dst, uint64_t seed,
                              uint64_t offset, double a, double b) {
  real().random(kind, dst, seed, offset, a, b);
  Node n = make(Call::Random);
  n.out = rec_.operand(dst);
  n.random = kind;
  n.a = a;
  n.b = b;
  rec_.add(std::move(n));
}

void RecordingBackend::unary(OpKind kind, const TensorImpl& out, const TensorImpl& x,
                             const OpAttrs& attrs) {
  real().unary(kind, out, x, attrs);
  Node n = make(Call::Unary, kind);
  n.out = rec_.operand(out);
  n.in = {rec_.operand(x)};
  n.attrs = attrs;
  rec_.add(std::move(n));
}

void RecordingBackend::binary(OpKind kind, const TensorImpl& out, const TensorImpl& a,
                              const TensorImpl& b) {
  real().binary(kind, out, a, b);
  Node n = make(Call::Binary, kind);
  n.out = rec_.operand(out);
  n.in = {rec_.operand(a), rec_.operand(b)};
  rec_.add(std::move(n));
}

void RecordingBackend::where(const TensorImpl& out, const TensorImpl& cond, const TensorImpl& a,
                             const TensorImpl& b) {
  real().where(out, cond, a, b);
  Node n = make(Call::Where, OpKind::Where);
  n.out = rec_.operand(out);
  n.in = {rec_.operand(cond), rec_.operand(a), rec_.operand(b)};
  rec_.add(std::move(n));
}

void RecordingBackend::reduce(OpKind kind, const TensorImpl& out, const TensorImpl& x,
                              int nreduced) {
  real().reduce(kind, out, x, nreduced);
  Node n = make(Call::Reduce, kind);
  n.out = rec_.operand(out);
  n.in = {rec_.operand(x)};
  n.nreduced = nreduced;
  rec_.add(std::move(n));
}

void RecordingBackend::matmul(const TensorImpl& out, const TensorImpl& a, const TensorImpl& b) {
  real().matmul(out, a, b);
  Node n = make(Call::Matmul, OpKind::Matmul);
  n.out = rec_.operand(out);
  n.in = {rec_.operand(a), rec_.operand(b)};
  rec_.add(std::move(n));
}

void RecordingBackend::index(OpKind kind, const TensorImpl& out, const TensorImpl& x, int dim,
                             const TensorImpl& index) {
  real().index(kind, out, x, dim, index);
  Node n = make(Call::Index, kind);
  n.out = rec_.operand(out);
  n.in = {rec_.operand(x), rec_.operand(index)};
  n.dim = dim;
  rec_.add(std::move(n));
}

void RecordingBackend::window(OpKind kind, const TensorImpl& out, const TensorImpl& x,
                              const Window2d& w, const TensorImpl* indices) {
  real().window(kind, out, x, w, indices);
  Node n = make(Call::Window, kind);
  n.out = rec_.operand(out);
  n.in = {rec_.operand(x)};
  if (indices != nullptr) n.out2 = rec_.operand(*indices);
  n.window = w;
  rec_.add(std::move(n));
}

// --- the recorder --------------------------------------------------------------------------------

Recorder::Recorder(const std::vector<Tensor>& args) : cpu_(*this, kCPU) {
  prog_.num_inputs = args.size();
  for (size_t i = 0; i < args.size(); ++i) {
    const TensorImpl& t = *args[i].impl();
    prog_.input_views.push_back({t.sizes, t.strides, t.offset, t.dtype});
    auto it = map_.find(t.storage.get());
    if (it != map_.end()) continue;  // aliases an earlier argument (part of the signature)
    Buffer b;
    b.kind = BufKind::Input;
    b.input = static_cast<int>(i);
    b.nbytes = t.storage->nbytes;
    b.device = t.device();
    b.first_op = "argument";
    prog_.buffers.push_back(std::move(b));
    weak_.push_back(t.storage);
    map_[t.storage.get()] = {t.storage, static_cast<int32_t>(prog_.buffers.size() - 1)};
  }
}

Backend& Recorder::backend(Device device) {
  if (device.is_cpu()) return cpu_;
  size_t i = static_cast<size_t>(device.index);
  if (cuda_.size() <= i) cuda_.resize(i + 1);
  if (!cuda_[i]) cuda_[i] = std::make_unique<RecordingBackend>(*this, device);
  return *cuda_[i];
}

void Recorder::on_allocate(const std::shared_ptr<Storage>& storage) {
  buffer_of(storage, /*allocated=*/true);
}

int32_t Recorder::buffer_of(const std::shared_ptr<Storage>& s, bool allocated) {
  auto it = map_.find(s.get());
  // A dead entry at the same address is a storage that was freed; this one is new.
  if (it != map_.end() && !it->second.storage.expired() && !allocated) return it->second.buf;
  Buffer b;
  b.kind = allocated ? BufKind::Temp : BufKind::State;
  b.nbytes = s->nbytes;
  b.device = s->device;
  if (const char* op = OpScope::current_op()) b.first_op = op;
  b.first_loc = OpScope::current_loc();
  if (!allocated) b.state = s;
  prog_.buffers.push_back(std::move(b));
  weak_.push_back(s);
  auto id = static_cast<int32_t>(prog_.buffers.size() - 1);
  map_[s.get()] = {s, id};
  return id;
}

Operand Recorder::operand(const TensorImpl& t) {
  return {buffer_of(t.storage, false), {t.sizes, t.strides, t.offset, t.dtype}};
}

void Recorder::add(Node node) {
  if (const char* op = OpScope::current_op()) node.user_op = op;
  Loc loc = OpScope::current_loc();
  node.file = loc.file_name();
  node.line = loc.line();
  prog_.nodes.push_back(std::move(node));
}

Program Recorder::finish(const std::vector<Tensor>& outputs) {
  std::vector<int> output_refs(prog_.buffers.size() + outputs.size(), 0);
  for (const Tensor& t : outputs) {
    Operand o = operand(*t.impl());
    prog_.outputs.push_back(o);
    output_refs.resize(prog_.buffers.size(), 0);
    ++output_refs[o.buf];
  }
  for (size_t i = 0; i < prog_.buffers.size(); ++i) {
    Buffer& b = prog_.buffers[i];
    if (b.kind != BufKind::Temp) continue;
    std::shared_ptr<Storage> alive = weak_[i].lock();
    if (!alive) continue;
    // Held by someone besides `alive` and the outputs' handles: the function let it escape.
    long others = alive.use_count() - 1 - output_refs[i];
    b.output = output_refs[i] > 0;
    if (others > 0) {
      b.escaped = true;
      b.output = false;
      b.kept = alive;
    }
  }
  for (size_t i = 0; i < prog_.buffers.size(); ++i) {
    const Buffer& b = prog_.buffers[i];
    if (b.kind == BufKind::State && b.state.expired()) {
      throw Error(fmt::format(
                      "trace: the function read a tensor that existed before tracing (first read "
                      "by {} at {}:{}) and it was freed before the function returned, so replays "
                      "could not read it. A handle was probably reassigned (`k = k + 1`); update "
                      "state in place (`k += 1`, copy_) so every replay sees the new value",
                      b.first_op.empty() ? "an op" : b.first_op, b.first_loc.file_name(),
                      b.first_loc.line()),
                  "trace", b.first_loc);
    }
  }
  return std::move(prog_);
}

}  // namespace trace_detail
}  // namespace tg
