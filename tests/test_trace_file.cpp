// Saving traced graphs and loading them back: round trips (inference and a training step), the
// loaded callable's argument checks, and crafted bad files that must each give a clear tg::Error.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>

#include "io/json.h"

using namespace tg;

namespace {

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("tg_trace_" + name)).string();
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         a.to_vector<double>() == b.to_vector<double>();
}

json::Value& field(json::Value& obj, const std::string& key) {
  for (auto& [k, v] : obj.object)
    if (k == key) return v;
  FAIL("no field " << key);
  throw 0;
}

json::Value& node_with(json::Value& graph, const std::string& call) {
  for (json::Value& n : field(graph, "nodes").array)
    if (field(n, "call").string == call) return n;
  FAIL("no node " << call);
  throw 0;
}

json::Value integer(int64_t v) {
  json::Value x;
  x.kind = json::Value::Number;
  x.is_integer = true;
  x.integer = v;
  x.number = static_cast<double>(v);
  return x;
}

// A saved graph taken apart, to be changed and written back.
struct Parts {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> meta;
  json::Value graph;
  explicit Parts(const std::string& path)
      : tensors(load_safetensors(path)), meta(load_safetensors_metadata(path)),
        graph(json::parse(meta.at("graph"), "test")) {}
  void write(const std::string& path) {
    meta["graph"] = json::dump(graph);
    save_safetensors(path, tensors, meta);
  }
};

// The graph every bad file starts from: state, matmul, add, tanh, a reduction.
struct Small {
  Tensor w = randn({4, 3}), b = randn({3});
  TracedFunction f = trace([this](const Tensor& x) { return tanh(x.matmul(w) + b).sum({1}); });
};

}  // namespace

TEST_CASE("trace file: an inference graph saved and loaded gives the same outputs") {
  manual_seed(5);
  nn::Sequential model{nn::Linear(6, 8), nn::ReLU(), nn::Linear(8, 3), nn::LogSoftmax(1)};
  model.eval();
  auto f = trace([&](const Tensor& x) { return model(x); });
  Tensor x = randn({5, 6});
  Tensor want = f(x);
  std::string path = temp_path("mlp.tgt");
  f.save(path);
  TracedFunction g = load_traced(path);
  CHECK(g.num_compiles() == 0);
  Tensor got = g(x).at(0);
  CHECK(bitwise_equal(got, want));
  CHECK(bitwise_equal(got, model(x)));
  CHECK(g.graph().num_nodes() == f.graph().num_nodes());
  CHECK(g.graph().count("matmul") == 2);
  CHECK(g.pass_summary().find("dce:") != std::string::npos);
  // The loaded graph owns its weights: changing the model does not change it.
  NoGradGuard no_grad;
  for (auto& [name, p] : model.named_parameters()) p.fill_(0);
  CHECK(bitwise_equal(g(x).at(0), want));
  // A non-contiguous argument of the right shape is copied; other shapes are refused by shape.
  Tensor xt = x.t().contiguous().t();
  CHECK(bitwise_equal(g(xt).at(0), want));
  CHECK_THROWS_WITH_AS(g(randn({4, 6})), doctest::Contains("f32[5, 6]"), Error);
  CHECK_THROWS_WITH_AS(g(x.to(kF64)), doctest::Contains("argument 0"), Error);
  CHECK_THROWS_WITH_AS(g(x, x), doctest::Contains("takes 1 tensors"), Error);
  std::remove(path.c_str());
}

TEST_CASE("trace file: a saved training step keeps training from where it was saved") {
  auto make = [](uint64_t seed) {
    manual_seed(seed);
    return nn::Sequential{nn::Linear(6, 8), nn::Tanh(), nn::Linear(8, 3)};
  };
  nn::Sequential model = make(1);
  optim::Adam opt(model.parameters(), {.lr = 1e-2});
  auto step = trace([&](const Tensor& x, const Tensor& y) {
    opt.zero_grad();
    Tensor loss = nn::functional::cross_entropy(model(x), y);
    loss.backward();
    opt.step();
    return loss;
  });
  manual_seed(2);
  Tensor x = randn({10, 6}), y = randint(0, 3, {10});
  step(x, y);
  step(x, y);
  std::string path = temp_path("step.tgt");
  step.save(path);
  TracedFunction loaded = load_traced(path);
  for (int i = 0; i < 3; ++i) {
    Tensor a = step(x, y), b = loaded(x, y).at(0);
    CHECK(bitwise_equal(a, b));
  }
  std::remove(path.c_str());
}

TEST_CASE("trace file: saving refuses what it cannot write") {
  Tensor big = randn({4, 6});
  auto f = trace([](const Tensor& x) { return x * 2; });
  f(big.t());  // traced with a non-contiguous argument
  CHECK_THROWS_WITH_AS(f.save(temp_path("nc.tgt")), doctest::Contains("not contiguous"), Error);
  auto g = trace([](const Tensor& a, const Tensor& b) { return a + b; });
  g(big, big);
  CHECK_THROWS_WITH_AS(g.save(temp_path("alias.tgt")), doctest::Contains("shared storage"), Error);
  CHECK_THROWS_AS(trace([](const Tensor& x) { return x; }).save(temp_path("none.tgt")), Error);
}

