// Tracing: run a function once while recording, turn what ran into a graph, optimize it, replay.
//
//   auto step = tg::trace([&](const Tensor& x, const Tensor& y) {
//     auto loss = nn::functional::cross_entropy(model(x), y);
//     opt.zero_grad();
//     loss.backward();
//     opt.step();                      // in-place writes to state: replayed as updates
//     return loss;
//   });
//   for (auto [x, y] : loader) step(x, y);   // the first call per input signature records
//
// A call with a new input signature (shapes, strides, dtypes, devices of the arguments) runs the
// function once, eagerly, recording every kernel it runs; later calls with that signature replay
// the optimized graph without running the function's C++ at all. Tensors the function reads but
// was not given (parameters, optimizer state, a step counter) are state: read by reference at
// every replay, never frozen as constants. Writes into state (an optimizer step, `k += 1`) are
// replayed in program order. Random numbers are drawn afresh at each replay.
//
// What the graph cannot keep, it refuses while recording: reading a value on the host (item(),
// to_vector(), data_ptr(), printing) throws tg::Error naming the line, since the branch it decides
// would be frozen. Code that must run once (making state) goes in a NoTraceGuard scope. Replayed
// outputs are new tensors without autograd history; put backward() inside the function.
#pragma once

#include <cstdint>
#include <functional>
#include <utility>
#include <memory>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <vector>

#include "tapegrad/tensor.h"

namespace tg {

enum class Mode {
  FastRun,      // every pass
  FastCompile,  // no rewrites: replays exactly the kernels the function ran (bitwise equal)
  Debug,        // every pass, and each replay also runs the unoptimized graph and compares them
                // node by node: the first value that differs beyond rounding throws tg::Error
                // naming the node, the op and the user's line (slow: for finding a bad rewrite)
};

struct TraceOptions {
  Mode mode = Mode::FastRun;
  std::vector<std::string> disable = {};  // passes switched off, by name ("cse", "dce", ...)
};

// Is this thread recording a trace now (outside any NoTraceGuard)?
bool is_tracing();

// Ops in this scope run eagerly and are not recorded: what they make is state for the graph.
// Libraries use it to create state lazily inside a traced function (optimizer moments).
class NoTraceGuard {
 public:
  NoTraceGuard();
  ~NoTraceGuard();
  NoTraceGuard(const NoTraceGuard&) = delete;
  NoTraceGuard& operator=(const NoTraceGuard&) = delete;

 private:
  void* saved_;
};

// While recording, registers fn to run on the host before every replay of the graph being
// recorded: host-side work each call needs, such as refreshing a state tensor from a host value
// (optimizers refresh their learning rate this way). Outside a trace it does nothing.
void on_replay(std::function<void()> fn);

namespace trace_detail {
struct Program;
class Cache;
using RecordFn = std::function<std::vector<Tensor>(const std::vector<Tensor>&)>;
}  // namespace trace_detail

// A compiled graph: the latest signature's, after the passes.
class Graph {
 public:
  explicit Graph(std::shared_ptr<const trace_detail::Program> program);
  int64_t num_nodes() const;
  // Nodes of one op, by name ("add", "matmul", ...), steps inside fused nodes included;
  // count("fused") gives the fused groups.
  int64_t count(std::string_view op) const;
  std::string to_string() const;             // one line per node: id, op, shapes, inputs, line
  std::string to_dot() const;                // Graphviz

 private:
  std::shared_ptr<const trace_detail::Program> program_;
};

// What tg::trace returns, without the function's types: a cache of graphs per input signature.
// tg::load_traced returns one too, holding the one graph it read.
class TracedFunction {
 public:
  TracedFunction(trace_detail::RecordFn fn, TraceOptions options);
  // Replays (recording first on a new signature); outputs in the order the function returned.
  std::vector<Tensor> call(const std::vector<Tensor>& args) const;
  template <class... A>
    requires(std::is_convertible_v<const A&, const Tensor&> && ...)
  std::vector<Tensor> operator()(const A&... args) const {
    return call(std::vector<Tensor>{Tensor(args)...});
  }
  int64_t num_compiles() const;      // signatures recorded in this process (0 for a loaded one)
  Graph graph() const;               // of the latest signature; throws before the first call
  std::string pass_summary() const;  // what each pass changed, for the latest signature

  // Writes the latest signature's optimized graph, with the current values of its state, to one
  // file (a safetensors file: the state are its tensors, the graph its metadata; the format is
  // described in lib/trace/file_format.cpp). Arguments must have been contiguous and separate
  // tensors when traced. Host hooks (tg::on_replay) are not saved: a learning rate keeps the
  // value it had.
  void save(const std::string& path, Loc loc = Loc::current()) const;

