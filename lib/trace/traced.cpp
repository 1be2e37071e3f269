// tg::trace: the cache of compiled signatures, recording a new one, replaying a known one.
#include <mutex>
#include <unordered_map>

#include "core/check.h"
#include "trace/executor.h"
#include "trace/passes.h"
#include "trace/recorder.h"
#include "trace/serialize.h"

namespace tg {
namespace trace_detail {

namespace {

// Shapes, strides, dtypes and devices of the arguments, and which of them share storage.
std::string signature_of(const std::vector<Tensor>& args) {
  std::string key;
  for (size_t i = 0; i < args.size(); ++i) {
    const Tensor& t = args[i];
    if (!t.defined())
      throw Error(fmt::format("trace: argument {} is an undefined tensor", i), "trace", Loc{});
    const TensorImpl& a = *t.impl();
    key += fmt::format("{}{}{}{};", static_cast<int>(a.dtype), a.device().str(), a.sizes,
                       a.strides);
    for (size_t j = 0; j < i; ++j) {
      const TensorImpl& b = *args[j].impl();
      if (b.storage == a.storage) {
        key += fmt::format("={}@{};", j, a.offset - b.offset);
        break;
      }
    }
  }
  return key;
}

// No writes to inputs, state or kept temps, no random draws, no host hooks: running the graph
// once more changes nothing the user can see.
bool pure(const Program& p) {
  if (!p.replay_hooks.empty()) return false;
  for (const Node& n : p.nodes) {
    if (n.call == Call::Random) return false;
    for (int32_t b : {n.out.buf, n.out2.buf}) {
      if (b < 0) continue;
      const Buffer& buf = p.buffers[b];
      if (buf.kind != BufKind::Temp || buf.escaped) return false;
    }
  }
  return true;
}

// A handle to t's data with no autograd history.
Tensor plain(const Tensor& t) { return t.detach(); }

}  // namespace

struct Compiled {
  std::shared_ptr<const Program> program;  // what runs: optimized, then fused
  std::shared_ptr<const Program> saved;    // what f.save() writes: optimized, not fused
  std::string memory;  // the memory plan's line of the summary
  std::unique_ptr<Executor> executor;
  // Mode::Debug: the graph as recorded, run beside the optimized one.
  std::shared_ptr<const Program> reference;
  std::unique_ptr<Executor> reference_executor;
};

class Cache {
 public:
  Cache(RecordFn fn, TraceOptions options) : fn_(std::move(fn)), options_(std::move(options)) {
    for (const auto& name : options_.disable) {
      bool known = false;
      for (std::string_view k : kPassNames) known |= name == k;
      TG_CHECK(known, "trace: no pass is called \"{}\"; the passes are {}", name,
               fmt::join(kPassNames, ", "));
    }
  }

  // A graph read from a file: one signature, no function to record.
  Cache(LoadedProgram loaded, std::string path) : path_(std::move(path)) {
    owned_ = std::move(loaded.owned);
    auto c = std::make_unique<Compiled>();
    c->saved = loaded.program;
    Program lowered = *loaded.program;
    lower(lowered, {});
    c->program = std::make_shared<const Program>(std::move(lowered));
    MemoryPlan plan = plan_memory(*c->program, true);
    c->executor = std::make_unique<Executor>(c->program, plan);
    latest_ = c.get();
    loaded_ = std::move(c);
  }