TEST_CASE("trace file: crafted bad files each give a clear error") {
  Small s;
  Tensor x = randn({2, 4});
  s.f(x);
  std::string good = temp_path("good.tgt"), bad = temp_path("bad.tgt");
  s.f.save(good);
  REQUIRE(bitwise_equal(load_traced(good)(x).at(0), s.f(x).at(0)));

  auto expect = [&](const std::string& what, std::function<void(Parts&)> change) {
    CAPTURE(what);
    Parts parts(good);
    change(parts);
    parts.write(bad);
    CHECK_THROWS_WITH_AS(load_traced(bad), doctest::Contains(what.c_str()), Error);
  };
  auto operand_of = [](json::Value& node, const char* slot) -> std::vector<json::Value>& {
    json::Value& v = field(node, slot);
    return (v.array.empty() || v.array[0].kind == json::Value::Array ? v.array[0] : v).array;
  };

  // Not a traced file at all.
  {
    std::ofstream(bad, std::ios::binary) << "this is not a safetensors file, not even close";
    CHECK_THROWS_AS(load_traced(bad), Error);
    std::string bytes;
    {
      std::ifstream in(good, std::ios::binary);
      bytes.assign(std::istreambuf_iterator<char>(in), {});
    }
    std::ofstream(bad, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
    CHECK_THROWS_AS(load_traced(bad), Error);
    save_safetensors(bad, {{"w", s.w}});
    CHECK_THROWS_WITH_AS(load_traced(bad), doctest::Contains("not a traced graph"), Error);
    CHECK_THROWS_AS(load_traced(temp_path("does_not_exist.tgt")), Error);
  }
  expect("format version 2", [](Parts& p) { p.meta["version"] = "2"; });
  {
    Parts p(good);
    p.meta["graph"] = "{\"nodes\": [";
    save_safetensors(bad, p.tensors, p.meta);
    CHECK_THROWS_WITH_AS(load_traced(bad), doctest::Contains("invalid JSON"), Error);
  }
  expect("is not one of", [](Parts& p) { field(node_with(p.graph, "matmul"), "call").string = "teleport"; });
  expect("unknown op", [](Parts& p) { field(node_with(p.graph, "unary"), "op").string = "frobnicate"; });
  expect("outside", [&](Parts& p) { operand_of(node_with(p.graph, "matmul"), "in")[0] = integer(9999); });
  expect("reaches byte", [&](Parts& p) { operand_of(node_with(p.graph, "unary"), "out")[4] = integer(1000); });
  expect("outside", [&](Parts& p) {
    operand_of(node_with(p.graph, "unary"), "out")[2].array[0] = integer(-3);
  });
  expect("too many elements", [&](Parts& p) {
    auto& sizes = operand_of(node_with(p.graph, "unary"), "out")[2].array;
    sizes = {integer(int64_t{1} << 40), integer(int64_t{1} << 40)};
  });
  expect("has 17 dims", [&](Parts& p) {
    auto& sizes = operand_of(node_with(p.graph, "unary"), "out")[2].array;
    sizes.assign(17, integer(1));
  });
  expect("do not multiply", [&](Parts& p) {
    auto& b = field(node_with(p.graph, "matmul"), "in").array[1].array;
    b[2].array[1] = integer(3);  // K 4 -> 3: still inside the weights, but not a product
  });
  expect("dtypes do not fit", [&](Parts& p) {
    field(node_with(p.graph, "binary"), "in").array[1].array[1].string = "i32";
  });
  expect("differ in sizes or dtype", [&](Parts& p) {
    field(node_with(p.graph, "unary"), "in").array[0].array[2].array[1] = integer(2);
  });
  expect("reduces more dims", [&](Parts& p) { field(node_with(p.graph, "reduce"), "nreduced") = integer(5); });
  expect("is missing", [](Parts& p) {
    for (auto it = p.tensors.begin(); it != p.tensors.end(); ++it)
      if (it->first.rfind("state.", 0) == 0) {
        p.tensors.erase(it);
        break;
      }
  });
  expect("bytes, and the buffer", [](Parts& p) {
    for (auto& [name, t] : p.tensors)
      if (name.rfind("state.", 0) == 0) t = zeros({1});
  });
  expect("does not use", [](Parts& p) { p.tensors["stray"] = zeros({2}); });
  expect("not marked as an output", [&](Parts& p) {
    auto& out = field(p.graph, "outputs").array[0].array;
    out[0] = operand_of(node_with(p.graph, "matmul"), "out")[0];
  });
  expect("is a second buffer of input 0", [](Parts& p) {
    auto& buffers = field(p.graph, "buffers").array;
    for (auto& b : buffers)
      if (field(b, "kind").string == "temp") {
        b = buffers[0];
        break;
      }
  });
  expect("unknown dtype", [&](Parts& p) { field(p.graph, "inputs").array[0].array[0].string = "f16"; });
  expect("is not [dtype, sizes, strides, offset]", [&](Parts& p) {
    field(node_with(p.graph, "matmul"), "out").array.pop_back();
  });
  expect("has no \"nodes\"", [](Parts& p) {
    auto& obj = p.graph.object;
    std::erase_if(obj, [](auto& kv) { return kv.first == "nodes"; });
  });
  std::remove(good.c_str());
  std::remove(bad.c_str());
}
