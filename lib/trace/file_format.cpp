// The traced file: a safetensors file whose tensors are the graph's state and constants, and
// whose metadata holds the graph as JSON (Note [Traced file format]).
#include <cmath>
#include <cstring>
#include <map>

#include "core/check.h"
#include "io/json.h"
#include "ops/ops_common.h"
#include "tapegrad/io.h"
#include "trace/serialize.h"

namespace tg::trace_detail {

// Note [Traced file format]
// f.save(path) writes one safetensors file, so its weights open in any safetensors tool.
//   __metadata__: "format": "tapegrad.traced", "version": "1", "graph": the JSON below.
//   tensors, 1-D, in the dtype the graph first reads them as:
//     "state.<b>"   state buffer b, its value when saved (the loaded function owns it)
//     "kept.<b>"    a temp the function let escape (a .grad), as when saved
//     "const.<b>"   a folded constant
//     "literal.<i>" the bytes node i copies in (a tensor literal inside the function)
// graph: {"inputs": [view, ...], "buffers": [buffer, ...], "nodes": [node, ...],
//         "outputs": [operand, ...], "summary": "what the passes did"}
//   view     [dtype, [sizes], [strides], offset]       (elements; dtype "f32", "i64"...)
//   operand  [buffer index, dtype, [sizes], [strides], offset]
//   buffer   {"kind": "input" | "state" | "temp", "nbytes": n, "input": i,
//             "role": "plain" | "kept" | "output" | "constant", "op": "the op that made it"}
//   node     {"call": "copy" | "constant" | "fill" | "iota" | "random" | "unary" | "binary" |
//             "where" | "reduce" | "matmul" | "index" | "window", "op": op name,
//             "out": operand, "in": [operand, ...], "out2": operand (max pooling's indices),
//             then per call: fill "value" + "kind" ("float" | "int" | "bool"); iota "start",
//             "step"; random "random" ("uniform" | "normal" | "int"), "a", "b"; unary
//             "attrs" [a, b]; reduce "nreduced"; index "dim"; window "window" [kh, kw, sh,
//             sw, ph, pw, dh, dw]; and "user_op", "file", "line" for messages}
// The graph is the one before the lowering steps (Note [Matmul updates], Note [Elementwise
// fusion], Note [Row tiles]): matmul updates, fused groups and row tiles are lowerings for one
// backend, which the loader redoes for the device it runs on, so no fused node, matmul update or
// tile run is ever written. Numbers that are not finite are the strings "inf", "-inf", "nan". Arguments
// are contiguous and views of them start at 0. Version 1 reads exactly these fields; a reader
// meeting a newer version refuses it by number.
inline constexpr const char* kFormat = "tapegrad.traced";
inline constexpr int kVersion = 1;

namespace {

using json::Value;

constexpr const char* kCalls[] = {"copy",   "constant", "fill",   "iota",  "random", "unary",
                                  "binary", "where",    "reduce", "matmul", "index", "window",
                                  "fused"};
constexpr const char* kRandom[] = {"uniform", "normal", "int"};
constexpr DType kDTypes[] = {kF32, kF64, kI32, kI64, kBool};

// --- writing --------------------------------------------------------------------------------------

Value num(int64_t v) {
  Value x;
  x.kind = Value::Number;
  x.is_integer = true;
  x.integer = v;
  x.number = static_cast<double>(v);
  return x;
}
Value real(double v) {
  Value x;
  if (!std::isfinite(v)) {
    x.kind = Value::String;
    x.string = std::isnan(v) ? "nan" : v > 0 ? "inf" : "-inf";
    return x;
  }
  x.kind = Value::Number;
  x.number = v;
  return x;
}
Value str(std::string s) {
  Value x;
  x.kind = Value::String;
  x.string = std::move(s);
  return x;
}
Value arr(std::vector<Value> v = {}) {
  Value x;
  x.kind = Value::Array;
  x.array = std::move(v);
  return x;
}
Value ints(const Shape& s) {
  Value x = arr();
  for (int64_t v : s) x.array.push_back(num(v));
  return x;
}
struct Obj {
  Value v;
  Obj() { v.kind = Value::Object; }
  Obj& put(std::string k, Value x) {
    v.object.emplace_back(std::move(k), std::move(x));
    return *this;
  }
};

Value view_json(const View& v) {
  return arr({str(std::string(dtype_name(v.dtype))), ints(v.sizes), ints(v.strides), num(v.offset)});
}
Value operand_json(const Operand& o) {
  Value v = view_json(o.view);
  v.array.insert(v.array.begin(), num(o.buf));
  return v;
}

Value node_json(const Node& n) {
  Obj o;
  // A transfer is a copy in a file: its loader puts every buffer on one device.
  o.put("call", str(n.call == Call::Transfer ? "copy" : kCalls[static_cast<int>(n.call)]));
  o.put("op", str(std::string(op_name(n.op))));
  o.put("out", operand_json(n.out));
  Value in = arr();
  for (const Operand& x : n.in) in.array.push_back(operand_json(x));
  o.put("in", std::move(in));
  if (n.out2.buf >= 0) o.put("out2", operand_json(n.out2));
  switch (n.call) {
    case Call::Fill:
      o.put("kind", str(n.value.kind() == Scalar::Kind::Float  ? "float"
                        : n.value.kind() == Scalar::Kind::Bool ? "bool"
                                                               : "int"));
      o.put("value", n.value.is_floating() ? real(n.value.to_double()) : num(n.value.to_int()));
      break;
    case Call::Iota: o.put("start", real(n.start)).put("step", real(n.step)); break;
    case Call::Random:
      o.put("random", str(kRandom[static_cast<int>(n.random)])).put("a", real(n.a)).put("b", real(n.b));
      break;
    case Call::Unary: o.put("attrs", arr({real(n.attrs.a), real(n.attrs.b)})); break;
    case Call::Reduce: o.put("nreduced", num(n.nreduced)); break;
    case Call::Index: o.put("dim", num(n.dim)); break;
    case Call::Window: {
      const Window2d& w = n.window;
      o.put("window", ints(Shape{w.kh, w.kw, w.sh, w.sw, w.ph, w.pw, w.dh, w.dw}));
      break;
    }
    default: break;
  }
  o.put("user_op", str(n.user_op)).put("file", str(n.file)).put("line", num(n.line));
  return o.v;
}

// A buffer's bytes as a 1-D CPU tensor of the dtype its first reader uses.
Tensor bytes_tensor(const Storage& s, size_t nbytes, DType dtype) {
  if (nbytes % element_size(dtype) != 0) dtype = kBool;
  Tensor t = make_tensor({static_cast<int64_t>(nbytes / element_size(dtype))}, dtype, kCPU);
  if (nbytes == 0) return t;
  if (s.device.is_cpu()) {
    std::memcpy(t.raw_data_ptr(), s.data, nbytes);
  } else {
    TensorImpl src;
    src.storage = std::shared_ptr<Storage>(const_cast<Storage*>(&s), [](Storage*) {});
    src.sizes = t.shape();
    src.strides = contiguous_strides(t.shape());
    src.numel = t.numel();
    src.dtype = t.dtype();
    device_backend(s.device).copy_to_host(t.raw_data_ptr(), src);
  }
  return t;
}

}  // namespace

void save_program(const Program& prog, const std::string& path, Loc loc) {
  const char* op = "TracedFunction::save";
  OpScope scope(op, loc);
  Program p = prog;  // normalized below: inputs from offset 0, every buffer on the CPU
  std::vector<int32_t> input_buf(p.num_inputs, -1);
  for (size_t b = 0; b < p.buffers.size(); ++b)
    if (p.buffers[b].kind == BufKind::Input) input_buf[p.buffers[b].input] = static_cast<int32_t>(b);
  for (size_t i = 0; i < p.num_inputs; ++i) {
    const View& v = p.input_views[i];
    TG_CHECK(input_buf[i] >= 0,
                "{}: arguments {} shared storage with an earlier one when the function was traced; "
                "trace it with separate tensors to save it", op, i);
    TG_CHECK(v.contiguous(),
                "{}: argument {} (sizes {}, strides {}) was not contiguous when traced; trace it "
                "with contiguous arguments to save it", op, i, v.sizes, v.strides);
    Buffer& b = p.buffers[input_buf[i]];
    b.nbytes = static_cast<size_t>(v.numel() * esize(v.dtype));
    auto shift = [&](Operand& o) {
      if (o.buf != input_buf[i]) return;
      o.view.offset -= v.offset;
      check_view(o.view, b.nbytes, fmt::format("{}: a view of argument {}", op, i));
    };
    for (Node& n : p.nodes) {
      for (Operand& o : n.in) shift(o);
      shift(n.out);
    }
    for (Operand& o : p.outputs) shift(o);
    p.input_views[i].offset = 0;
  }
  for (const Node& n : p.nodes)
    TG_INTERNAL_ASSERT(n.call != Call::Fused && !n.matmul_update());  // the graph before lowering
  TG_INTERNAL_ASSERT(p.tiles.empty());

  // The dtype each buffer is first seen as.
  std::vector<DType> dtype(p.buffers.size(), kBool);
  std::vector<char> seen(p.buffers.size(), 0);
  auto see = [&](const Operand& o) {
    if (o.buf >= 0 && !seen[o.buf]) seen[o.buf] = 1, dtype[o.buf] = o.view.dtype;
  };
  for (const Node& n : p.nodes) {
    for (const Operand& o : n.in) see(o);
    see(n.out);
    see(n.out2);
  }
  for (const Operand& o : p.outputs) see(o);

  std::map<std::string, Tensor> tensors;
  Value buffers = arr();
  for (size_t b = 0; b < p.buffers.size(); ++b) {
    const Buffer& buf = p.buffers[b];
    Obj o;
    o.put("kind", str(buf.kind == BufKind::Input ? "input" : buf.kind == BufKind::State ? "state" : "temp"));
    o.put("nbytes", num(static_cast<int64_t>(buf.nbytes)));
    if (buf.kind == BufKind::Input) o.put("input", num(buf.input));
    if (buf.kind == BufKind::State) {
      std::shared_ptr<Storage> s = buf.state.lock();
      TG_CHECK(s != nullptr,
                  "{}: a tensor the graph reads as state (first read by {}) has been freed", op,
                  buf.first_op.empty() ? "an op" : buf.first_op);
      tensors[fmt::format("state.{}", b)] = bytes_tensor(*s, buf.nbytes, dtype[b]);
    }
    if (buf.kind == BufKind::Temp) {
      const char* role = buf.constant ? "constant" : buf.escaped ? "kept" : buf.output ? "output" : "plain";
      o.put("role", str(role));
      if (buf.constant || buf.escaped)
        tensors[fmt::format("{}.{}", buf.constant ? "const" : "kept", b)] =
            bytes_tensor(*buf.kept, buf.nbytes, dtype[b]);
    }
    o.put("op", str(buf.first_op));
    buffers.array.push_back(o.v);
  }
  Value nodes = arr();
  for (size_t i = 0; i < p.nodes.size(); ++i) {
    const Node& n = p.nodes[i];
    nodes.array.push_back(node_json(n));
    if (n.call == Call::Constant) {
      Storage s(const_cast<char*>(n.bytes.data()), n.bytes.size(), kCPU);
      s.owns_data = false;
      tensors[fmt::format("literal.{}", i)] = bytes_tensor(s, n.bytes.size(), n.out.view.dtype);
    }
  }
  Value inputs = arr(), outputs = arr();
  for (const View& v : p.input_views) inputs.array.push_back(view_json(v));
  for (const Operand& o : p.outputs) outputs.array.push_back(operand_json(o));
  Obj graph;
  graph.put("inputs", std::move(inputs)).put("buffers", std::move(buffers));
  graph.put("nodes", std::move(nodes)).put("outputs", std::move(outputs));
  graph.put("summary", str(p.summary));
  save_safetensors(path, tensors,
                   {{"format", kFormat}, {"version", std::to_string(kVersion)},
                    {"graph", json::dump(graph.v)}},
                   loc);
}

// --- reading -----------------------------------------------------------------------------------------

namespace {

class Reader {
 public:
  explicit Reader(std::string what) : what_(std::move(what)) {}