  std::vector<Tensor> call(const std::vector<Tensor>& args) {
    if (loaded_) return call_loaded(args);
    // Inside another trace, the outer recorder records what this function does.
    if (is_tracing()) return fn_(args);
    std::string key = signature_of(args);
    std::lock_guard<std::mutex> lock(mu_);
    auto it = compiled_.find(key);
    if (it != compiled_.end()) {
      latest_ = it->second.get();
      if (latest_->reference)
        return run_debug(*latest_->reference, *latest_->reference_executor, *latest_->program,
                         *latest_->executor, args);
      return latest_->executor->run(args);
    }
    std::vector<Tensor> outputs;
    Program program = record(args, outputs);
    std::shared_ptr<const Program> reference;
    if (options_.mode == Mode::Debug) reference = std::make_shared<const Program>(program);
    optimize(program, options_);
    auto c = std::make_unique<Compiled>();
    c->saved = std::make_shared<const Program>(program);
    lower(program, options_);
    if (reference) {
      // Mode::Debug compares every value, so tiles keep theirs whole (the run order stays).
      for (TileRun& r : program.tiles) {
        r.local.clear();
        r.local_offset.clear();
        r.scratch_bytes = 0;
      }
    }
    auto shared = std::make_shared<const Program>(std::move(program));
    c->program = shared;
    MemoryPlan plan = plan_memory(*shared, pass_enabled(options_, "memory"));
    size_t arena = 0;
    for (size_t b : plan.arena_bytes) arena += b;
    c->memory = fmt::format(
        "memory: temps in an arena of {} bytes ({} without sharing, {} alive at most), {} nodes "
        "run in place\n",
        arena, plan.naive_bytes, plan.live_peak, plan.in_place);
    c->executor = std::make_unique<Executor>(shared, plan);
    if (reference) {
      c->reference = reference;
      c->reference_executor = std::make_unique<Executor>(reference, plan_memory(*reference, false));
    }
    // A function without effects gives the optimized graph's results from its first call on, so
    // every call agrees (a stability rewrite makes no exception for the first).
    if (pure(*shared)) {
      outputs = c->reference ? run_debug(*c->reference, *c->reference_executor, *c->program,
                                         *c->executor, args)
                             : c->executor->run(args);
    }
    latest_ = c.get();
    compiled_.emplace(std::move(key), std::move(c));
    ++compiles_;
    return outputs;
  }

  int64_t num_compiles() const { return compiles_; }
  const Compiled& latest() const {
    if (latest_ == nullptr)
      throw Error("trace: the function has not been called yet, so there is no graph", "trace",
                  Loc{});
    return *latest_;
  }

 private:
  std::vector<Tensor> call_loaded(const std::vector<Tensor>& given) {
    const Program& p = *loaded_->program;
    TG_CHECK(given.size() == p.num_inputs,
             "load_traced: the graph of '{}' takes {} tensors, and was given {}", path_,
             p.num_inputs, given.size());
    std::vector<Tensor> args = given;
    for (size_t i = 0; i < args.size(); ++i) {
      const View& v = p.input_views[i];
      TG_CHECK(args[i].defined(), "load_traced: argument {} is an undefined tensor", i);
      TG_CHECK(args[i].device().is_cpu() && args[i].dtype() == v.dtype && args[i].shape() == v.sizes,
               "load_traced: the graph of '{}' takes argument {} as {}{} on the CPU, and was "
               "given {}{} on {}", path_, i, dtype_name(v.dtype), v.sizes,
               dtype_name(args[i].dtype()), args[i].shape(), args[i].device().str());
      if (!args[i].is_contiguous()) args[i] = args[i].contiguous();
      args[i] = plain(args[i]);
    }
    std::lock_guard<std::mutex> lock(mu_);
    return loaded_->executor->run(args);
  }

  Program record(const std::vector<Tensor>& args, std::vector<Tensor>& outputs) {
    Recorder rec(args);
    {
      std::vector<Tensor> results;
      t_trace_hook = &rec;
      try {
        results = fn_(args);
      } catch (...) {
        t_trace_hook = nullptr;
        throw;
      }
      t_trace_hook = nullptr;
      for (const Tensor& t : results) {
        if (!t.defined())
          throw Error("trace: the traced function returned an undefined tensor", "trace", Loc{});
        outputs.push_back(plain(t));
      }
    }  // the results' autograd graphs go here, before finish() looks for escaped temps
    return rec.finish(outputs);
  }

