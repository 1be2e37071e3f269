// Mode::Debug: each replay runs the graph as recorded, then the optimized one, and compares the
// values node by node (Note [Debug replay]).
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "ops/ops_common.h"
#include "trace/executor.h"
#include "trace/passes.h"

namespace tg::trace_detail {

// Note [Debug replay]
// The recorded graph runs first, without shared memory, keeping a copy of every value (a temp
// written once, whole). Then what it changed is put back: state, kept temps, arguments written in
// place, and the random generator, so the optimized graph starts from the same point and draws
// the same numbers. The optimized graph then runs node by node; each value it writes that the
// recorded graph also has is compared: floats within rtol 1e-4 / atol 1e-5 (f32) or 1e-9 / 1e-12
// (f64), NaN against NaN, and a finite value where the recorded one is inf or NaN passes (that is
// what the stability rewrites are for); integers and bools exactly. The first difference throws.

namespace {

std::vector<char> values_of(const Program& p) {
  std::vector<int> writes = write_counts(p);
  std::vector<char> v(p.buffers.size(), 0);
  for (const Node& n : p.nodes)
    if (writes[n.out.buf] == 1 && p.full_write(n) && p.buffers[n.out.buf].kind == BufKind::Temp)
      v[n.out.buf] = 1;
  return v;
}

// A storage's bytes as a tensor of bytes over it (no copy), for the backend's copies.
TensorImpl bytes_view(const std::shared_ptr<Storage>& s) {
  TensorImpl t;
  t.storage = s;
  t.sizes = {static_cast<int64_t>(s->nbytes)};
  t.strides = {1};
  t.numel = static_cast<int64_t>(s->nbytes);
  t.dtype = kBool;  // one byte per element
  return t;
}

// A byte copy of a storage on the host (on a GPU too), for putting state back.
std::vector<char> copy_of(const std::shared_ptr<Storage>& s) {
  std::vector<char> c(s->nbytes);
  if (s->nbytes == 0) return c;
  if (s->device.is_cpu())
    std::memcpy(c.data(), s->data, s->nbytes);
  else
    device_backend(s->device).copy_to_host(c.data(), bytes_view(s));
  return c;
}

void put_back(const std::shared_ptr<Storage>& s, const std::vector<char>& bytes) {
  if (s->nbytes == 0) return;
  if (s->device.is_cpu())
    std::memcpy(s->data, bytes.data(), s->nbytes);
  else
    device_backend(s->device).copy_from_host(bytes_view(s), bytes.data());
}

void compare(const Tensor& want, const Tensor& got, const Node& n, size_t index) {
  std::vector<double> w = want.to_vector<double>(), g = got.to_vector<double>();
  bool f64 = want.dtype() == kF64, exact = !is_floating(want.dtype());
  double rtol = f64 ? 1e-9 : 1e-4, atol = f64 ? 1e-12 : 1e-5;
  for (size_t k = 0; k < w.size(); ++k) {
    double a = w[k], b = g[k];
    bool ok = exact ? a == b
                    : (std::isnan(a) && std::isnan(b)) || (!std::isfinite(a) && std::isfinite(b)) ||
                          a == b || std::abs(a - b) <= atol + rtol * std::abs(a);
    if (ok) continue;
    throw Error(fmt::format("trace (Mode::Debug): node {} ({}) of the optimized graph gives {} at "
                            "element {} of {}{}, where the graph as recorded gives {}; it computes "
                            "{} at {}:{}. Switch passes off with TraceOptions::disable to find "
                            "the rewrite, and please report it",
                            index, n.label(), b, k, dtype_name(want.dtype()), want.shape(), a,
                            n.user_op.empty() ? "an op" : n.user_op, n.file, n.line),
                "trace", Loc{});
  }
}

}  // namespace

std::vector<Tensor> run_debug(const Program& reference, Executor& reference_exec,
                              const Program& optimized, Executor& exec,
                              const std::vector<Tensor>& args) {
  // What the recorded graph may change, to put back before the optimized one runs.
  std::vector<std::pair<std::shared_ptr<Storage>, std::vector<char>>> saved;
  for (const Buffer& b : reference.buffers) {
    std::shared_ptr<Storage> s;
    if (b.kind == BufKind::State) s = b.state.lock();
    if (b.kind == BufKind::Temp && b.escaped) s = b.kept;
    if (b.kind == BufKind::Input) s = args[b.input].impl()->storage;
    if (s) saved.emplace_back(s, copy_of(s));
  }
  uint64_t draws = random_offset();
  std::vector<char> ref_values = values_of(reference);
  std::vector<Tensor> expected(reference.buffers.size());
  reference_exec.run_checked(args, [&](size_t i, const Tensor& out) {
    int32_t b = reference.nodes[i].out.buf;
    if (ref_values[b]) expected[b] = out.clone();
  });
  for (auto& [s, copy] : saved) put_back(s, copy);
  set_random_offset(draws);
  std::vector<char> opt_values = values_of(optimized);
  return exec.run_checked(args, [&](size_t i, const Tensor& out) {
    const Node& n = optimized.nodes[i];
    if (n.out.buf < static_cast<int32_t>(expected.size()) && opt_values[n.out.buf] &&
        expected[n.out.buf].defined())
      compare(expected[n.out.buf], out, n, i);
  });
}

}  // namespace tg::trace_detail