 private:
  friend TracedFunction load_traced(const std::string& path, Loc loc);
  explicit TracedFunction(std::shared_ptr<trace_detail::Cache> cache);
  std::shared_ptr<trace_detail::Cache> cache_;
};

// Reads a graph written by TracedFunction::save: a callable that needs none of the model's code.
// It takes tensors of the saved arguments' shapes and dtypes (on the CPU; non-contiguous ones are
// copied) and returns the outputs as a vector; it owns the saved state, and a graph that updates
// state (a training step) updates its own copy. Every malformed file gets a tg::Error.
TracedFunction load_traced(const std::string& path, Loc loc = Loc::current());

namespace trace_detail {
template <class T> struct Outputs;
template <> struct Outputs<Tensor> {
  static std::vector<Tensor> flatten(Tensor t) { return {std::move(t)}; }
  static Tensor unflatten(std::vector<Tensor> v) { return std::move(v.at(0)); }
};
template <> struct Outputs<std::vector<Tensor>> {
  static std::vector<Tensor> flatten(std::vector<Tensor> v) { return v; }
  static std::vector<Tensor> unflatten(std::vector<Tensor> v) { return v; }
};
template <> struct Outputs<void> {
  static std::vector<Tensor> unflatten(const std::vector<Tensor>&) { return {}; }
};
template <class... T> struct Outputs<std::tuple<T...>> {
  static std::vector<Tensor> flatten(std::tuple<T...> t) {
    return std::apply([](auto&... x) { return std::vector<Tensor>{Tensor(x)...}; }, t);
  }
  static std::tuple<T...> unflatten(std::vector<Tensor> v) {
    return [&]<size_t... I>(std::index_sequence<I...>) {
      return std::tuple<T...>{std::move(v.at(I))...};
    }(std::index_sequence_for<T...>{});
  }
};
template <class A, class B> struct Outputs<std::pair<A, B>> {
  static std::vector<Tensor> flatten(std::pair<A, B> t) { return {t.first, t.second}; }
  static std::pair<A, B> unflatten(std::vector<Tensor> v) { return {v.at(0), v.at(1)}; }
};
}  // namespace trace_detail

// The callable tg::trace returns: call it as the function itself.
template <class Fn>
class Traced : public TracedFunction {
 public:
  Traced(Fn fn, TraceOptions options)
      : TracedFunction(
            [fn = std::move(fn)](const std::vector<Tensor>& args) mutable {
              return invoke(fn, args);
            },
            std::move(options)) {}

  template <class... A>
    requires(std::is_convertible_v<const A&, const Tensor&> && ...)
  auto operator()(const A&... args) const {
    using R = std::decay_t<std::invoke_result_t<Fn&, const A&...>>;
    return trace_detail::Outputs<R>::unflatten(call(std::vector<Tensor>{Tensor(args)...}));
  }

 private:
  // Calls fn with as many tensors as it takes (the signature is fixed by the first call's arity).
  static std::vector<Tensor> invoke(Fn& fn, const std::vector<Tensor>& args) {
    return dispatch(fn, args, std::make_index_sequence<8>{});
  }
  template <size_t... N>
  static std::vector<Tensor> dispatch(Fn& fn, const std::vector<Tensor>& args,
                                      std::index_sequence<N...>) {
    std::vector<Tensor> out;
    bool done = ((args.size() == N && (out = call_n<N>(fn, args), true)) || ...);
    if (!done) throw Error("trace: a traced function takes at most 7 tensors", "trace", Loc{});
    return out;
  }
  template <size_t N>
  static std::vector<Tensor> call_n(Fn& fn, const std::vector<Tensor>& args) {
    return [&]<size_t... I>(std::index_sequence<I...>) -> std::vector<Tensor> {
      if constexpr (std::is_invocable_v<Fn&, decltype((void)I, std::declval<const Tensor&>())...>) {
        using R = std::decay_t<
            std::invoke_result_t<Fn&, decltype((void)I, std::declval<const Tensor&>())...>>;
        if constexpr (std::is_void_v<R>) {
          fn(args[I]...);
          return {};
        } else {
          return trace_detail::Outputs<R>::flatten(fn(args[I]...));
        }
      } else {
        throw Error("trace: the traced function does not take " + std::to_string(N) + " tensors",
                    "trace", Loc{});
      }
    }(std::make_index_sequence<N>{});
  }
};

// Theano's scan: runs `step` over the leading dimension of the sequences,
//   carry_t = step(carry_{t-1}, x_t)      (x_t = sequence[t]; carry_{-1} = init)
// and returns every carry stacked: shape (T, init's shape). Differentiable through every step;
// eagerly it loops, and inside tg::trace the loop is recorded unrolled (one graph per length T).
// The step must return a tensor of init's shape and dtype.
Tensor scan(const std::function<Tensor(const Tensor& carry, const Tensor& x)>& step,
            const Tensor& init, const Tensor& sequence, Loc loc = Loc::current());
// Several sequences of one length: step(carry, {a_t, b_t, ...}).
Tensor scan(const std::function<Tensor(const Tensor& carry, const std::vector<Tensor>& xs)>& step,
            const Tensor& init, const std::vector<Tensor>& sequences, Loc loc = Loc::current());
// No sequence: n_steps applications of step(carry).
Tensor scan(const std::function<Tensor(const Tensor& carry)>& step, const Tensor& init,
            int64_t n_steps, Loc loc = Loc::current());

// Traces fn (see the top of this file).
template <class Fn>
Traced<std::decay_t<Fn>> trace(Fn&& fn, TraceOptions options = {}) {
  return Traced<std::decay_t<Fn>>(std::forward<Fn>(fn), std::move(options));
}

}  // namespace tg