  RecordFn fn_;
  TraceOptions options_;
  std::unique_ptr<Compiled> loaded_;
  std::vector<std::shared_ptr<Storage>> owned_;  // a loaded graph's state
  std::string path_;
  std::mutex mu_;
  std::unordered_map<std::string, std::unique_ptr<Compiled>> compiled_;
  const Compiled* latest_ = nullptr;
  int64_t compiles_ = 0;
};

bool pass_enabled(const TraceOptions& options, std::string_view name) {
  if (options.mode == Mode::FastCompile) return false;
  for (const auto& d : options.disable)
    if (d == name) return false;
  return true;
}

void optimize(Program& p, const TraceOptions& options) {
  auto enabled = [&](std::string_view name) { return pass_enabled(options, name); };
  std::string summary;
  size_t before = p.nodes.size();
  summary += fmt::format("recorded: {} nodes, {} buffers\n", before, p.buffers.size());
  if (enabled("dce")) summary += eliminate_dead_code(p) + "\n";
  if (enabled("cse")) summary += eliminate_common_subexpressions(p) + "\n";
  if (enabled("stability")) summary += rewrite_for_stability(p) + "\n";
  if (enabled("algebra")) summary += simplify_algebra(p) + "\n";
  if (enabled("dce")) summary += eliminate_dead_code(p) + "\n";
  if (enabled("fold")) summary += fold_constants(p) + "\n";
  if (enabled("cse")) summary += eliminate_common_subexpressions(p) + "\n";
  if (enabled("dce")) summary += eliminate_dead_code(p) + "\n";
  if (g_test_corrupt_pass) g_test_corrupt_pass(p);
  p.summary = std::move(summary);
}

// Transfers of what the function was given (an argument, a CPU tensor it holds) run first, in
// their order: a step that moves its batches in as it needs them then replays as one run of
// device work after them, not cut where each batch arrives (Note [Captured replays]). A transfer
// moves only where nothing before it writes its input or touches its output; the values are the
// same, and no random draw moves.
void hoist_transfers(Program& p) {
  const size_t nb = p.buffers.size();
  std::vector<size_t> first_write(nb, SIZE_MAX), first_touch(nb, SIZE_MAX);
  for (size_t i = 0; i < p.nodes.size(); ++i) {
    const Node& n = p.nodes[i];
    for (const Operand* o : {&n.out, &n.out2}) {
      if (o->buf < 0) continue;
      first_write[o->buf] = std::min(first_write[o->buf], i);
      first_touch[o->buf] = std::min(first_touch[o->buf], i);
    }
    for (const Operand& o : n.in) first_touch[o.buf] = std::min(first_touch[o.buf], i);
  }
  std::vector<Node> first, rest;
  for (size_t i = 0; i < p.nodes.size(); ++i) {
    Node& n = p.nodes[i];
    const bool early = n.call == Call::Transfer && n.out2.buf < 0 && first_touch[n.out.buf] == i &&
                       first_write[n.in[0].buf] >= i;
    (early ? first : rest).push_back(std::move(n));
  }
  first.insert(first.end(), std::make_move_iterator(rest.begin()),
               std::make_move_iterator(rest.end()));
  p.nodes = std::move(first);
}

void lower(Program& p, const TraceOptions& options) {
  hoist_transfers(p);
  if (pass_enabled(options, "matmul_update")) p.summary += fold_matmul_updates(p) + "\n";
  if (pass_enabled(options, "fuse")) p.summary += fuse_elementwise(p) + "\n";
  if (pass_enabled(options, "tile")) p.summary += tile_rows(p) + "\n";
}

}  // namespace trace_detail

TracedFunction::TracedFunction(trace_detail::RecordFn fn, TraceOptions options)
    : cache_(std::make_shared<trace_detail::Cache>(std::move(fn), std::move(options))) {}

std::vector<Tensor> TracedFunction::call(const std::vector<Tensor>& args) const {
  return cache_->call(args);
}

TracedFunction::TracedFunction(std::shared_ptr<trace_detail::Cache> cache)
    : cache_(std::move(cache)) {}

void TracedFunction::save(const std::string& path, Loc loc) const {
  trace_detail::save_program(*cache_->latest().saved, path, loc);
}

TracedFunction load_traced(const std::string& path, Loc loc) {
  return TracedFunction(std::make_shared<trace_detail::Cache>(trace_detail::load_program(path, loc), path));
}

int64_t TracedFunction::num_compiles() const { return cache_->num_compiles(); }

Graph TracedFunction::graph() const { return Graph(cache_->latest().program); }

std::string TracedFunction::pass_summary() const {
  const auto& c = cache_->latest();
  // Mode::Debug replays node by node, never through captured segments.
  return c.program->summary + c.memory + (c.reference ? "" : c.executor->capture_summary());
}

}  // namespace tg
