// The memory plan and the executor.
#include "trace/executor.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>

#include "backend/parallel.h"
#include "core/check.h"
#include "ops/ops_common.h"

namespace tg::trace_detail {

namespace {
constexpr size_t kAlign = 64;
size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
size_t device_slot(Device d) { return d.is_cpu() ? 0 : 1 + static_cast<size_t>(d.index); }

bool elementwise(const Node& n) {
  return n.call == Call::Unary || n.call == Call::Binary || n.call == Call::Where ||
         n.call == Call::Copy || n.call == Call::Fused;
}

std::atomic<bool> g_capture_on_cpu{false};

// TAPEGRAD_CUDA_GRAPHS=0 replays node by node (to tell a capture's fault from the rest).
bool cuda_graphs_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("TAPEGRAD_CUDA_GRAPHS");
    return !(v != nullptr && std::string_view(v) == "0");
  }();
  return on;
}

// The CPU's stand-in for a recording (tests only): runs the work at each launch.
class Deferred final : public CapturedWork {
 public:
  explicit Deferred(std::function<void()> work) : work_(std::move(work)) {}
  void launch() override { work_(); }

 private:
  std::function<void()> work_;
};

// Whether a view's elements lie within `whole`'s (both of one storage), compared in bytes.
bool within(const View& v, const View& whole) {
  if (v.numel() == 0) return true;
  int64_t lo = v.offset, hi = v.offset;
  for (size_t d = 0; d < v.sizes.size(); ++d) {
    int64_t span = (v.sizes[d] - 1) * v.strides[d];
    (span < 0 ? lo : hi) += span;
  }
  return lo * esize(v.dtype) >= whole.offset * esize(whole.dtype) &&
         (hi + 1) * esize(v.dtype) <= (whole.offset + whole.numel()) * esize(whole.dtype);
}

// A copy of a storage's first nbytes bytes, bit for bit (as integers: no float is touched).
std::shared_ptr<Storage> clone_bytes(const std::shared_ptr<Storage>& s, size_t nbytes) {
  auto out = allocate_storage(nbytes, s->device);
  if (nbytes == 0) return out;
  DType dt = nbytes % 8 == 0 ? kI64 : nbytes % 4 == 0 ? kI32 : kBool;
  TensorImpl src, dst;
  src.storage = s;
  dst.storage = out;
  for (TensorImpl* t : {&src, &dst}) {
    t->dtype = dt;
    t->numel = static_cast<int64_t>(nbytes / element_size(dt));
    t->sizes = {t->numel};
    t->strides = {1};
  }
  device_backend(s->device).copy(dst, src);
  return out;
}
}  // namespace

void set_capture_on_cpu_for_tests(bool on) { g_capture_on_cpu = on; }