  [[noreturn]] void fail(std::string_view where, std::string_view problem) const {
    throw Error(fmt::format("{}: {}: {}", what_, where, problem), "load_traced", Loc{});
  }
  const Value& field(const Value& obj, std::string_view key, std::string_view where) const {
    if (obj.kind != Value::Object) fail(where, "is not an object");
    for (const auto& [k, v] : obj.object)
      if (k == key) return v;
    fail(where, fmt::format("has no \"{}\"", key));
  }
  const Value* optional(const Value& obj, std::string_view key) const {
    for (const auto& [k, v] : obj.object)
      if (k == key) return &v;
    return nullptr;
  }
  int64_t integer(const Value& v, std::string_view where, int64_t lo, int64_t hi) const {
    if (v.kind != Value::Number || !v.is_integer) fail(where, "is not an integer");
    if (v.integer < lo || v.integer > hi)
      fail(where, fmt::format("{} is outside [{}, {}]", v.integer, lo, hi));
    return v.integer;
  }
  double real(const Value& v, std::string_view where) const {
    if (v.kind == Value::Number) return v.number;
    if (v.kind == Value::String) {
      if (v.string == "inf") return INFINITY;
      if (v.string == "-inf") return -INFINITY;
      if (v.string == "nan") return NAN;
    }
    fail(where, "is not a number");
  }
  const std::string& string(const Value& v, std::string_view where) const {
    if (v.kind != Value::String) fail(where, "is not a string");
    return v.string;
  }
  const std::vector<Value>& array(const Value& v, std::string_view where) const {
    if (v.kind != Value::Array) fail(where, "is not an array");
    return v.array;
  }
  template <size_t N>
  size_t choice(const Value& v, const char* const (&names)[N], std::string_view where) const {
    const std::string& s = string(v, where);
    for (size_t i = 0; i < N; ++i)
      if (s == names[i]) return i;
    fail(where, fmt::format("\"{}\" is not one of {}", s, fmt::join(names, ", ")));
  }
  DType dtype(const Value& v, std::string_view where) const {
    const std::string& s = string(v, where);
    for (DType d : kDTypes)
      if (dtype_name(d) == s) return d;
    fail(where, fmt::format("unknown dtype \"{}\"", s));
  }
  Shape shape(const Value& v, std::string_view where) const {
    const auto& a = array(v, where);
    if (a.size() > Shape::kMaxDims) fail(where, fmt::format("has {} dims", a.size()));
    Shape s;
    for (const Value& x : a) s.push_back(integer(x, where, 0, int64_t{1} << 48));
    return s;
  }
  View view(const std::vector<Value>& a, size_t first, std::string_view where) const {
    if (a.size() != first + 4) fail(where, "is not [dtype, sizes, strides, offset]");
    View v;
    v.dtype = dtype(a[first], where);
    v.sizes = shape(a[first + 1], where);
    v.strides = shape(a[first + 2], where);
    v.offset = integer(a[first + 3], where, 0, int64_t{1} << 48);
    return v;
  }
  Operand operand(const Value& v, size_t nbuf, std::string_view where) const {
    const auto& a = array(v, where);
    if (a.empty()) fail(where, "is empty");
    Operand o;
    o.buf = static_cast<int32_t>(integer(a[0], where, 0, static_cast<int64_t>(nbuf) - 1));
    o.view = view(a, 1, where);
    return o;
  }

