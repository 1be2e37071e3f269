// Elementwise fusion: chains of elementwise nodes become one fused node that the backend runs as
// one pass over memory (Note [Elementwise fusion]).
#include <algorithm>

#include "trace/passes.h"
#include "trace/rewrite.h"

namespace tg::trace_detail {

// Note [Elementwise fusion]
// An elementwise node (unary, binary, where, copy) computes element m of its output from element
// m of each operand, every operand viewed at the output's shape. So when a value is written whole
// by one such node and read only by other such nodes, each through exactly the view it was
// written with, it need not exist in memory: each reader can compute its element m on the spot.
// Such a value is *inlined* into its readers. A node that is not inlined is the *root* of a group:
// its fused node computes, block by block, the DAG of inlined values under it (each once), reading
// the group's inputs (the operands that are not inlined values) and writing only the root's
// output. The backend runs it (Backend::fused; on the CPU in cache-sized blocks, Note [Blocked
// fused kernel]).
//
// A value with several readers is inlined into each of them, computed again in every group,
// only when it is cheap (no transcendental step, a few steps in all); else it is stored once.
// Moving a computation later is only right when its inputs still hold the same data there: an
// inlined value is kept in memory instead when a node between it and its root writes one of its
// inputs, or when the root writes a buffer the value reads through another view. Groups are capped
// at kMaxSteps steps and kMaxInputs inputs. Fusion changes no value: each step runs the same
// kernel as the unfused node (up to the last bit where the unfused node took a strided scalar
// path), which Mode::Debug checks.
//
// Note [Fused sums]
// A sum over trailing dims is a reader too: when the value it sums is inlined into it, its group
// becomes one fused node whose value is summed row by row as it is computed (Backend::fused_sum),
// so LayerNorm's Σ(x - mean)² and softmax's Σ exp(x - max) never exist in memory. Row-local like
// the sum, so such a node joins row tiles (Note [Row tiles]). The backend sums each row the way
// reduce() sums a stored one: the same bits (on CUDA, Note [Generated fused sums] in
// lib/backend/cuda/fused_source.cpp).
//
// Fusion is a lowering step: it runs last, after the memory plan's input is otherwise final, and
// f.save() writes the graph before it, so that the file stays free of backend-specific groups
// (the loader fuses again for the device it runs on).

namespace {

constexpr int kMaxSteps = 48;
constexpr int kMaxInputs = 24;
constexpr int kDuplicateCost = 6;  // cost units a value may have and still be computed twice
constexpr int kExpensive = 1000;

bool elementwise(const Node& n) {
  return (n.call == Call::Unary || n.call == Call::Binary || n.call == Call::Where ||
          n.call == Call::Copy) &&
         n.out2.buf < 0;
}

// A sum over trailing dims, which may take the value it reads into its group (Note [Fused sums]).
bool sum_root(const Node& n) {
  return n.call == Call::Reduce && n.op == OpKind::Sum && n.nreduced >= 1 && n.out2.buf < 0 &&
         n.in.size() == 1;
}

// A node that may be the root of a group.
bool root_kind(const Node& n) { return elementwise(n) || sum_root(n); }

// What computing one element costs, roughly: transcendental steps are never duplicated.
int own_cost(const Node& n) {
  if (n.call != Call::Unary) return 1;
  switch (n.op) {
    case OpKind::Neg:
    case OpKind::Abs:
    case OpKind::Relu:
    case OpKind::Sign:
    case OpKind::Clamp:
    case OpKind::LogicalNot:
      return 1;
    case OpKind::PowScalar:
      return n.attrs.a == 2 ? 1 : kExpensive;
    default:
      return kExpensive;
  }
}

FusedStep step_of(const Node& n) {
  FusedStep s;
  s.dtype = n.out.view.dtype;
  switch (n.call) {
    case Call::Unary:
      s.kind = FusedStep::Kind::Unary;
      s.op = n.op;
      s.attrs = n.attrs;
      break;
    case Call::Binary:
      s.kind = FusedStep::Kind::Binary;
      s.op = n.op;
      break;
    case Call::Where:
      s.kind = FusedStep::Kind::Where;
      break;
    default:
      s.kind = FusedStep::Kind::Convert;
      break;
  }
  return s;
}

class Fuser {
 public:
  explicit Fuser(Program& p) : p_(p), rw_(p), inl_(p.nodes.size(), 0) {
    readers_.resize(p.buffers.size());
    for (size_t i = 0; i < p.nodes.size(); ++i)
      for (const Operand& o : p.nodes[i].in) readers_[o.buf].push_back(static_cast<int64_t>(i));
  }

  std::string run() {
    decide();
    while (remove_hazards()) {
    }
    return emit();
  }

 private:
  // The inlined node that produces what operand `o` reads, or -1.
  int64_t inlined(const Operand& o) const {
    int64_t j = rw_.producer(o);
    return j >= 0 && inl_[j] ? j : -1;
  }