// Note [Memory plan]
// Every temp that is neither kept (escaped) nor returned lives in one arena per device, allocated
// once per signature. A temp is live from the first node that touches it to the last; two temps
// share bytes when their lifetimes do not overlap (greedy, largest first, lowest offset that
// fits). Times are half steps: node i writes at 2i+1 and reads at 2i+1, except that an
// elementwise node reading a temp for the last time through exactly the view it writes reads at
// 2i, so its output may take the input's bytes: the node runs in place, element by element.
// Exactly its bytes, or none of them: an output placed part way into its input (a little
// further along, say) would overwrite elements before they are read (Note [Compiled fused
// groups] walks 16 at a time; the plain kernels too).
MemoryPlan plan_memory(const Program& p, bool share) {
  size_t nb = p.buffers.size();
  MemoryPlan plan;
  plan.offset.assign(nb, -1);
  std::vector<int64_t> start(nb, -1), end(nb, -1);
  // Values of row tiles live in the tiles' scratch (Note [Row tiles]).
  std::vector<char> local(nb, 0);
  std::vector<char> tiled(p.nodes.size(), 0);
  for (const TileRun& r : p.tiles) {
    for (int32_t b : r.local) local[b] = 1;
    for (size_t i = r.first; i < r.end; ++i) tiled[i] = 1;
  }
  auto planned = [&](int32_t b) {
    const Buffer& buf = p.buffers[b];
    return buf.kind == BufKind::Temp && !buf.persistent() && buf.nbytes > 0 && !local[b];
  };
  auto touch = [&](int32_t b, int64_t t) {
    if (b < 0) return;
    start[b] = start[b] < 0 ? t : std::min(start[b], t);
    end[b] = std::max(end[b], t);
  };
  for (size_t i = 0; i < p.nodes.size(); ++i) {
    const Node& n = p.nodes[i];
    auto t = static_cast<int64_t>(2 * i + 1);
    for (const Operand& o : n.in) touch(o.buf, t);
    touch(n.out.buf, t);
    touch(n.out2.buf, t);
  }
  // What a run of tiles touches is live over the whole run: its tiles interleave the nodes.
  for (const TileRun& r : p.tiles) {
    auto first = static_cast<int64_t>(2 * r.first + 1), last = static_cast<int64_t>(2 * r.end - 1);
    for (size_t i = r.first; i < r.end; ++i) {
      const Node& n = p.nodes[i];
      touch(n.out.buf, first), touch(n.out.buf, last);
      for (const Operand& o : n.in) touch(o.buf, first), touch(o.buf, last);
    }
  }
  // Last reads that may run in place; each such input and output are mates, which share all
  // of their bytes or none.
  std::vector<std::vector<int32_t>> mates(nb);
  for (size_t i = 0; i < p.nodes.size(); ++i) {
    const Node& n = p.nodes[i];
    if (!share || tiled[i] || !elementwise(n) || !planned(n.out.buf) || !p.full_write(n)) continue;
    auto t = static_cast<int64_t>(2 * i + 1);
    for (const Operand& o : n.in) {
      if (o.buf == n.out.buf || !planned(o.buf) || end[o.buf] != t || start[o.buf] == t) continue;
      if (!(o.view == n.out.view)) continue;
      bool other_use = false;  // read again by the same node through another view
      for (const Operand& q : n.in) other_use |= q.buf == o.buf && !(q.view == o.view);
      if (!other_use) {
        end[o.buf] = t - 1;
        mates[o.buf].push_back(n.out.buf);
        mates[n.out.buf].push_back(o.buf);
      }
    }
  }
  std::vector<int32_t> order;
  for (size_t b = 0; b < nb; ++b) {
    if (!planned(static_cast<int32_t>(b)) || start[b] < 0) continue;  // untouched after dce
    order.push_back(static_cast<int32_t>(b));
    plan.naive_bytes += align_up(p.buffers[b].nbytes);
  }
  // The most bytes alive at one time: no placement can do better.
  {
    std::vector<std::pair<int64_t, int64_t>> events;
    for (int32_t b : order) {
      auto size = static_cast<int64_t>(align_up(p.buffers[b].nbytes));
      events.push_back({start[b], size});
      events.push_back({end[b] + 1, -size});
    }
    std::sort(events.begin(), events.end());
    int64_t live = 0;
    for (auto& [t, d] : events) {
      live += d;
      plan.live_peak =
          std::max<size_t>(plan.live_peak, static_cast<size_t>(std::max<int64_t>(live, 0)));
    }
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t x, int32_t y) { return p.buffers[x].nbytes > p.buffers[y].nbytes; });
  struct Placed {
    int64_t off;
    size_t size;
    int32_t buf;
  };
  std::vector<std::vector<Placed>> placed;
  for (int32_t b : order) {
    size_t slot = device_slot(p.buffers[b].device);
    if (placed.size() <= slot) placed.resize(slot + 1);
    if (plan.arena_bytes.size() <= slot) plan.arena_bytes.resize(slot + 1, 0);
    size_t size = align_up(p.buffers[b].nbytes);
    int64_t off = 0;
    if (share) {
      std::vector<Placed> clash, mate;
      for (const Placed& q : placed[slot]) {
        if (start[q.buf] <= end[b] && start[b] <= end[q.buf]) clash.push_back(q);
        else if (std::find(mates[b].begin(), mates[b].end(), q.buf) != mates[b].end())
          mate.push_back(q);
      }
      auto overlaps = [&](int64_t at, const Placed& q) {
        return at < q.off + static_cast<int64_t>(q.size) && q.off < at + static_cast<int64_t>(size);
      };
      // In place where it fits: at a mate's offset, clear of the clashes and of other mates.
      int64_t in_place = -1;
      for (const Placed& q : mate) {
        bool ok = true;
        for (const Placed& c : clash) ok &= !overlaps(q.off, c);
        for (const Placed& m : mate) ok &= m.off == q.off || !overlaps(q.off, m);
        if (ok) {
          in_place = q.off;
          break;
        }
      }
      if (in_place >= 0) {
        off = in_place;
      } else {
        clash.insert(clash.end(), mate.begin(), mate.end());  // then clear of them altogether
        std::sort(clash.begin(), clash.end(), [](auto& x, auto& y) { return x.off < y.off; });
        for (const Placed& q : clash) {
          if (off + static_cast<int64_t>(size) <= q.off) break;
          off = std::max(off, q.off + static_cast<int64_t>(q.size));
        }
      }
    } else {
      off = static_cast<int64_t>(plan.arena_bytes[slot]);
    }
    placed[slot].push_back({off, size, b});
    plan.offset[b] = off;
    plan.arena_bytes[slot] = std::max(plan.arena_bytes[slot], static_cast<size_t>(off) + size);
  }
  for (const Node& n : p.nodes) {
    if (!planned(n.out.buf)) continue;
    for (const Operand& o : n.in) {
      if (o.buf != n.out.buf && planned(o.buf) && plan.offset[o.buf] == plan.offset[n.out.buf] &&
          device_slot(p.buffers[o.buf].device) == device_slot(p.buffers[n.out.buf].device)) {
        ++plan.in_place;
        break;
      }
    }
  }
  return plan;
}

// --- executor ------------------------------------------------------------------------------------

Executor::Executor(std::shared_ptr<const Program> program, const MemoryPlan& plan)
    : program_(std::move(program)) {
  const Program& p = *program_;
  size_t nb = p.buffers.size();
  bound_.resize(nb);
  users_.resize(nb);
  recorded_offset_.resize(nb);
  arenas_.resize(plan.arena_bytes.size());
  for (size_t s = 0; s < plan.arena_bytes.size(); ++s) {
    if (plan.arena_bytes[s] == 0) continue;
    Device d = s == 0 ? kCPU : cuda(static_cast<int>(s - 1));
    arenas_[s] = allocate_storage(plan.arena_bytes[s], d);
  }
  input_buffers_.assign(p.num_inputs, -1);
  for (size_t b = 0; b < nb; ++b) {
    const Buffer& buf = p.buffers[b];
    switch (buf.kind) {
      case BufKind::Input:
        input_buffers_[buf.input] = static_cast<int32_t>(b);
        break;
      case BufKind::State:
        state_.push_back(static_cast<int32_t>(b));
        break;
      case BufKind::Temp:
        if (buf.escaped || buf.constant) {
          bound_[b] = buf.kept;
        } else if (buf.output) {
          fresh_.push_back(static_cast<int32_t>(b));
        } else if (plan.offset[b] >= 0) {
          Storage& arena = *arenas_[device_slot(buf.device)];
          auto s = std::make_shared<Storage>(static_cast<char*>(arena.data) + plan.offset[b],
                                             buf.nbytes, buf.device);
          s->owns_data = false;
          bound_[b] = std::move(s);
        } else {
          bound_[b] = std::make_shared<Storage>(nullptr, 0, buf.device);
        }
        break;
    }
  }
  state_written_.assign(nb, 0);
  for (const Node& n : p.nodes) {
    for (const Operand* o : {&n.out, &n.out2})
      if (o->buf >= 0 && p.buffers[o->buf].kind == BufKind::State) state_written_[o->buf] = 1;
    Step s{&n, impl_for(n.out), n.out2.buf >= 0 ? impl_for(n.out2) : nullptr, ins_.size()};
    for (const Operand& o : n.in) ins_.push_back(impl_for(o));
    steps_.push_back(s);
  }
  tile_at_.assign(p.nodes.size(), -1);
  tiles_.reserve(p.tiles.size());
  for (const TileRun& r : p.tiles) make_tiles(r);
  plan_capture();
}

