// A compiled graph as text and as Graphviz DOT, and counting its nodes.
#include <sstream>

#include "core/check.h"
#include "trace/program.h"

namespace tg {
namespace trace_detail {

std::string Node::name() const {
  switch (call) {
    case Call::Copy:
      return "copy";
    case Call::Constant:
      return "constant";
    case Call::Fill:
      return "fill";
    case Call::Iota:
      return "iota";
    case Call::Random:
      return random == RandomKind::Uniform  ? "rand"
             : random == RandomKind::Normal ? "randn"
                                            : "randint";
    case Call::Fused:
      return "fused";
    default:
      return std::string(op_name(op));
  }
}

namespace {

std::string buffer_name(const Program& p, int32_t b) {
  const Buffer& buf = p.buffers[b];
  switch (buf.kind) {
    case BufKind::Input:
      return fmt::format("in{}", buf.input);
    case BufKind::State:
      return fmt::format("state{}", b);
    case BufKind::Temp:
      return buf.constant ? fmt::format("const{}", b) : fmt::format("%{}", b);
  }
  return "?";
}

std::string type_of(const View& v) { return fmt::format("{}{}", dtype_name(v.dtype), v.sizes); }

// A read: the buffer, and the view's shape where it is not the whole buffer.
std::string read_of(const Program& p, const Operand& o) {
  std::string s = buffer_name(p, o.buf);
  const View& v = o.view;
  bool whole = v.offset == 0 && v.contiguous() &&
               static_cast<size_t>(v.numel() * esize(v.dtype)) == p.buffers[o.buf].nbytes;
  if (!whole) s += fmt::format("[{} strides {} +{}]", type_of(v), v.strides, v.offset);
  return s;
}

std::string step_name(const FusedStep& s) {
  switch (s.kind) {
    case FusedStep::Kind::Convert:
      return "copy";
    case FusedStep::Kind::Where:
      return "where";
    default:
      return std::string(op_name(s.op));
  }
}

}  // namespace

std::string Node::label() const {
  if (call != Call::Fused) return name();
  std::vector<std::string> names;
  for (const FusedStep& s : steps) names.push_back(step_name(s));
  if (nreduced > 0) names.emplace_back(op_name(op));  // a fused sum (Note [Fused sums])
  return fmt::format("fused[{}]", fmt::join(names, ", "));
}

namespace {

std::string attrs_of(const Node& n) {
  switch (n.call) {
    case Call::Fill:
      return fmt::format(" value={}", n.value.to_double());
    case Call::Iota:
      return fmt::format(" start={} step={}", n.start, n.step);
    case Call::Random:
      return fmt::format(" a={} b={}", n.a, n.b);
    case Call::Reduce:
      return fmt::format(" reduced={}", n.nreduced);
    case Call::Index:
      return fmt::format(" dim={}", n.dim);
    case Call::Matmul:
      if (!n.matmul_update()) return "";
      return fmt::format(" alpha={}{} beta={}", n.alpha, n.in.size() > 2 ? "*in2" : "", n.beta);
    case Call::Unary:
      if (n.op == OpKind::PowScalar) return fmt::format(" exponent={}", n.attrs.a);
      if (n.op == OpKind::Clamp) return fmt::format(" min={} max={}", n.attrs.a, n.attrs.b);
      return "";
    case Call::Fused: {
      std::vector<std::string> steps;
      auto reg = [](int32_t r) {
        return r < 0 ? fmt::format("i{}", -r - 1) : fmt::format("s{}", r);
      };
      for (size_t k = 0; k < n.steps.size(); ++k) {
        const FusedStep& s = n.steps[k];
        std::string args = reg(s.a);
        if (s.kind == FusedStep::Kind::Binary || s.kind == FusedStep::Kind::Where)
          args += ", " + reg(s.b);
        if (s.kind == FusedStep::Kind::Where) args += ", " + reg(s.c);
        steps.push_back(fmt::format("s{}={}({})", k, step_name(s), args));
      }
      if (n.nreduced > 0)
        return fmt::format(" {{{}}} then {} reduced={}", fmt::join(steps, "; "), op_name(n.op),
                           n.nreduced);
      return fmt::format(" {{{}}}", fmt::join(steps, "; "));
    }
    default:
      return "";
  }
}

}  // namespace
}  // namespace trace_detail

using trace_detail::Program;

Graph::Graph(std::shared_ptr<const Program> program) : program_(std::move(program)) {}

int64_t Graph::num_nodes() const { return static_cast<int64_t>(program_->nodes.size()); }

int64_t Graph::count(std::string_view op) const {
  int64_t n = 0;
  // Steps inside fused nodes count as the ops they are: fusion changes how a graph runs, not
  // what it computes.
  for (const auto& node : program_->nodes) {
    n += node.name() == op;
    for (const auto& s : node.steps) n += trace_detail::step_name(s) == op;
    n += node.call == trace_detail::Call::Fused && node.nreduced > 0 && op_name(node.op) == op;
  }
  return n;
}

std::string Graph::to_string() const {
  const Program& p = *program_;
  std::ostringstream os;
  os << fmt::format("graph: {} inputs, {} nodes, {} outputs\n", p.num_inputs, p.nodes.size(),
                    p.outputs.size());
  size_t run = 0;
  for (size_t i = 0; i < p.nodes.size(); ++i) {
    const auto& n = p.nodes[i];
    if (run < p.tiles.size() && p.tiles[run].first == i) {
      const auto& r = p.tiles[run++];
      std::vector<std::string> local;
      for (int32_t b : r.local) local.push_back(trace_detail::buffer_name(p, b));
      os << fmt::format("      -- nodes {}-{} run in tiles of {} of their {} rows{}{}\n", r.first,
                        r.end - 1, r.tile, r.rows,
                        local.empty() ? "" : "; never whole: ", fmt::join(local, " "));
    }
    std::vector<std::string> ins;
    for (const auto& o : n.in) ins.push_back(trace_detail::read_of(p, o));
    std::string out = trace_detail::buffer_name(p, n.out.buf);
    os << fmt::format("{:>4}  {} = {}({}){} : {}", i, out, n.name(), fmt::join(ins, ", "),
                      trace_detail::attrs_of(n), trace_detail::type_of(n.out.view));
    if (p.buffers[n.out.buf].kind == trace_detail::BufKind::State) os << "  [update]";
    if (!n.user_op.empty()) os << fmt::format("  # {} at {}:{}", n.user_op, n.file, n.line);
    os << "\n";
  }
  std::vector<std::string> outs;
  for (const auto& o : p.outputs) outs.push_back(trace_detail::read_of(p, o));
  os << fmt::format("return {}\n", fmt::join(outs, ", "));
  return os.str();
}

std::string Graph::to_dot() const {
  const Program& p = *program_;
  std::ostringstream os;
  os << "digraph traced {\n  rankdir=TB;\n  node [fontname=\"monospace\", fontsize=10];\n";
  std::vector<int64_t> last_writer(p.buffers.size(), -1);
  for (size_t b = 0; b < p.buffers.size(); ++b) {
    if (p.buffers[b].kind == trace_detail::BufKind::Temp) continue;
    os << fmt::format("  b{} [shape=box, style=rounded, label=\"{}\"];\n", b,
                      trace_detail::buffer_name(p, static_cast<int32_t>(b)));
  }
  for (size_t i = 0; i < p.nodes.size(); ++i) {
    const auto& n = p.nodes[i];
    os << fmt::format("  n{} [shape=box, label=\"{}\\n{}\"];\n", i, n.name(),
                      trace_detail::type_of(n.out.view));
    for (const auto& o : n.in) {
      if (last_writer[o.buf] >= 0) {
        os << fmt::format("  n{} -> n{};\n", last_writer[o.buf], i);
      } else {
        os << fmt::format("  b{} -> n{};\n", o.buf, i);
      }
    }
    last_writer[n.out.buf] = static_cast<int64_t>(i);
    if (p.buffers[n.out.buf].kind != trace_detail::BufKind::Temp)
      os << fmt::format("  n{} -> b{} [style=dashed];\n", i, n.out.buf);
  }
  for (size_t k = 0; k < p.tiles.size(); ++k) {
    const auto& r = p.tiles[k];
    os << fmt::format(
        "  subgraph cluster_tiles{} {{\n    label=\"tiles of {} rows\"; style=dashed;\n", k,
        r.tile);
    for (size_t i = r.first; i < r.end; ++i) os << fmt::format("    n{};\n", i);
    os << "  }\n";
  }
  for (size_t k = 0; k < p.outputs.size(); ++k) {
    const auto& o = p.outputs[k];
    os << fmt::format("  out{} [shape=ellipse, label=\"output {}\"];\n", k, k);
    if (last_writer[o.buf] >= 0) {
      os << fmt::format("  n{} -> out{};\n", last_writer[o.buf], k);
    } else {
      os << fmt::format("  b{} -> out{};\n", o.buf, k);
    }
  }
  os << "}\n";
  return os.str();
}

}  // namespace tg