  // Which values to inline, in program order (a value's producers are decided before it).
  void decide() {
    size_t n = p_.nodes.size();
    std::vector<int> cost(n, 0), steps(n, 0), inputs(n, 0);
    for (size_t i = 0; i < n; ++i) {
      const Node& node = p_.nodes[i];
      if (!elementwise(node)) continue;
      cost[i] = own_cost(node);
      steps[i] = 1;
      for (const Operand& o : node.in) {
        int64_t j = inlined(o);
        if (j >= 0 && (steps[i] + steps[j] > kMaxSteps || inputs[i] + inputs[j] > kMaxInputs))
          inl_[j] = 0;  // the group is full: keep j in memory
        j = inlined(o);
        if (j < 0) {
          ++inputs[i];
          continue;
        }
        cost[i] = std::min(kExpensive, cost[i] + cost[j]);
        steps[i] += steps[j];
        inputs[i] += inputs[j];
      }
      auto self = static_cast<int64_t>(i);
      if (rw_.value_writer(node.out.buf) != self) continue;
      const auto& readers = readers_[node.out.buf];
      if (readers.empty()) continue;
      bool ok = true;
      for (int64_t r : readers) {
        const Node& reader = p_.nodes[r];
        ok &= r > self && root_kind(reader);
        for (const Operand& o : reader.in) ok &= o.buf != node.out.buf || o.view == node.out.view;
      }
      std::vector<int64_t> distinct = readers;
      distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
      if (ok && (distinct.size() == 1 || cost[i] <= kDuplicateCost)) inl_[i] = 1;
    }
  }

  // The inlined nodes under root r, each once, producers first (iterative: chains may be long).
  std::vector<int64_t> group(int64_t r) const {
    std::vector<int64_t> order;
    std::vector<std::pair<int64_t, size_t>> stack{{r, 0}};
    std::vector<int64_t> seen;
    while (!stack.empty()) {
      auto& [j, k] = stack.back();
      const Node& node = p_.nodes[j];
      if (k < node.in.size()) {
        int64_t q = inlined(node.in[k++]);
        if (q >= 0 && std::find(seen.begin(), seen.end(), q) == seen.end()) {
          seen.push_back(q);
          stack.push_back({q, 0});
        }
        continue;
      }
      order.push_back(j);
      stack.pop_back();
    }
    return order;  // ends with r
  }

  // Un-inlines values whose inputs change before their root runs; true if it changed any.
  bool remove_hazards() {
    bool changed = false;
    for (size_t i = 0; i < p_.nodes.size(); ++i) {
      const Node& root = p_.nodes[i];
      if (inl_[i] || !root_kind(root)) continue;
      auto r = static_cast<int64_t>(i);
      std::vector<int64_t> members = group(r);
      if (members.size() < 2) continue;
      for (int64_t j : members) {
        for (const Operand& o : p_.nodes[j].in) {
          if (inlined(o) >= 0) continue;
          bool aliased = o.buf == root.out.buf && !(o.view == root.out.view);
          if (j == r && aliased) {
            // The root reads its own output through another view: run it unfused, as recorded.
            for (const Operand& q : root.in)
              if (int64_t k = inlined(q); k >= 0) inl_[k] = 0;
            return true;
          }
          if (j != r && (aliased || !rw_.unchanged(o.buf, j, r))) {
            inl_[j] = 0;
            changed = true;
          }
        }
      }
    }
    return changed;
  }

  std::string emit() {
    std::vector<Node> out;
    out.reserve(p_.nodes.size());
    int64_t groups = 0, fused_nodes = 0, removed = 0, sums = 0;
    size_t bytes = 0;
    std::vector<char> counted(p_.buffers.size(), 0);
    for (size_t i = 0; i < p_.nodes.size(); ++i) {
      const Node& root = p_.nodes[i];
      if (inl_[i]) {
        ++removed;
        if (!counted[root.out.buf]) bytes += p_.buffers[root.out.buf].nbytes;
        counted[root.out.buf] = 1;
        continue;
      }
      std::vector<int64_t> members;
      if (root_kind(root)) members = group(static_cast<int64_t>(i));
      if (members.size() < 2) {
        out.push_back(root);
        continue;
      }
      Node f;
      f.call = Call::Fused;
      f.op = root.op;
      if (sum_root(root)) {
        members.pop_back();  // the sum is the node, its value the last step
        f.nreduced = root.nreduced;
        ++sums;
      }
      f.out = root.out;
      f.user_op = root.user_op;
      f.file = root.file;
      f.line = root.line;
      std::vector<std::pair<int64_t, int32_t>> reg;  // node -> step
      auto operand = [&](const Operand& o) -> int32_t {
        if (int64_t j = inlined(o); j >= 0) {
          for (auto& [node, s] : reg)
            if (node == j) return s;
          TG_INTERNAL_ASSERT(false && "fusion: a producer after its reader");
        }
        for (size_t k = 0; k < f.in.size(); ++k)
          if (f.in[k] == o) return -static_cast<int32_t>(k) - 1;
        f.in.push_back(o);
        return -static_cast<int32_t>(f.in.size());
      };
      for (int64_t j : members) {
        const Node& m = p_.nodes[j];
        FusedStep s = step_of(m);
        if (!m.in.empty()) s.a = operand(m.in[0]);
        if (m.in.size() > 1) s.b = operand(m.in[1]);
        if (m.in.size() > 2) s.c = operand(m.in[2]);
        reg.push_back({j, static_cast<int32_t>(f.steps.size())});
        f.steps.push_back(s);
      }
      fused_nodes += static_cast<int64_t>(members.size()) + (f.nreduced > 0);
      ++groups;
      out.push_back(std::move(f));
    }
    p_.nodes = std::move(out);
    return fmt::format(
        "fuse: {} groups of {} elementwise nodes{}, {} values never stored ({} bytes)", groups,
        fused_nodes, sums ? fmt::format(" ({} of them sums)", sums) : std::string(), removed,
        bytes);
  }

  Program& p_;
  Rewriter rw_;
  std::vector<char> inl_;
  std::vector<std::vector<int64_t>> readers_;  // per buffer: nodes reading it, in order
};

}  // namespace

std::string fuse_elementwise(Program& p) { return Fuser(p).run(); }

}  // namespace tg::trace_detail