// Note [Captured replays]
// On CUDA, launching each node's kernels costs the host more than a small kernel costs the GPU,
// so a batch-1 training step is bound by launches. From the second call of a signature on, the
// executor has the backend record runs of consecutive nodes (segments) into CUDA graphs and
// launches each as one call. A recording holds device addresses, so everything it touches must
// stay where it is:
//   - arguments are copied (on the device) into buffers the executor keeps, which the graph
//     reads; outputs are written into kept buffers and copied out into fresh tensors, so a
//     call's outputs are never overwritten by the next call;
//   - state, kept temps and the arena stay where they are by construction; each launch still
//     checks every address a segment touches against those at its recording, and records again
//     (three times at most) when one moved.
// Index ops, random draws and constants are recorded too, through arguments in device memory
// (Note [Device-side arguments]); row tiles (a CPU lowering) run between segments, and so do
// index ops and draws on a backend without device-side arguments. A program qualifies when all
// its buffers are on one CUDA device, each argument is its own storage, contiguous, never
// written, and read only within its own elements. TAPEGRAD_CUDA_GRAPHS=0 turns this off.
// Mode::Debug never launches segments.
//
// Note [Device-side arguments]
// A recording holds each call's arguments as they were when it was recorded. Three kinds of
// node need more, and get it from memory the executor keeps on the device:
//   - an index op checks its indices before it writes. Eagerly the host reads the verdict, which
//     waits for the device; in a segment the op checks on the device into a flag slot of its own
//     and writes nothing if an index is bad (index_flagged). The host reads all the flags at
//     once at a check point: before the first node after such an op that writes what the user
//     can see (state, a kept temp such as a parameter's .grad), and at the end of the call.
//     A bad index then throws the eager error, named as the node's (rethrow_at), before any
//     such write: the weights are as they were. Nodes between the op and the check point run
//     on what the skipped op left, which nobody sees. A training step is forward and backward,
//     the check, then the updates: one launch and one wait on CUDA, where the device makes the
//     check (Note [Guarded updates]), else two launches with the wait between them.
//   - a random draw takes fresh numbers at each call: its seed and Philox offset are taken from
//     the generator on the host, in node order as an eager replay takes them, and written into
//     its slot before the segment is launched (write_words: the values travel with the call);
//     the kernel reads them from there (random_from). The same numbers as node by node.
//   - a constant's bytes are copied once into device memory, and the node copies from there.
void Executor::plan_capture() {
  const Program& p = *program_;
  segment_at_.assign(p.nodes.size(), -1);
  if (p.buffers.empty() || p.nodes.empty()) return;
  // One device's program, or the CPU's; a device's may hold CPU buffers that only transfers
  // touch (a CPU batch moved in, a loss moved out), which run between segments.
  Device d = kCPU;
  for (const Buffer& b : p.buffers) {
    if (b.device.is_cpu()) continue;
    if (!d.is_cpu() && b.device != d) return;
    d = b.device;
  }
  for (const Node& n : p.nodes) {
    if (n.call == Call::Transfer) continue;
    for (const Operand* o : {&n.out, &n.out2})
      if (o->buf >= 0 && p.buffers[o->buf].device != d) return;
    for (const Operand& o : n.in)
      if (p.buffers[o.buf].device != d) return;
  }
  capture_device_ = d;
  if (!(d.is_cuda() ? cuda_graphs_enabled() : g_capture_on_cpu.load())) return;
  for (size_t i = 0; i < p.num_inputs; ++i)
    if (input_buffers_[i] < 0 || !p.input_views[i].contiguous()) return;
  auto input_ok = [&](const Operand& o) {
    if (o.buf < 0 || p.buffers[o.buf].kind != BufKind::Input) return true;
    return within(o.view, p.input_views[p.buffers[o.buf].input]);
  };
  std::vector<char> tiled(p.nodes.size(), 0);
  for (const TileRun& r : p.tiles)
    for (size_t i = r.first; i < r.end; ++i) tiled[i] = 1;
  for (const Node& n : p.nodes) {
    for (const Operand* o : {&n.out, &n.out2})
      if (o->buf >= 0 && p.buffers[o->buf].kind == BufKind::Input) return;  // writes an argument
    for (const Operand& o : n.in)
      if (!input_ok(o)) return;
  }
  for (const Operand& o : p.outputs)
    if (!input_ok(o)) return;
  const bool device_args = device_backend(d).has_device_arguments();
  auto recordable = [&](size_t i) {
    Call c = p.nodes[i].call;
    return !tiled[i] && c != Call::Transfer &&
           (device_args || (c != Call::Index && c != Call::Random));
  };
  // Check points (Note [Device-side arguments]); one that follows no index op of a segment
  // reads nothing.
  auto user_visible = [&](const Operand& o) {
    if (o.buf < 0) return false;
    const Buffer& b = p.buffers[o.buf];
    return b.kind == BufKind::State || (b.kind == BufKind::Temp && b.escaped);
  };
  check_before_.assign(p.nodes.size() + 1, 0);
  bool pending = false;
  for (size_t i = 0; i < p.nodes.size(); ++i) {
    const Node& n = p.nodes[i];
    if (pending && (user_visible(n.out) || user_visible(n.out2))) {
      check_before_[i] = 1;
      pending = false;
    }
    pending |= n.call == Call::Index && recordable(i);
  }
  check_before_.back() = 1;
  for (size_t i = 0; i < p.nodes.size();) {
    if (!recordable(i)) {
      ++i;
      continue;
    }
    size_t j = i + 1;
    while (j < p.nodes.size() && recordable(j) && !check_before_[j]) ++j;
    if (j - i >= 2) {  // one node is one launch either way
      segment_at_[i] = static_cast<int32_t>(segments_.size());
      Segment g;
      g.first = i;
      g.end = j;
      segments_.push_back(std::move(g));
    }
    i = j;
  }
  capture_ = !segments_.empty();
  if (!capture_) return;
  plan_device_arguments(d);
  // Note [Guarded updates]: the last two segments, where a check point alone parts them and
  // only transfers that write nothing the user keeps follow the second.
  const size_t ns = segments_.size();
  bool tail_ok = ns >= 2;
  for (size_t i = ns >= 2 ? segments_[ns - 1].end : 0; tail_ok && i < p.nodes.size(); ++i)
    tail_ok = p.nodes[i].call == Call::Transfer && !user_visible(p.nodes[i].out);
  if (tail_ok && segments_[ns - 2].end == segments_[ns - 1].first && segments_[ns - 2].flagged) {
    guarded_.first = static_cast<int32_t>(ns - 2);
    guarded_.then = static_cast<int32_t>(ns - 1);
  }
  static_inputs_.resize(p.num_inputs);
  static_outputs_.resize(fresh_.size());
  for (size_t k = 0; k < fresh_.size(); ++k) {
    const Buffer& b = p.buffers[fresh_[k]];
    static_outputs_[k] = allocate_storage(b.nbytes, b.device);
  }
}