 private:
  std::string what_;
};

OpKind op_by_name(const Reader& r, const std::string& name, std::string_view where) {
  for (size_t k = 0; k < kNumOps; ++k)
    if (op_name(static_cast<OpKind>(k)) == name) return static_cast<OpKind>(k);
  r.fail(where, fmt::format("unknown op \"{}\"", name));
}

Node read_node(const Reader& r, const Value& v, size_t nbuf, const std::string& where,
               const std::map<std::string, Tensor>& tensors, size_t index) {
  Node n;
  n.call = static_cast<Call>(r.choice(r.field(v, "call", where), kCalls, where + " call"));
  n.op = op_by_name(r, r.string(r.field(v, "op", where), where + " op"), where);
  n.out = r.operand(r.field(v, "out", where), nbuf, where + " out");
  for (const Value& x : r.array(r.field(v, "in", where), where + " in"))
    n.in.push_back(r.operand(x, nbuf, where + " in"));
  if (const Value* o2 = r.optional(v, "out2")) n.out2 = r.operand(*o2, nbuf, where + " out2");
  switch (n.call) {
    case Call::Fill: {
      size_t kind = r.choice(r.field(v, "kind", where), {"float", "int", "bool"}, where + " kind");
      const Value& x = r.field(v, "value", where);
      if (kind == 0) n.value = r.real(x, where + " value");
      if (kind == 1) n.value = r.integer(x, where + " value", INT64_MIN, INT64_MAX);
      if (kind == 2) n.value = r.integer(x, where + " value", 0, 1) != 0;
      break;
    }
    case Call::Iota:
      n.start = r.real(r.field(v, "start", where), where);
      n.step = r.real(r.field(v, "step", where), where);
      break;
    case Call::Random:
      n.random = static_cast<RandomKind>(r.choice(r.field(v, "random", where), kRandom, where));
      n.a = r.real(r.field(v, "a", where), where);
      n.b = r.real(r.field(v, "b", where), where);
      break;
    case Call::Unary: {
      const auto& a = r.array(r.field(v, "attrs", where), where + " attrs");
      if (a.size() != 2) r.fail(where, "attrs is not [a, b]");
      n.attrs = {r.real(a[0], where), r.real(a[1], where)};
      break;
    }
    case Call::Reduce: n.nreduced = static_cast<int>(r.integer(r.field(v, "nreduced", where), where, 0, 16)); break;
    case Call::Index: n.dim = static_cast<int>(r.integer(r.field(v, "dim", where), where, 0, 15)); break;
    case Call::Window: {
      Shape w = r.shape(r.field(v, "window", where), where + " window");
      if (w.size() != 8) r.fail(where, "window is not 8 numbers");
      n.window = {w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]};
      break;
    }
    case Call::Constant: {
      auto it = tensors.find(fmt::format("literal.{}", index));
      if (it == tensors.end()) r.fail(where, "its literal tensor is missing");
      const Tensor& t = it->second;
      const char* p = static_cast<const char*>(t.raw_data_ptr());
      n.bytes.assign(p, p + t.numel() * static_cast<int64_t>(element_size(t.dtype())));
      break;
    }
    default: break;
  }
  if (const Value* u = r.optional(v, "user_op")) n.user_op = r.string(*u, where);
  if (const Value* f = r.optional(v, "file")) n.file = r.string(*f, where);
  if (const Value* l = r.optional(v, "line")) n.line = static_cast<uint32_t>(r.integer(*l, where, 0, UINT32_MAX));
  return n;
}

}  // namespace

