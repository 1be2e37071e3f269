// The traced graph: buffers, and the backend calls that read and write them, in program order.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/tensor_impl.h"
#include "tapegrad/trace.h"

namespace tg::trace_detail {

// Note [Traced graph]
// The recorder sees the function at the level of backend calls: every op, view-making, cast,
// composite and bprop ends in them, so one hook captures forward, backward and optimizer steps
// alike. A node is one call; its operands are views (sizes, strides, offset, dtype) of buffers,
// where a buffer stands for one storage. A buffer is
//   - an input: the storage of argument i, bound at each call (views are relative to the
//     argument's own offset, so slices of a bigger tensor replay without recompiling);
//   - state: a storage that existed before recording (parameters, optimizer state, a counter),
//     held weakly and read afresh at each replay; writes into it are the graph's updates;
//   - a temp: made while recording. Temps the function let escape (a parameter's .grad, state
//     made under NoTraceGuard never lands here) are kept by the graph; the others are planned
//     into one arena (Note [Memory plan]), except outputs, which are allocated at each call.
// Most temps are written once, whole: such a buffer is an SSA value, and the value passes
// (cse, fold, algebra, stability, fusion) work on those only. Partial writes (cat, scatter) and
// writes into state stay as they are.
enum class BufKind : uint8_t { Input, State, Temp };

struct Buffer {
  BufKind kind = BufKind::Temp;
  int input = -1;  // Input: the argument's index
  size_t nbytes = 0;
  Device device;
  bool escaped = false;  // Temp kept alive by the program after the function returned
  bool output = false;   // Temp holding an output (allocated at each call)
  bool constant = false; // Temp computed once at compile time (Note [Constant folding])
  std::shared_ptr<Storage> kept;  // escaped temps, constants
  std::weak_ptr<Storage> state;   // State
  // Where the function first touched it, for errors.
  std::string first_op;
  Loc first_loc;

  bool persistent() const { return kind != BufKind::Temp || escaped || output || constant; }
};

struct View {
  Shape sizes;
  Shape strides;
  int64_t offset = 0;  // elements
  DType dtype = kF32;

  int64_t numel() const;
  bool contiguous() const;
  bool operator==(const View&) const = default;
};

struct Operand {
  int32_t buf = -1;
  View view;
  bool operator==(const Operand&) const = default;
};

// Transfer: a copy between the CPU and a device (`x.to(cuda())` of a CPU tensor inside the
// function, or back), both contiguous, one dtype; a file writes it as a copy (its loader puts
// every buffer on one device).
enum class Call : uint8_t {
  Copy,
  Constant,
  Fill,
  Iota,
  Random,
  Unary,
  Binary,
  Where,
  Reduce,
  Matmul,
  Index,
  Window,
  Fused,
  Transfer
};

// One step of a fused group (backend.h; Note [Elementwise fusion] in pass_fuse.cpp).
using tg::FusedStep;

struct Node {
  Call call = Call::Copy;
  OpKind op = OpKind::Clone;
  Operand out;
  std::vector<Operand> in;
  Operand out2;  // max_pool2d's indices (buf -1: none)
  OpAttrs attrs;
  Scalar value;                     // Fill
  double start = 0, step = 0;       // Iota
  RandomKind random = RandomKind::Uniform;
  double a = 0, b = 0;              // Random's bounds
  int nreduced = 0;                 // Reduce
  // Matmul: out = alpha·s·(in0·in1) + beta·out, s = in2 (one element) when present, else 1
  // (Note [Matmul updates]); as recorded alpha 1, beta 0, no in2.
  double alpha = 1, beta = 0;
  int dim = 0;                      // Index
  Window2d window;                  // Window
  std::vector<char> bytes;          // Constant: the contiguous value
  std::vector<FusedStep> steps;     // Fused: the group's steps; `in` are its inputs
  // The public op the user called and the line that called it.
  std::string user_op;
  std::string file;
  uint32_t line = 0;

  bool reads_out() const {
    return (call == Call::Index && op == OpKind::ScatterAdd) || (call == Call::Matmul && beta != 0);
  }
  bool matmul_update() const {
    return call == Call::Matmul && (alpha != 1 || beta != 0 || in.size() > 2);
  }
  std::string name() const;   // "add", "matmul", "fill", "fused"...
  std::string label() const;  // name(), and a fused node's steps: "fused[mul, tanh, add]"
};

// A run of consecutive row-local nodes executed tile by tile (Note [Row tiles], pass_tile.cpp).
struct TileRun {
  size_t first = 0, end = 0;  // nodes [first, end)
  int64_t rows = 0;           // the leading dims the nodes share, flattened
  int64_t tile = 0;           // rows per tile
  // Per node: the out view, then the input views, with the leading dims merged into one.
  std::vector<std::vector<View>> views;
  std::vector<int32_t> local;         // values that only ever exist one tile at a time
  std::vector<int64_t> local_offset;  // bytes into a tile's scratch, per local value
  size_t scratch_bytes = 0;
};

// A whole traced signature.
struct Program {
  std::vector<Buffer> buffers;
  std::vector<Node> nodes;
  std::vector<Operand> outputs;
  size_t num_inputs = 0;
  std::vector<View> input_views;   // as recorded (views of inputs are relative to these offsets)
  std::string summary;             // what the passes changed
  std::vector<std::function<void()>> replay_hooks;  // tg::on_replay (not saved)
  std::vector<TileRun> tiles;      // lowering only (not saved), in node order

  bool full_write(const Node& n) const;  // writes its whole out buffer (and reads none of it)
};

// Runs one node's backend call on the device's own backend, with its operands ready.
void run_call(const Node& n, const TensorImpl& out, const TensorImpl* const* in,
              const TensorImpl* out2);

// A contiguous view of `sizes` at offset 0.
View contiguous_view(const Shape& sizes, DType dtype);

// The element size of a dtype, as a signed number for offset arithmetic.
inline int64_t esize(DType d) { return static_cast<int64_t>(element_size(d)); }

}  // namespace tg::trace_detail