namespace {
// A contiguous i64 view of n elements of `s` from element `first`.
TensorImpl words_view(const std::shared_ptr<Storage>& s, int64_t first, int64_t n) {
  TensorImpl t;
  t.storage = s;
  t.offset = first;
  t.sizes = {n};
  t.strides = {1};
  t.numel = n;
  t.dtype = kI64;
  return t;
}
}  // namespace

// The slots of Note [Device-side arguments] for the nodes in segments; constants' bytes copied.
void Executor::plan_device_arguments(Device d) {
  const Program& p = *program_;
  Backend& be = device_backend(d);
  flag_at_.assign(p.nodes.size(), -1);
  rng_at_.assign(p.nodes.size(), -1);
  const_src_.clear();
  const_src_.resize(p.nodes.size());
  int32_t nflags = 0, nrng = 0;
  for (Segment& g : segments_) {
    g.rng_first = nrng;
    for (size_t j = g.first; j < g.end; ++j) {
      const Node& n = p.nodes[j];
      if (n.call == Call::Index) {
        flag_at_[j] = nflags++;
        flagged_nodes_.push_back(j);
        g.flagged = true;
      } else if (n.call == Call::Random) {
        rng_at_[j] = nrng++;
        g.randoms.push_back(j);
      } else if (n.call == Call::Constant) {
        const TensorImpl& out = *steps_[j].out;
        TensorImpl& c = const_src_[j];
        c.sizes = out.sizes;
        c.strides = contiguous_strides(out.sizes);
        c.numel = out.numel;
        c.dtype = out.dtype;
        c.storage = allocate_storage(std::max<size_t>(n.bytes.size(), 1), d);
        if (out.numel > 0) be.copy_from_host(c, n.bytes.data());
      }
    }
  }
  if (nflags > 0) {
    // One pair more: the word a guarded launch's second part writes (Note [Guarded updates]).
    auto words = allocate_storage(static_cast<size_t>(nflags + 1) * 16, d);
    flags_ = words_view(words, 0, 2 * nflags);
    flags_and_ran_ = words_view(words, 0, 2 * nflags + 2);
    ran_ = words_view(words, 2 * nflags, 2);
    be.fill(flags_and_ran_, Scalar(0));
    for (int32_t k = 0; k < nflags; ++k)
      flag_slots_.push_back(words_view(flags_.storage, 2 * k, 2));
  }
  if (nrng > 0) {
    rngs_ = words_view(allocate_storage(static_cast<size_t>(nrng) * 16, d), 0, 2 * nrng);
    for (int32_t k = 0; k < nrng; ++k) rng_slots_.push_back(words_view(rngs_.storage, 2 * k, 2));
  }
}

// A node of a segment, run as its recording runs it (Note [Device-side arguments]).
void Executor::exec_in_segment(size_t i) {
  const Step& s = steps_[i];
  const Node& n = *s.node;
  Backend& be = device_backend(s.out->storage->device);
  if (flag_at_[i] >= 0) {
    flags_unread_ = true;
    be.index_flagged(n.op, *s.out, *ins_[s.in], n.dim, *ins_[s.in + 1],
                     flag_slots_[static_cast<size_t>(flag_at_[i])]);
  } else if (rng_at_[i] >= 0) {
    if (s.out->numel > 0)
      be.random_from(n.random, *s.out, rng_slots_[static_cast<size_t>(rng_at_[i])], n.a, n.b);
  } else if (const_src_[i].storage) {
    be.copy(*s.out, const_src_[i]);
  } else {
    exec(s);
  }
}

// Each draw's seed and offset, taken in node order as node by node they would be.
void Executor::write_random_slots(const Segment& g) {
  if (g.randoms.empty()) return;
  std::vector<int64_t> words;
  for (size_t j : g.randoms) {
    auto [seed, offset] = take_random_blocks(static_cast<uint64_t>((steps_[j].out->numel + 3) / 4));
    words.push_back(static_cast<int64_t>(seed));
    words.push_back(static_cast<int64_t>(offset));
  }
  TensorImpl v = words_view(rngs_.storage, 2 * g.rng_first, static_cast<int64_t>(words.size()));
  device_backend(v.storage->device).write_words(v, words);
}

// A check point: the flags of the index ops run since the last one, read in one wait; the first
// bad one (in node order) throws the error the op throws eagerly.
void Executor::read_flags() {
  if (!flags_unread_) return;
  flags_unread_ = false;
  Backend& be = device_backend(flags_.storage->device);
  std::vector<int64_t> host(static_cast<size_t>(flags_and_ran_.numel));
  be.copy_to_host(host.data(), flags_and_ran_);
  const bool guarded = guard_launched_;
  guard_launched_ = false;
  bool clear = true;
  for (size_t k = 0; k < flagged_nodes_.size(); ++k) clear = clear && host[2 * k] == 0;
  if (guarded && clear && host[2 * flagged_nodes_.size()] != 1) {
    // The second part of a guarded launch did not run with no flag set: the device's decision
    // failed. The segments run on their own from now on, and this call's second part runs now,
    // before anything reads what it writes (Note [Guarded updates]).
    guarded_.refused = true;
    guarded_.why = "its second part did not run, with no flag set";
    guarded_.work.reset();
    const Segment& b = segments_[static_cast<size_t>(guarded_.then)];
    for (size_t j = b.first; j < b.end; ++j) exec_in_segment(j);
    for (size_t j = b.end; j < steps_.size(); ++j) exec(steps_[j]);  // the transfers after it
    read_flags();
    return;
  }
  for (size_t k = 0; k < flagged_nodes_.size(); ++k) {
    if (host[2 * k] == 0) continue;
    be.fill(flags_, Scalar(0));
    const size_t i = flagged_nodes_[k];
    const Step& s = steps_[i];
    const Node& n = *s.node;
    const TensorImpl& target = n.op == OpKind::ScatterAdd ? *s.out : *ins_[s.in];
    try {
      throw_index_error(op_name(n.op), host[2 * k + 1], n.dim,
                        target.sizes.empty() ? 1 : target.sizes[n.dim]);
    } catch (const Error& e) {
      rethrow_at(e, i, i + 1);
    }
  }
}