LoadedProgram load_program(const std::string& path, Loc loc) {
  std::map<std::string, std::string> meta = load_safetensors_metadata(path, loc);
  std::string what = fmt::format("load_traced: '{}'", path);
  Reader r(what);
  auto format = meta.find("format");
  if (format == meta.end() || format->second != kFormat)
    r.fail("the file", "is not a traced graph (its metadata has no \"format\": \"tapegrad.traced\"); "
                       "weights alone load with tg::load_safetensors");
  auto version = meta.find("version");
  if (version == meta.end() || version->second != std::to_string(kVersion))
    r.fail("the file", fmt::format("has format version {}, and this build reads version {}",
                                   version == meta.end() ? "(none)" : version->second, kVersion));
  auto graph_text = meta.find("graph");
  if (graph_text == meta.end()) r.fail("the file", "has no graph");
  std::map<std::string, Tensor> tensors = load_safetensors(path, loc);
  Value g = json::parse(graph_text->second, what + ": the graph");

  Program p;
  const auto& inputs = r.array(r.field(g, "inputs", "the graph"), "inputs");
  p.num_inputs = inputs.size();
  for (const Value& v : inputs) {
    View view = r.view(r.array(v, "an input"), 0, "an input");
    if (!view.contiguous() || view.offset != 0) r.fail("an input", "is not contiguous from 0");
    p.input_views.push_back(view);
  }
  const auto& buffers = r.array(r.field(g, "buffers", "the graph"), "buffers");
  std::vector<char> input_seen(p.num_inputs, 0);
  std::map<std::string, int> used;  // tensor names the graph refers to
  LoadedProgram out;
  auto take = [&](const std::string& name, size_t nbytes, std::string_view where) {
    auto it = tensors.find(name);
    if (it == tensors.end()) r.fail(where, fmt::format("its tensor \"{}\" is missing", name));
    const Tensor& t = it->second;
    size_t have = static_cast<size_t>(t.numel()) * element_size(t.dtype());
    if (have != nbytes)
      r.fail(where, fmt::format("its tensor \"{}\" has {} bytes, and the buffer {}", name, have, nbytes));
    ++used[name];
    auto s = allocate_storage(nbytes, kCPU);  // its own bytes, whatever the loader shares
    if (nbytes > 0) std::memcpy(s->data, t.raw_data_ptr(), nbytes);
    return s;
  };
  for (size_t b = 0; b < buffers.size(); ++b) {
    std::string where = fmt::format("buffer {}", b);
    const Value& v = buffers[b];
    Buffer buf;
    buf.device = kCPU;
    buf.nbytes = static_cast<size_t>(r.integer(r.field(v, "nbytes", where), where, 0, int64_t{1} << 48));
    size_t kind = r.choice(r.field(v, "kind", where), {"input", "state", "temp"}, where + " kind");
    if (const Value* op = r.optional(v, "op")) buf.first_op = r.string(*op, where);
    if (kind == 0) {
      buf.kind = BufKind::Input;
      buf.input = static_cast<int>(r.integer(r.field(v, "input", where), where, 0,
                                             static_cast<int64_t>(p.num_inputs) - 1));
      if (input_seen[buf.input]++) r.fail(where, fmt::format("is a second buffer of input {}", buf.input));
      const View& iv = p.input_views[buf.input];
      if (buf.nbytes != static_cast<size_t>(iv.numel() * esize(iv.dtype)))
        r.fail(where, "does not have its input's size");
    } else if (kind == 1) {
      buf.kind = BufKind::State;
      auto s = take(fmt::format("state.{}", b), buf.nbytes, where);
      buf.state = s;
      out.owned.push_back(std::move(s));
    } else {
      buf.kind = BufKind::Temp;
      size_t role = r.choice(r.field(v, "role", where), {"plain", "kept", "output", "constant"}, where + " role");
      buf.escaped = role == 1;
      buf.output = role == 2;
      buf.constant = role == 3;
      if (buf.escaped || buf.constant)
        buf.kept = take(fmt::format("{}.{}", buf.constant ? "const" : "kept", b), buf.nbytes, where);
    }
    p.buffers.push_back(std::move(buf));
  }
  for (size_t i = 0; i < p.num_inputs; ++i)
    if (!input_seen[i]) r.fail(fmt::format("input {}", i), "has no buffer");
  const auto& nodes = r.array(r.field(g, "nodes", "the graph"), "nodes");
  for (size_t i = 0; i < nodes.size(); ++i) {
    p.nodes.push_back(read_node(r, nodes[i], p.buffers.size(), fmt::format("node {}", i), tensors, i));
    if (p.nodes.back().call == Call::Constant) ++used[fmt::format("literal.{}", i)];
  }
  for (const Value& v : r.array(r.field(g, "outputs", "the graph"), "outputs"))
    p.outputs.push_back(r.operand(v, p.buffers.size(), "an output"));
  for (const Operand& o : p.outputs)
    if (p.buffers[o.buf].kind == BufKind::Temp && !p.buffers[o.buf].persistent())
      r.fail("an output", "reads a temp that is not marked as an output");
  if (const Value* s = r.optional(g, "summary")) p.summary = r.string(*s, "summary");
  for (const auto& [name, t] : tensors)
    if (!used.count(name)) r.fail("the file", fmt::format("has a tensor \"{}\" the graph does not use", name));
  validate(p, what);
  out.program = std::make_shared<const Program>(std::move(p));
  return out;
}

}  // namespace tg::trace_detail
