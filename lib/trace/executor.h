// Replaying a compiled program: buffers bound once per signature, a flat list of backend calls.
#pragma once

#include "trace/program.h"

namespace tg::trace_detail {

// Where each planned temp lives in its device's arena (Note [Memory plan]).
struct MemoryPlan {
  std::vector<int64_t> offset;  // per buffer; -1: not in the arena
  std::vector<size_t> arena_bytes;  // per device slot (0: CPU, 1 + i: cuda:i)
  size_t naive_bytes = 0;           // what the planned temps would take without sharing
  size_t live_peak = 0;             // the most bytes of temps alive at once (a lower bound)
  int64_t in_place = 0;             // nodes that write over an input they were its last reader of
};
MemoryPlan plan_memory(const Program& p, bool share);

class Executor {
 public:
  Executor(std::shared_ptr<const Program> program, const MemoryPlan& plan);
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  std::vector<Tensor> run(const std::vector<Tensor>& args);
  // Which nodes replay as recorded work (Note [Captured replays]): a line for the summary, or
  // empty when none do.
  std::string capture_summary() const;
  // Calls `visit(node index, output tensor)` after each node (Mode::Debug).
  std::vector<Tensor> run_checked(const std::vector<Tensor>& args,
                                  const std::function<void(size_t, const Tensor&)>& visit);
  size_t arena_bytes() const;

 private:
  struct Step {
    const Node* node;
    TensorImpl* out;
    TensorImpl* out2;
    size_t in;  // the first of the node's inputs in ins_
  };
  // A run of row tiles (Note [Row tiles]): per thread, its operands' tile views.
  struct TileSlot {
    std::shared_ptr<Storage> scratch;
    std::vector<TensorImpl> impls;        // per operand: each node's out, then its inputs
    std::vector<const TensorImpl*> ins;   // the same, as run_call takes them
  };
  struct Tiles {
    const TileRun* run;
    std::vector<size_t> first;            // per node: its out's operand index
    std::vector<const TensorImpl*> whole; // per operand: the untiled view (storage, offset)
    std::vector<int64_t> local;           // per operand: elements into the scratch, -1: stored
    std::vector<const View*> views;       // per operand: the view with the rows merged
    std::vector<TileSlot> slots;
  };
  TensorImpl* impl_for(const Operand& o);
  void make_tiles(const TileRun& r);
  void exec_tiles(Tiles& t);
  void bind(const std::vector<Tensor>& args);
  void prepare(const std::vector<Tensor>& args);
  void unbind();
  void exec(const Step& s);
  std::vector<Tensor> outputs();
  // Note [Captured replays]
  struct Segment {
    size_t first = 0, end = 0;               // nodes [first, end)
    std::unique_ptr<CapturedWork> work;      // recorded at the second run
    std::vector<const void*> key;            // the data every node touched when recorded
    int recordings = 0;
    bool refused = false;                    // run node by node from now on
    std::string why;                         // why it was refused (the backend's words)
    bool flagged = false;                    // holds index ops checked on the device
    std::vector<size_t> randoms;             // its random draws, in order (slots from rng_first)
    int32_t rng_first = 0;
  };
  // Note [Guarded updates]: the last two segments, cut by a check point, as one launch.
  struct Guarded {
    int32_t first = -1, then = -1;  // segments; -1: none planned
    std::unique_ptr<CapturedWork> work;
    std::vector<const void*> key;
    int recordings = 0;
    bool refused = false;  // the segments run each on its own from now on
    std::string why;
  };
  [[noreturn]] void rethrow_at(const Error& e, size_t first, size_t end) const;
  void plan_capture();
  void plan_device_arguments(Device d);
  std::vector<const void*> segment_key(const Segment& g) const;
  void run_segment(Segment& g);
  bool run_guarded();
  bool flags_clear_on_host() const;
  void exec_in_segment(size_t i);
  void write_random_slots(const Segment& g);
  void read_flags();

  std::shared_ptr<const Program> program_;
  std::vector<std::shared_ptr<Storage>> arenas_;
  std::vector<std::shared_ptr<Storage>> bound_;                 // per buffer
  std::vector<std::vector<TensorImpl*>> users_;                 // per buffer
  std::vector<std::unique_ptr<TensorImpl>> impls_;
  std::vector<Step> steps_;
  std::vector<Tiles> tiles_;
  std::vector<int32_t> tile_at_;  // per node: the run of tiles starting there, or -1
  std::vector<const TensorImpl*> ins_;  // every step's inputs, one run per step
  std::vector<std::vector<int64_t>> recorded_offset_;  // per buffer, per user
  std::vector<int64_t> output_delta_;
  std::vector<int32_t> input_buffers_;  // buffer of argument i (-1: aliases an earlier one)
  std::vector<int32_t> fresh_;          // output temps: allocated at every call
  std::vector<int32_t> state_;          // state buffers
  std::vector<char> state_written_;     // per buffer: state some node writes
  // Captured replays: segments, the segment starting at each node (-1: none), the arguments'
  // copies the graph reads, the outputs' buffers it writes, and the arguments themselves.
  bool capture_ = false;
  Device capture_device_;  // the device whose work is recorded
  int64_t runs_ = 0;
  std::vector<Segment> segments_;
  Guarded guarded_;
  std::vector<int32_t> segment_at_;
  std::vector<std::shared_ptr<Storage>> static_inputs_;   // per argument
  std::vector<std::shared_ptr<Storage>> static_outputs_;  // per fresh_ entry
  std::vector<std::shared_ptr<Storage>> arg_storage_;     // per argument, during a call
  // Note [Device-side arguments]: per node, its flag slot (an index op in a segment), its random
  // slot (a draw in a segment), its constant's bytes on the device (a constant in a segment);
  // the slots (two i64 each); the nodes of the flag slots; the check points (per node, whether
  // the flags are read before it runs); whether flags were set since they were last read.
  std::vector<int32_t> flag_at_, rng_at_;
  std::vector<TensorImpl> const_src_;
  TensorImpl flags_, rngs_;
  std::vector<TensorImpl> flag_slots_, rng_slots_;
  std::vector<size_t> flagged_nodes_;
  std::vector<char> check_before_;
  bool flags_unread_ = false;
  // Note [Guarded updates]: the flags with the word after them, that word (1 where the second
  // part of a guarded launch ran), and whether this call launched the pair.
  TensorImpl flags_and_ran_, ran_;
  bool guard_launched_ = false;
};

// Tests: executors of CPU programs plan and use captured segments as CUDA ones do, through a
// stand-in that runs the work at each launch and checks that it touches the data it touched
// when recorded (tests/test_trace_capture.cpp).
void set_capture_on_cpu_for_tests(bool on);

// Mode::Debug: runs `reference` (the graph as recorded), then `optimized` node by node, and
// throws at the first value that differs (debug.cpp, Note [Debug replay]).
std::vector<Tensor> run_debug(const Program& reference, Executor& reference_exec,
                              const Program& optimized, Executor& exec,
                              const std::vector<Tensor>& args);

}  // namespace tg::trace_detail