std::string Executor::capture_summary() const {
  if (!capture_) return {};
  const Program& p = *program_;
  std::vector<std::string> runs;
  size_t nodes = 0;
  int recordings = 0, refused = 0;
  for (const Segment& g : segments_) {
    runs.push_back(fmt::format("{}-{}", g.first, g.end - 1));
    nodes += g.end - g.first;
    recordings += g.recordings;
    refused += g.refused;
  }
  bool cuda = capture_device_.is_cuda();
  // Note [Guarded updates]: while the pair is not refused, its check point is the device's.
  const bool guard = guarded_.first >= 0 && !guarded_.refused;
  const size_t guard_at = guard ? segments_[static_cast<size_t>(guarded_.then)].first : SIZE_MAX;
  recordings += guarded_.recordings;
  refused += guarded_.refused;
  // Where the flags of index ops checked on the device are read (Note [Device-side arguments]).
  std::vector<std::string> reads;
  bool pending = false;
  for (size_t i = 0; i <= p.nodes.size(); ++i) {
    if (check_before_[i] && pending) {
      reads.push_back(i == p.nodes.size() ? "at the end"
                      : i == guard_at
                          ? fmt::format("before node {} by the device (the nodes from there on "
                                        "run only where none is set), then by the host at the end",
                                        i)
                          : fmt::format("before node {}", i));
      pending = false;
    }
    pending |= i < p.nodes.size() && flag_at_[i] >= 0;
  }
  std::string flags = flagged_nodes_.empty()
                          ? ""
                          : fmt::format("; {} index ops checked on the device, their flags read {}",
                                        flagged_nodes_.size(), fmt::join(reads, ", "));
  // Why what was refused was (the backend's words), so that a device's log says.
  std::vector<std::string> whys;
  for (const Segment& g : segments_)
    if (g.refused)
      whys.push_back(fmt::format("nodes {}-{}: {}", g.first, g.end - 1,
                                 g.why.empty() ? "no reason given" : g.why));
  if (guarded_.refused)
    whys.push_back(fmt::format("the last two as one: {}",
                               guarded_.why.empty() ? "no reason given" : guarded_.why));
  std::string why = whys.empty() ? "" : fmt::format(" ({})", fmt::join(whys, "; "));
  return fmt::format(
      "replay: from the second call, {} of {} nodes run as {} {} (nodes {}){}{}{}; {} "
      "recording{} so far, {} segments refused{}\n",
      nodes, p.nodes.size(), segments_.size(),
      cuda ? "captured CUDA graphs" : "recorded segments (the CPU test stand-in)",
      fmt::join(runs, ", "), guard ? ", the last two launched as one" : "",
      nodes < p.nodes.size() ? "; the rest one by one" : "", flags, recordings,
      recordings == 1 ? "" : "s", refused, why);
}

std::vector<const void*> Executor::segment_key(const Segment& g) const {
  std::vector<const void*> key;
  for (size_t j = g.first; j < g.end; ++j) {
    const Step& s = steps_[j];
    key.push_back(s.out->data());
    if (s.out2 != nullptr) key.push_back(s.out2->data());
    for (size_t k = 0; k < s.node->in.size(); ++k) key.push_back(ins_[s.in + k]->data());
  }
  return key;
}

void Executor::run_segment(Segment& g) {
  if (!g.refused && runs_ >= 1) {  // the first run warms up: kernels compiled, handles made
    std::vector<const void*> key = segment_key(g);
    if (g.work && key != g.key) g.work.reset();  // something moved: record again
    if (!g.work) {
      if (g.recordings >= 3) {
        g.refused = true;
        g.why = "recorded 3 times, and what it touches moved again";
      } else {
        ++g.recordings;
        Device d = capture_device_;
        auto work = [this, &g] {
          for (size_t j = g.first; j < g.end; ++j) exec_in_segment(j);
        };
        if (d.is_cpu())
          g.work = std::make_unique<Deferred>(work);
        else
          g.work = device_backend(d).capture(work);
        if (g.work) {
          g.key = std::move(key);
        } else {  // the backend could not hold it: node by node from now on
          g.refused = true;
          g.why = d.is_cpu() ? "" : device_backend(d).capture_refusal();
        }
      }
    }
    if (g.work) {
      write_random_slots(g);
      g.work->launch();
      flags_unread_ |= g.flagged;
      return;
    }
  }
  write_random_slots(g);
  for (size_t j = g.first; j < g.end; ++j) exec_in_segment(j);
}

// Note [Guarded updates]
// A traced training step is forward and backward, a check point (the index ops' flags read,
// Note [Device-side arguments]), then the updates: two launches and, between them, a wait. Where
// the backend can decide on the device (capture_guarded: a CUDA graph with a conditional node),
// the two segments are recorded as one piece of work instead: the first, a kernel that sets the
// condition where no flag is set, and the second as the body of an if-node. One launch, and no
// wait before the updates: with a bad index they do not run, so the weights are as they were,
// and the host, reading the flags at the end of the call as before, throws the op's error. The
// pair is the program's last two segments, cut only by the check point, the second followed by
// nothing but transfers that write nothing the user keeps (a loss moved to the CPU): no host
// work that could see a skipped update runs before the end's read. Recorded, keyed and refused as a
// segment is; refused, the two run as segments of their own. The CPU's test stand-in decides on
// the host.
// A decision the device failed to make must not pass for one: the updates would silently not
// run. So the first part ends by writing 0 into a word after the flags, the second by writing 1,
// and the host reads that word with the flags (the same copy). Flags clear and no 1: the second
// part runs now, node by node, before the call returns, and the pair is refused from then on.
bool Executor::flags_clear_on_host() const {
  const auto* w = reinterpret_cast<const int64_t*>(flags_.data());
  for (int64_t k = 0; k < flags_.numel; k += 2)
    if (w[k] != 0) return false;
  return true;
}

bool Executor::run_guarded() {
  Guarded& q = guarded_;
  if (q.first < 0 || q.refused || runs_ < 1) return false;
  Segment& a = segments_[static_cast<size_t>(q.first)];
  Segment& b = segments_[static_cast<size_t>(q.then)];
  std::vector<const void*> key = segment_key(a), kb = segment_key(b);
  key.insert(key.end(), kb.begin(), kb.end());
  if (q.work && key != q.key) q.work.reset();  // something moved: record again
  if (!q.work) {
    if (q.recordings >= 3) {
      q.refused = true;
      q.why = "recorded 3 times, and what it touches moved again";
      return false;
    }
    ++q.recordings;
    Device d = capture_device_;
    // The second part marks that it ran, which the host checks with the flags at the end.
    auto first = [this, &a] {
      for (size_t j = a.first; j < a.end; ++j) exec_in_segment(j);
      device_backend(ran_.storage->device).write_words(ran_, {0, 0});
    };
    auto then = [this, &b] {
      for (size_t j = b.first; j < b.end; ++j) exec_in_segment(j);
      device_backend(ran_.storage->device).write_words(ran_, {1, 0});
    };
    if (d.is_cpu()) {
      q.work = std::make_unique<Deferred>([this, first, then] {
        first();
        if (flags_clear_on_host()) then();
      });
    } else {
      q.work = device_backend(d).capture_guarded(first, flags_, then);
    }
    if (!q.work) {
      q.refused = true;  // nothing ran: the segments run as they are
      q.why = device_backend(d).capture_refusal();
      return false;
    }
    q.key = std::move(key);
  }
  const uint64_t offset = random_offset();
  write_random_slots(a);
  write_random_slots(b);
  try {
    q.work->launch();
  } catch (const Error& e) {
    // Refused at the launch (a driver without conditional nodes, say): nothing was queued, and
    // the segments run on their own from now on, drawing the same numbers. A fault of the
    // device shows again there.
    set_random_offset(offset);
    const std::string what = e.what();
    q.why = "its launch: " + what.substr(0, what.find('\n'));
    q.refused = true;
    q.work.reset();
    return false;
  }
  flags_unread_ = true;
  guard_launched_ = true;
  return true;
}

void Executor::make_tiles(const TileRun& r) {
  const Program& p = *program_;
  Tiles t;
  t.run = &r;
  for (size_t i = r.first; i < r.end; ++i) {
    const Node& n = p.nodes[i];
    const Step& s = steps_[i];
    const auto& views = r.views[i - r.first];
    t.first.push_back(t.whole.size());
    for (size_t k = 0; k < views.size(); ++k) {
      int32_t b = k == 0 ? n.out.buf : n.in[k - 1].buf;
      t.whole.push_back(k == 0 ? s.out : ins_[s.in + k - 1]);
      t.views.push_back(&views[k]);
      auto it = std::find(r.local.begin(), r.local.end(), b);
      t.local.push_back(it == r.local.end()
                            ? -1
                            : r.local_offset[static_cast<size_t>(it - r.local.begin())] /
                                      esize(views[k].dtype) +
                                  views[k].offset);
    }
  }
  tile_at_[r.first] = static_cast<int32_t>(tiles_.size());
  tiles_.push_back(std::move(t));
}

// Runs a run's nodes tile by tile, tiles in parallel when there are threads for them.
void Executor::exec_tiles(Tiles& t) {
  const Program& p = *program_;
  const TileRun& r = *t.run;
  int64_t ntiles = (r.rows + r.tile - 1) / r.tile;
  int threads = static_cast<int>(std::min<int64_t>(get_num_threads(), ntiles));
  while (t.slots.size() < static_cast<size_t>(threads)) {
    TileSlot slot;
    slot.scratch = allocate_storage(std::max<size_t>(r.scratch_bytes, 1), kCPU);
    slot.impls.resize(t.whole.size());
    for (size_t k = 0; k < t.whole.size(); ++k) {
      TensorImpl& impl = slot.impls[k];
      impl.sizes = t.views[k]->sizes;
      impl.strides = t.views[k]->strides;
      impl.dtype = t.views[k]->dtype;
      slot.ins.push_back(&impl);
    }
    t.slots.push_back(std::move(slot));
  }
  for (int s = 0; s < threads; ++s) {
    TileSlot& slot = t.slots[static_cast<size_t>(s)];
    for (size_t k = 0; k < t.whole.size(); ++k)
      slot.impls[k].storage = t.local[k] >= 0 ? slot.scratch : t.whole[k]->storage;
  }
  auto one = [&](TileSlot& slot, int64_t tile) {
    int64_t r0 = tile * r.tile, rows = std::min(r.tile, r.rows - r0);
    for (size_t k = 0; k < t.whole.size(); ++k) {
      TensorImpl& impl = slot.impls[k];
      const View& v = *t.views[k];
      impl.sizes[0] = rows;
      impl.numel = rows * (v.sizes[0] == 0 ? 0 : v.numel() / v.sizes[0]);
      impl.offset = t.local[k] >= 0 ? t.local[k] : t.whole[k]->offset + r0 * v.strides[0];
    }
    for (size_t i = r.first; i < r.end; ++i) {
      size_t k = t.first[i - r.first];
      run_call(p.nodes[i], slot.impls[k], slot.ins.data() + k + 1, nullptr);
    }
  };
  if (threads <= 1) {
    for (int64_t tile = 0; tile < ntiles; ++tile) one(t.slots[0], tile);
  } else {
    // Chunk s runs a contiguous block of tiles in slot s's scratch.
    run_chunks(threads, threads, [&](int64_t s) {
      for (int64_t tile = ntiles * s / threads; tile < ntiles * (s + 1) / threads; ++tile)
        one(t.slots[static_cast<size_t>(s)], tile);
    });
  }
  for (TileSlot& slot : t.slots)
    for (TensorImpl& impl : slot.impls) impl.storage.reset();
}

Executor::~Executor() = default;

size_t Executor::arena_bytes() const {
  size_t n = 0;
  for (const auto& a : arenas_) n += a ? a->nbytes : 0;
  return n;
}

TensorImpl* Executor::impl_for(const Operand& o) {
  auto impl = std::make_unique<TensorImpl>();
  impl->storage = bound_[o.buf];
  impl->sizes = o.view.sizes;
  impl->strides = o.view.strides;
  impl->offset = o.view.offset;
  impl->numel = o.view.numel();
  impl->dtype = o.view.dtype;
  users_[o.buf].push_back(impl.get());
  recorded_offset_[o.buf].push_back(o.view.offset);
  impls_.push_back(std::move(impl));
  return impls_.back().get();
}

void Executor::bind(const std::vector<Tensor>& args) {
  const Program& p = *program_;
  for (size_t i = 0; i < args.size(); ++i) {
    int32_t b = input_buffers_[i];
    if (b < 0) continue;
    const TensorImpl& a = *args[i].impl();
    // Views of an argument are relative to its offset: a slice of a bigger tensor replays too.
    int64_t delta = a.offset - p.input_views[i].offset;
    std::shared_ptr<Storage> storage = a.storage;
    if (capture_) {
      arg_storage_.resize(p.num_inputs);
      arg_storage_[i] = a.storage;
    }
    if (capture_ && a.device() == capture_device_) {
      // The argument's elements, copied where a recording can read them (Note [Captured
      // replays]); it is contiguous, so they start the copy. A CPU argument of a device's
      // program is read by transfers only, which read it where it is.
      auto nbytes = static_cast<size_t>(a.numel * esize(a.dtype));
      if (!static_inputs_[i]) static_inputs_[i] = allocate_storage(nbytes, a.device());
      TensorImpl copy;
      copy.storage = static_inputs_[i];
      copy.sizes = a.sizes;
      copy.strides = a.strides;
      copy.numel = a.numel;
      copy.dtype = a.dtype;
      if (a.numel > 0) device_backend(a.device()).copy(copy, a);
      storage = static_inputs_[i];
      delta = -p.input_views[i].offset;
    }
    bound_[b] = storage;
    for (size_t j = 0; j < users_[b].size(); ++j) {
      users_[b][j]->storage = storage;
      users_[b][j]->offset = recorded_offset_[b][j] + delta;
    }
  }
  for (int32_t b : state_) {
    const Buffer& buf = p.buffers[b];
    std::shared_ptr<Storage> s = buf.state.lock();
    if (!s) {
      throw Error(fmt::format("trace: a tensor the traced function reads as state (first read by "
                              "{} at {}:{}) has been freed or replaced since the function was "
                              "traced; keep it alive and update it in place (copy_, fill_, "
                              "module.load) between calls",
                              buf.first_op.empty() ? "an op" : buf.first_op,
                              buf.first_loc.file_name(), buf.first_loc.line()),
                  "trace", buf.first_loc);
    }
    for (TensorImpl* u : users_[b]) u->storage = s;
    bound_[b] = std::move(s);
  }
  for (size_t k = 0; k < fresh_.size(); ++k) {
    int32_t b = fresh_[k];
    const Buffer& buf = p.buffers[b];
    // Captured: the kept buffer the recording writes; outputs() copies it out.
    std::shared_ptr<Storage> s =
        capture_ ? static_outputs_[k] : allocate_storage(buf.nbytes, buf.device);
    for (TensorImpl* u : users_[b]) u->storage = s;
    bound_[b] = std::move(s);
  }
}

void run_call(const Node& n, const TensorImpl& out, const TensorImpl* const* in,
              const TensorImpl* out2) {
  Backend& be = device_backend(out.storage->device);
  switch (n.call) {
    case Call::Copy:
      be.copy(out, *in[0]);
      break;
    case Call::Transfer:  // on the device's backend, whichever side it is
      device_backend(out.storage->device.is_cpu() ? in[0]->storage->device : out.storage->device)
          .transfer(out, *in[0]);
      break;
    case Call::Constant:
      be.copy_from_host(out, n.bytes.data());
      break;
    case Call::Fill:
      be.fill(out, n.value);
      break;
    case Call::Iota:
      be.iota(out, n.start, n.step);
      break;
    case Call::Random: {
      auto [seed, offset] = take_random_blocks(static_cast<uint64_t>((out.numel + 3) / 4));
      if (out.numel > 0) be.random(n.random, out, seed, offset, n.a, n.b);
      break;
    }
    case Call::Unary:
      be.unary(n.op, out, *in[0], n.attrs);
      break;
    case Call::Binary:
      be.binary(n.op, out, *in[0], *in[1]);
      break;
    case Call::Where:
      be.where(out, *in[0], *in[1], *in[2]);
      break;
    case Call::Reduce:
      be.reduce(n.op, out, *in[0], n.nreduced);
      break;
    case Call::Matmul:
      if (n.matmul_update())
        be.matmul_update(out, *in[0], *in[1], n.alpha, n.beta, n.in.size() > 2 ? in[2] : nullptr);
      else
        be.matmul(out, *in[0], *in[1]);
      break;
    case Call::Index:
      be.index(n.op, out, *in[0], n.dim, *in[1]);
      break;
    case Call::Window:
      be.window(n.op, out, *in[0], n.window, out2);
      break;
    case Call::Fused:
      if (n.nreduced > 0)
        be.fused_sum(n.steps, out, in, n.in.size(), n.nreduced);
      else
        be.fused(n.steps, out, in, n.in.size());
      break;
  }
}

View contiguous_view(const Shape& sizes, DType dtype) {
  return {sizes, contiguous_strides(sizes), 0, dtype};
}

void Executor::exec(const Step& s) { run_call(*s.node, *s.out, ins_.data() + s.in, s.out2); }

std::vector<Tensor> Executor::outputs() {
  const Program& p = *program_;
  std::vector<Tensor> out;
  out.reserve(p.outputs.size());
  std::map<int32_t, std::shared_ptr<Storage>> copied;  // captured: per output buffer
  for (size_t i = 0; i < p.outputs.size(); ++i) {
    const Operand& o = p.outputs[i];
    auto impl = std::make_shared<TensorImpl>();
    impl->storage = bound_[o.buf];
    if (capture_) {
      // An argument's view is the argument's (it is never written); a fresh output is copied
      // out of the buffer the next call overwrites.
      const Buffer& b = p.buffers[o.buf];
      if (b.kind == BufKind::Input) {
        impl->storage = arg_storage_[b.input];
      } else if (std::find(fresh_.begin(), fresh_.end(), o.buf) != fresh_.end()) {
        auto& c = copied[o.buf];
        if (!c) c = clone_bytes(bound_[o.buf], b.nbytes);
        impl->storage = c;
      }
    }
    impl->sizes = o.view.sizes;
    impl->strides = o.view.strides;
    impl->offset = o.view.offset + output_delta_[i];
    impl->numel = o.view.numel();
    impl->dtype = o.view.dtype;
    impl->is_view =
        !(o.view.offset == 0 && o.view.contiguous() &&
          static_cast<size_t>(impl->numel * esize(o.view.dtype)) == p.buffers[o.buf].nbytes);
    out.emplace_back(std::move(impl));
  }
  return out;
}

// After a call the executor holds no input, state or output: a state tensor freed by the user is
// then seen as freed at the next call (never read stale), and memory is not kept alive.
void Executor::unbind() {
  auto drop = [&](int32_t b) {
    if (b < 0) return;
    bound_[b].reset();
    for (TensorImpl* u : users_[b]) u->storage.reset();
  };
  for (int32_t b : input_buffers_) drop(b);
  for (int32_t b : state_) drop(b);
  for (int32_t b : fresh_) drop(b);
  arg_storage_.clear();
}

// An error a node raises while it replays (an index out of bounds, a device's failure) names the
// public op and the user's line that recorded the node, as the eager op's error would: the
// replay runs no op of the user's, so the message would otherwise say only the primitive.
// Nodes run as one (a segment, a run of tiles) are named as the range.
void Executor::rethrow_at(const Error& e, size_t first, size_t end) const {
  const Program& p = *program_;
  const Node& n = p.nodes[first];
  std::string where =
      end - first > 1 ? fmt::format("nodes {}-{} of the traced graph, run as one", first, end - 1)
                      : fmt::format("node {} of the traced graph", first);
  std::string message = e.what();
  // Note [Traced targets] (lib/nn/losses.cpp): cross_entropy and nll_loss, traced, leave their
  // targets' check to their index ops, each over a dim of `classes`, with a negative target moved
  // below -classes; their error is eager's, naming the target as given.
  const auto* index_error = dynamic_cast<const IndexError*>(&e);
  if (index_error != nullptr && (n.user_op == "cross_entropy" || n.user_op == "nll_loss")) {
    const int64_t bad = index_error->bad(), classes = index_error->size();
    message = fmt::format("{}: target {} is out of range for {} classes", n.user_op,
                          bad < 0 ? bad + classes : bad, classes);
  }
  if (n.user_op.empty())
    message += fmt::format("\n  in {}", where);
  else
    message += fmt::format("\n  in tg::{} called at {}:{} ({})", n.user_op, n.file, n.line, where);
  throw Error(message, n.user_op.empty() ? e.op() : n.user_op, e.where());
}

std::vector<Tensor> Executor::run(const std::vector<Tensor>& args) {
  struct Unbind {
    Executor* e;
    ~Unbind() { e->unbind(); }
  } unbind{this};
  prepare(args);
  if (flags_unread_) {  // the last call stopped before it read them: they may be set
    device_backend(flags_.storage->device).fill(flags_, Scalar(0));
    flags_unread_ = false;
    guard_launched_ = false;
  }
  for (size_t i = 0; i < steps_.size();) {
    size_t end = i + 1;
    if (capture_ && check_before_[i]) read_flags();
    try {
      if (capture_ && guarded_.first >= 0 && segment_at_[i] == guarded_.first && run_guarded()) {
        end = segments_[static_cast<size_t>(guarded_.then)].end;
      } else if (capture_ && segment_at_[i] >= 0) {
        Segment& g = segments_[static_cast<size_t>(segment_at_[i])];
        end = g.end;
        run_segment(g);
      } else if (tile_at_[i] >= 0) {
        Tiles& t = tiles_[static_cast<size_t>(tile_at_[i])];
        end = t.run->end;
        exec_tiles(t);
      } else {
        exec(steps_[i]);
      }
    } catch (const Error& e) {
      rethrow_at(e, i, end);
    }
    i = end;
  }
  if (capture_) read_flags();
  ++runs_;
  return outputs();
}

std::vector<Tensor> Executor::run_checked(const std::vector<Tensor>& args,
                                          const std::function<void(size_t, const Tensor&)>& visit) {
  struct Unbind {
    Executor* e;
    ~Unbind() { e->unbind(); }
  } unbind{this};
  prepare(args);
  const Program& p = *program_;
  std::vector<char> local(p.buffers.size(), 0);
  for (const TileRun& r : p.tiles)
    for (int32_t b : r.local) local[b] = 1;
  for (size_t i = 0, done = 0; i < steps_.size(); ++i) {
    // A run of tiles runs whole before its nodes' stored values are seen; local values never are.
    try {
      if (i >= done && tile_at_[i] >= 0) {
        Tiles& t = tiles_[static_cast<size_t>(tile_at_[i])];
        done = t.run->end;
        exec_tiles(t);
      } else if (i >= done) {
        exec(steps_[i]);
      }
    } catch (const Error& e) {
      rethrow_at(e, i, tile_at_[i] >= 0 ? done : i + 1);
    }
    if (local[p.nodes[i].out.buf]) continue;
    const TensorImpl& o = *steps_[i].out;
    auto impl = std::make_shared<TensorImpl>();
    impl->storage = o.storage;
    impl->sizes = o.sizes;
    impl->strides = o.strides;
    impl->offset = o.offset;
    impl->numel = o.numel;
    impl->dtype = o.dtype;
    impl->is_view = true;
    visit(i, Tensor(std::move(impl)));
  }
  return outputs();
}

void Executor::prepare(const std::vector<Tensor>& args) {
  for (const auto& hook : program_->replay_hooks) hook();
  bind(args);
  const Program& p = *program_;
  // The state the program writes is written in place, as the eager in-place ops that recorded
  // it were: its version moves on as theirs did, so a value autograd saved from it before the
  // call is refused at backward instead of read changed (Note [Saved tensors]).
  for (int32_t b : state_)
    if (state_written_[static_cast<size_t>(b)]) bound_[b]->version.fetch_add(1);
  output_delta_.assign(p.outputs.size(), 0);
  for (size_t i = 0; i < p.outputs.size(); ++i) {
    const Buffer& b = p.buffers[p.outputs[i].buf];
    if (b.kind == BufKind::Input)
      output_delta_[i] = args[b.input].impl()->offset - p.input_views[b.input].offset;
  }
}

}  // namespace tg::trace_detail
