// The op table (see op_table.h for how to add an op): rows grouped by family as in op_list.def.
#include "op_table.h"

#include <cmath>
#include <limits>

namespace tgtest {
using namespace tg;

// Deterministic pseudo-random values in [lo, hi), independent of the library's RNG.
Tensor input(const Shape& shape, DType dt, double lo, double hi, int seed) {
  std::vector<double> v(static_cast<size_t>(numel_of(shape)));
  for (size_t i = 0; i < v.size(); ++i) {
    double s = std::sin(static_cast<double>(i) * 12.9898 + seed * 78.233) * 43758.5453;
    v[i] = lo + (hi - lo) * (s - std::floor(s));
  }
  return tensor(v, shape).to(dt);
}

// Same values, but a non-contiguous view: built transposed, then transposed back.
Tensor noncontig(const Shape& shape, DType dt, double lo, double hi, int seed) {
  Shape t = shape;
  std::swap(t[t.size() - 1], t[t.size() - 2]);
  Tensor x = input(t, dt, lo, hi, seed).transpose(-1, -2);
  return x;
}

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

Tensor boolean(const Shape& shape, int seed) { return input(shape, kF64, -1, 1, seed) > 0; }

struct Domain {
  double lo = -2, hi = 2;
};

// --- elementwise rows -----------------------------------------------------------------------------

OpRow unary(std::string name, std::function<Tensor(const Tensor&)> fn,
            std::function<double(double)> f, Domain d = {}) {
  return {name, [=](DType dt) {
            std::vector<Sample> s;
            auto add = [&](std::string label, Tensor x) {
              s.push_back({label, {x}, [fn](const Inputs& in) { return fn(in[0]); },
                           [f](const std::vector<Ref>& r) { return map(r[0], f); }});
            };
            add("2x3", input({2, 3}, dt, d.lo, d.hi));
            add("0-d", input({}, dt, d.lo, d.hi, 2));
            add("empty", input({0, 3}, dt, d.lo, d.hi));
            add("1-D long", input({37}, dt, d.lo, d.hi, 3));
            add("non-contiguous", noncontig({3, 4}, dt, d.lo, d.hi, 4));
            add("sliced", input({10}, dt, d.lo, d.hi, 5).slice(0, 1, 10, 3));
            return s;
          }};
}

OpRow binary(std::string name, std::function<Tensor(const Tensor&, const Tensor&)> fn,
             std::function<double(double, double)> f, Domain da = {}, Domain db = {},
             std::function<Tensor(const Tensor&, Scalar)> with_scalar = nullptr) {
  return {name, [=](DType dt) {
            std::vector<Sample> s;
            auto ref = [f](const std::vector<Ref>& r) { return zip(r[0], r[1], f); };
            auto add = [&](std::string label, Tensor a, Tensor b) {
              s.push_back({label, {a, b}, [fn](const Inputs& in) { return fn(in[0], in[1]); }, ref});
            };
            add("same shape", input({2, 3}, dt, da.lo, da.hi, 1), input({2, 3}, dt, db.lo, db.hi, 2));
            add("broadcast row", input({2, 3}, dt, da.lo, da.hi, 3), input({3}, dt, db.lo, db.hi, 4));
            add("outer broadcast", input({2, 1}, dt, da.lo, da.hi, 5), input({1, 3}, dt, db.lo, db.hi, 6));
            add("0-d with 2-D", input({}, dt, da.lo, da.hi, 7), input({2, 3}, dt, db.lo, db.hi, 8));
            add("empty", input({0, 3}, dt, da.lo, da.hi, 9), input({3}, dt, db.lo, db.hi, 10));
            add("non-contiguous", noncontig({3, 4}, dt, da.lo, da.hi, 11), input({4}, dt, db.lo, db.hi, 12));
            add("long", input({1000}, dt, da.lo, da.hi, 13), input({1000}, dt, db.lo, db.hi, 14));
            if (with_scalar) {
              double c = (db.lo + db.hi) / 2 + 0.25;
              s.push_back({"tensor with number", {input({2, 3}, dt, da.lo, da.hi, 15)},
                           [with_scalar, c](const Inputs& in) { return with_scalar(in[0], c); },
                           [f, c](const std::vector<Ref>& r) {
                             return map(r[0], [f, c](double x) { return f(x, c); });
                           }});
            }
            return s;
          }};
}

double nan_max(double a, double b) { return std::isnan(a) || std::isnan(b) ? kNaN : std::max(a, b); }
double nan_min(double a, double b) { return std::isnan(a) || std::isnan(b) ? kNaN : std::min(a, b); }
double sign_of(double x) { return std::isnan(x) ? x : (x > 0) - (x < 0); }
double softplus_ref(double x) { return std::log1p(std::exp(-std::abs(x))) + std::max(x, 0.0); }

std::vector<OpRow> unary_rows() {
  std::vector<OpRow> rows = {
      unary("neg", [](const Tensor& x) { return -x; }, [](double v) { return -v; }),
      unary("exp", [](const Tensor& x) { return exp(x); }, [](double v) { return std::exp(v); }, {-10, 10}),
      unary("log", [](const Tensor& x) { return log(x); }, [](double v) { return std::log(v); }, {1e-3, 100}),
      unary("log1p", [](const Tensor& x) { return log1p(x); }, [](double v) { return std::log1p(v); }, {-0.9, 10}),
      unary("expm1", [](const Tensor& x) { return expm1(x); }, [](double v) { return std::expm1(v); }),
      unary("sqrt", [](const Tensor& x) { return sqrt(x); }, [](double v) { return std::sqrt(v); }, {0, 10}),
      unary("rsqrt", [](const Tensor& x) { return rsqrt(x); }, [](double v) { return 1 / std::sqrt(v); }, {0.1, 10}),
      unary("abs", [](const Tensor& x) { return abs(x); }, [](double v) { return std::abs(v); }),
      unary("sign", [](const Tensor& x) { return sign(x); }, sign_of),
      unary("sin", [](const Tensor& x) { return sin(x); }, [](double v) { return std::sin(v); }, {-6, 6}),
      unary("cos", [](const Tensor& x) { return cos(x); }, [](double v) { return std::cos(v); }, {-6, 6}),
      unary("tanh", [](const Tensor& x) { return tanh(x); }, [](double v) { return std::tanh(v); }, {-5, 5}),
      unary("sigmoid", [](const Tensor& x) { return sigmoid(x); },
            [](double v) { return 1 / (1 + std::exp(-v)); }, {-8, 8}),
      unary("relu", [](const Tensor& x) { return relu(x); }, [](double v) { return v > 0 ? v : 0; }),
      unary("gelu", [](const Tensor& x) { return gelu(x); },
            [](double v) { return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0))); }, {-4, 4}),
      unary("erf", [](const Tensor& x) { return x.erf(); }, [](double v) { return std::erf(v); }, {-3, 3}),
      unary("softplus", [](const Tensor& x) { return softplus(x); }, softplus_ref, {-30, 30}),
      unary("log_sigmoid", [](const Tensor& x) { return log_sigmoid(x); },
            [](double v) { return -softplus_ref(-v); }, {-30, 30}),
      unary("pow_scalar", [](const Tensor& x) { return pow(x, 2.5); },
            [](double v) { return std::pow(v, 2.5); }, {0, 3}),
      unary("clamp", [](const Tensor& x) { return clamp(x, -0.5, 0.75); },
            [](double v) { return std::min(std::max(v, -0.5), 0.75); }),
      {"logical_not", [](DType dt) {
         std::vector<Sample> s;
         auto ref = [](const std::vector<Ref>& r) { return map(r[0], [](double v) { return v == 0 ? 1.0 : 0.0; }); };
         auto op = [](const Inputs& in) { return logical_not(in[0]); };
         s.push_back({"bool", {boolean({2, 3}, 1)}, op, ref, false});
         s.push_back({"float (nonzero is true)", {input({2, 3}, dt, -1, 1).relu()}, op, ref, false});
         s.push_back({"operator~ on a 0-d", {boolean({}, 2)}, [](const Inputs& in) { return ~in[0]; }, ref, false});
         return s;
       }},
  };
  // Extra samples with exact zeros, edges and specials, added to the rows they concern.
  auto extend = [&](const std::string& name, std::vector<double> values,
                    std::function<Tensor(const Tensor&)> fn, std::function<double(double)> f) {
    for (auto& row : rows) {
      if (row.op != name) continue;
      auto base = row.samples;
      row.samples = [=](DType dt) {
        auto s = base(dt);
        s.push_back({"special values", {tensor(values).to(dt)},
                     [fn](const Inputs& in) { return fn(in[0]); },
                     [f](const std::vector<Ref>& r) { return map(r[0], f); }, false});
        return s;
      };
    }
  };
  extend("sign", {-1.5, 0.0, 2.0, kNaN}, [](const Tensor& x) { return sign(x); }, sign_of);
  extend("relu", {-1.0, 0.0, 3.0}, [](const Tensor& x) { return relu(x); }, [](double v) { return v > 0 ? v : 0; });
  extend("exp", {-200.0, -100.0, 0.0, 88.0, 100.0, kInf, -kInf, kNaN}, [](const Tensor& x) { return exp(x); },
         [](double v) { return std::exp(v); });
  extend("log", {0.0, -1.0, 1e-40, 1.0, kInf, kNaN}, [](const Tensor& x) { return log(x); },
         [](double v) { return std::log(v); });
  extend("tanh", {-50.0, -0.3, 0.0, 0.6, 30.0, kInf, kNaN}, [](const Tensor& x) { return tanh(x); },
         [](double v) { return std::tanh(v); });
  extend("sigmoid", {-200.0, 0.0, 200.0}, [](const Tensor& x) { return sigmoid(x); },
         [](double v) { return 1 / (1 + std::exp(-v)); });
  extend("softplus", {-1000.0, 0.0, 1000.0}, [](const Tensor& x) { return softplus(x); }, softplus_ref);
  extend("pow_scalar", {-2.0, 0.0, 3.0}, [](const Tensor& x) { return x.pow(3); },
         [](double v) { return v * v * v; });
  extend("clamp", {-3.0, 0.1, 3.0, kNaN}, [](const Tensor& x) { return x.clamp(std::nullopt, 1.0); },
         [](double v) { return std::isnan(v) ? v : std::min(v, 1.0); });
  return rows;
}

OpRow comparison(std::string name, std::function<Tensor(const Tensor&, const Tensor&)> fn,
                 std::function<bool(double, double)> f) {
  // Small integers as floats, so that ties occur.
  return {name, [=](DType dt) {
            std::vector<Sample> s;
            auto op = [fn](const Inputs& in) { return fn(in[0], in[1]); };
            auto ref = [f](const std::vector<Ref>& r) {
              return zip(r[0], r[1], [f](double a, double b) { return f(a, b) ? 1.0 : 0.0; });
            };
            auto ints = [dt](Shape sh, int seed) { return input(sh, kF64, 0, 3, seed).to(kI64).to(dt); };
            s.push_back({"ties", {ints({4, 5}, 1), ints({4, 5}, 2)}, op, ref, false});
            s.push_back({"broadcast", {ints({4, 1}, 3), ints({5}, 4)}, op, ref, false});
            s.push_back({"0-d", {ints({}, 5), ints({3}, 6)}, op, ref, false});
            s.push_back({"empty", {ints({0, 2}, 7), ints({2}, 8)}, op, ref, false});
            s.push_back({"nan", {tensor({1.0, kNaN, kNaN}).to(dt), tensor({1.0, 1.0, kNaN}).to(dt)}, op, ref, false});
            return s;
          }};
}

OpRow logical(std::string name, std::function<Tensor(const Tensor&, const Tensor&)> fn,
              std::function<bool(bool, bool)> f) {
  return {name, [=](DType dt) {
            auto op = [fn](const Inputs& in) { return fn(in[0], in[1]); };
            auto ref = [f](const std::vector<Ref>& r) {
              return zip(r[0], r[1], [f](double a, double b) { return f(a != 0, b != 0) ? 1.0 : 0.0; });
            };
            return std::vector<Sample>{
                {"bool", {boolean({3, 4}, 1), boolean({3, 4}, 2)}, op, ref, false},
                {"broadcast", {boolean({3, 1}, 3), boolean({4}, 4)}, op, ref, false},
                {"float operands", {input({3}, dt, -1, 1).relu(), input({3}, dt, -1, 1, 5)}, op, ref, false}};
          }};
}

std::vector<OpRow> binary_rows() {
  Domain pos{0.5, 2};
  return {
      binary("add", [](const Tensor& a, const Tensor& b) { return a + b; }, std::plus<>(), {}, {},
             [](const Tensor& a, Scalar b) { return a + b; }),
      binary("sub", [](const Tensor& a, const Tensor& b) { return a - b; }, std::minus<>(), {}, {},
             [](const Tensor& a, Scalar b) { return a - b; }),
      binary("mul", [](const Tensor& a, const Tensor& b) { return a * b; }, std::multiplies<>(), {}, {},
             [](const Tensor& a, Scalar b) { return b * a; }),
      binary("div", [](const Tensor& a, const Tensor& b) { return a / b; }, std::divides<>(), {}, pos,
             [](const Tensor& a, Scalar b) { return a / b; }),
      binary("pow", [](const Tensor& a, const Tensor& b) { return pow(a, b); },
             [](double a, double b) { return std::pow(a, b); }, pos, {-2, 2},
             [](const Tensor& a, Scalar b) { return pow(a, b); }),
      binary("maximum", [](const Tensor& a, const Tensor& b) { return maximum(a, b); }, nan_max),
      binary("minimum", [](const Tensor& a, const Tensor& b) { return minimum(a, b); }, nan_min),
      comparison("eq", [](const Tensor& a, const Tensor& b) { return a == b; }, std::equal_to<>()),
      comparison("ne", [](const Tensor& a, const Tensor& b) { return a != b; }, std::not_equal_to<>()),
      comparison("lt", [](const Tensor& a, const Tensor& b) { return a < b; }, std::less<>()),
      comparison("le", [](const Tensor& a, const Tensor& b) { return le(a, b); }, std::less_equal<>()),
      comparison("gt", [](const Tensor& a, const Tensor& b) { return a.gt(b); }, std::greater<>()),
      comparison("ge", [](const Tensor& a, const Tensor& b) { return a >= b; }, std::greater_equal<>()),
      logical("logical_and", [](const Tensor& a, const Tensor& b) { return a & b; }, std::logical_and<>()),
      logical("logical_or", [](const Tensor& a, const Tensor& b) { return logical_or(a, b); }, std::logical_or<>()),
      {"where", [](DType dt) {
         auto op = [](const Inputs& in) { return where(in[0], in[1], in[2]); };
         auto ref = [](const std::vector<Ref>& r) {
           // where(c, a, b) = c·a + (1-c)·b elementwise, broadcast over all three.
           Ref ca = zip(r[0], r[1], [](double c, double a) { return c != 0 ? a : 0; });
           Ref cb = zip(r[0], r[2], [](double c, double b) { return c != 0 ? 0 : b; });
           return zip(ca, cb, std::plus<>());
         };
         return std::vector<Sample>{
             {"same shape", {boolean({2, 3}, 1), input({2, 3}, dt, -1, 1, 2), input({2, 3}, dt, -1, 1, 3)}, op, ref},
             {"broadcast", {boolean({2, 1}, 4), input({3}, dt, -1, 1, 5), input({}, dt, -1, 1, 6)}, op, ref},
             {"empty", {boolean({0, 3}, 7), input({0, 3}, dt, -1, 1, 8), input({3}, dt, -1, 1, 9)}, op, ref},
             {"non-contiguous", {boolean({4, 3}, 10), noncontig({4, 3}, dt, -1, 1, 11), input({4, 3}, dt, -1, 1, 12)}, op, ref}};
       }},
  };
}

// --- reductions and composites ----------------------------------------------------------------

using ReduceFn = std::function<Tensor(const Tensor&, const Shape&, bool)>;
using ReduceRef = std::function<Ref(const Ref&, const Shape&, bool)>;

OpRow reduction(std::string name, ReduceFn fn, ReduceRef rf, bool allow_empty, Domain d = {}) {
  return {name, [=](DType dt) {
            std::vector<Sample> s;
            auto add = [&](std::string label, Tensor x, Shape dims, bool keep) {
              s.push_back({label, {x}, [fn, dims, keep](const Inputs& in) { return fn(in[0], dims, keep); },
                           [rf, dims, keep](const std::vector<Ref>& r) { return rf(r[0], dims, keep); }});
            };
            Tensor x = input({2, 3, 4}, dt, d.lo, d.hi);
            add("all", x, {}, false);
            add("dim 1", x, {1}, false);
            add("dims 0,2 keepdim", x, {0, 2}, true);
            add("dim -1 keepdim", x, {-1}, true);
            add("0-d", input({}, dt, d.lo, d.hi, 2), {}, false);
            add("non-contiguous dim 0", noncontig({5, 6}, dt, d.lo, d.hi, 3), {0}, false);
            add("long row", input({3, 40000}, dt, d.lo, d.hi, 4), {1}, false);
            add("long all", input({70000}, dt, d.lo, d.hi, 5), {}, false);
            if (allow_empty) add("empty dim", input({0, 3}, dt, d.lo, d.hi), {0}, false);
            return s;
          }};
}

int64_t count_of(const Ref& a, const Shape& dims) {
  if (dims.empty()) return a.numel();
  int64_t n = 1;
  for (auto d : dims) n *= a.shape[d < 0 ? d + static_cast<int64_t>(a.shape.size()) : d];
  return n;
}
Ref ref_sum(const Ref& a, const Shape& dims, bool keep) { return reduce(a, dims, keep, 0, std::plus<>()); }
Ref ref_mean(const Ref& a, const Shape& dims, bool keep) {
  double n = static_cast<double>(count_of(a, dims));
  return map(ref_sum(a, dims, keep), [n](double v) { return v / n; });
}
Ref ref_var(const Ref& a, const Shape& dims, bool keep, int64_t correction) {
  Ref m = ref_mean(a, dims, true);
  Ref sq = zip(a, m, [](double x, double mu) { return (x - mu) * (x - mu); });
  double n = static_cast<double>(count_of(a, dims) - correction);
  return map(ref_sum(sq, dims, keep), [n](double v) { return v / n; });
}
Ref ref_logsumexp(const Ref& a, const Shape& dims, bool keep) {
  Ref m = reduce(a, dims, true, -kInf, nan_max);
  Ref e = zip(a, m, [](double x, double mu) { return std::exp(x - mu); });
  Ref l = zip(reduce(e, dims, true, 0, std::plus<>()), m, [](double s, double mu) { return std::log(s) + mu; });
  if (!keep) l = reduce(l, dims, false, 0, std::plus<>());  // drop the size-1 dims
  return l;
}

OpRow with_no_gradient(OpRow row, std::vector<std::string> labels) {
  row.no_gradient = std::move(labels);
  return row;
}

std::vector<OpRow> reduce_rows() {
  auto arg_row = [](std::string name, bool is_max) {
    return OpRow{name, [=](DType dt) {
                   std::vector<Sample> s;
                   auto add = [&](std::string label, Tensor x, std::optional<int64_t> dim, bool keep) {
                     s.push_back({label, {x},
                                  [=](const Inputs& in) { return is_max ? in[0].argmax(dim, keep) : argmin(in[0], dim, keep); },
                                  [=](const std::vector<Ref>& r) { return arg_reduce(r[0], dim, keep, is_max); }, false});
                   };
                   Tensor x = input({3, 4, 5}, dt, -2, 2);
                   add("flattened", x, std::nullopt, false);
                   add("dim 1", x, 1, false);
                   add("dim -1 keepdim", x, -1, true);
                   add("non-contiguous dim 0", noncontig({4, 6}, dt, -1, 1, 2), 0, false);
                   add("ties and nan", tensor({1.0, 3.0, 3.0, kNaN, 3.0}).to(dt), 0, false);
                   add("long", input({50000}, dt, -1, 1, 3), std::nullopt, false);
                   return s;
                 }};
  };
  return {
      reduction("sum", [](const Tensor& x, const Shape& d, bool k) { return x.sum(d, k); }, ref_sum, true),
      reduction("prod", [](const Tensor& x, const Shape& d, bool k) { return prod(x, d, k); },
                [](const Ref& a, const Shape& d, bool k) { return reduce(a, d, k, 1, std::multiplies<>()); },
                true, {0.9, 1.1}),
      reduction("amax", [](const Tensor& x, const Shape& d, bool k) { return x.amax(d, k); },
                [](const Ref& a, const Shape& d, bool k) { return reduce(a, d, k, -kInf, nan_max); }, false),
      reduction("amin", [](const Tensor& x, const Shape& d, bool k) { return amin(x, d, k); },
                [](const Ref& a, const Shape& d, bool k) { return reduce(a, d, k, kInf, nan_min); }, false),
      arg_row("argmax", true),
      arg_row("argmin", false),
      reduction("mean", [](const Tensor& x, const Shape& d, bool k) { return x.mean(d, k); }, ref_mean, false),
      reduction("var", [](const Tensor& x, const Shape& d, bool k) { return x.var(d, 1, k); },
                [](const Ref& a, const Shape& d, bool k) { return ref_var(a, d, k, 1); }, false),
      with_no_gradient(
          reduction("std", [](const Tensor& x, const Shape& d, bool k) { return tg::std(x, d, 0, k); },
                    [](const Ref& a, const Shape& d, bool k) {
                      return map(ref_var(a, d, k, 0), [](double v) { return std::sqrt(v); });
                    }, false),
          {"0-d"}),  // the std of one element is √0: no derivative (PyTorch gives NaN too)
      reduction("norm", [](const Tensor& x, const Shape& d, bool k) { return x.norm(3, d, k); },
                [](const Ref& a, const Shape& d, bool k) {
                  Ref p = reduce(map(a, [](double v) { return std::pow(std::abs(v), 3); }), d, k, 0, std::plus<>());
                  return map(p, [](double v) { return std::cbrt(v); });
                }, true),
      reduction("logsumexp", [](const Tensor& x, const Shape& d, bool k) { return logsumexp(x, d, k); },
                ref_logsumexp, false, {-50, 50}),
      {"softmax", [](DType dt) {
         auto mk = [](int64_t dim, bool log_space) {
           return std::function<Ref(const std::vector<Ref>&)>([=](const std::vector<Ref>& r) {
             Ref lse = ref_logsumexp(r[0], {dim}, true);
             return zip(r[0], lse, [=](double x, double l) { return log_space ? x - l : std::exp(x - l); });
           });
         };
         return std::vector<Sample>{
             {"dim 1", {input({3, 5}, dt, -3, 3)}, [](const Inputs& in) { return softmax(in[0], 1); }, mk(1, false)},
             {"dim 0 non-contiguous", {noncontig({4, 3}, dt, -3, 3)}, [](const Inputs& in) { return in[0].softmax(0); }, mk(0, false)},
             {"large logits", {tensor({1000.0, 1000.0, -1000.0}).to(dt)}, [](const Inputs& in) { return softmax(in[0], 0); }, mk(0, false)},
             {"0-d", {input({}, dt, -1, 1)}, [](const Inputs& in) { return softmax(in[0], 0); }, mk(0, false)}};
       }},
      {"log_softmax", [](DType dt) {
         auto mk = [](int64_t dim) {
           return std::function<Ref(const std::vector<Ref>&)>([=](const std::vector<Ref>& r) {
             return zip(r[0], ref_logsumexp(r[0], {dim}, true), std::minus<>());
           });
         };
         return std::vector<Sample>{
             {"dim -1", {input({3, 5}, dt, -3, 3)}, [](const Inputs& in) { return log_softmax(in[0], -1); }, mk(-1)},
             {"large logits", {tensor({1000.0, 0.0, -1000.0}).to(dt)}, [](const Inputs& in) { return in[0].log_softmax(0); }, mk(0)}};
       }},
  };
}

// --- matmul, views, indexing, copies ------------------------------------------------------------

OpRow matmul_row() {
  return {"matmul", [](DType dt) {
            std::vector<Sample> s;
            auto op = [](const Inputs& in) { return matmul(in[0], in[1]); };
            auto ref = [](const std::vector<Ref>& r) { return matmul(r[0], r[1]); };
            auto add = [&](std::string label, Tensor a, Tensor b) { s.push_back({label, {a, b}, op, ref}); };
            add("2-D", input({2, 3}, dt, -1, 1, 1), input({3, 4}, dt, -1, 1, 2));
            add("1-D dot", input({5}, dt, -1, 1, 3), input({5}, dt, -1, 1, 4));
            add("vector-matrix (gemv)", input({7}, dt, -1, 1, 5), input({7, 4}, dt, -1, 1, 6));
            add("matrix-vector (gemv)", input({4, 7}, dt, -1, 1, 7), input({7}, dt, -1, 1, 8));
            add("row times matrix", input({1, 9}, dt, -1, 1, 9), input({9, 6}, dt, -1, 1, 10));
            add("batched with broadcast", input({2, 3, 4}, dt, -1, 1, 11), input({4, 5}, dt, -1, 1, 12));
            add("batch dims broadcast", input({2, 1, 2, 3}, dt, -1, 1, 13), input({3, 3, 2}, dt, -1, 1, 14));
            add("transposed operands", noncontig({5, 3}, dt, -1, 1, 15), noncontig({3, 4}, dt, -1, 1, 16));
            add("strided operand", input({4, 10}, dt, -1, 1, 17).slice(1, 0, 10, 2), input({5, 3}, dt, -1, 1, 18));
            add("k = 0", input({2, 0}, dt, -1, 1), input({0, 3}, dt, -1, 1));
            add("m = 0", input({0, 3}, dt, -1, 1), input({3, 2}, dt, -1, 1));
            add("larger", input({33, 65}, dt, -1, 1, 19), input({65, 17}, dt, -1, 1, 20));
            s.push_back({"mm", {input({3, 2}, dt, -1, 1, 21), input({2, 2}, dt, -1, 1, 22)},
                         [](const Inputs& in) { return mm(in[0], in[1]); }, ref});
            s.push_back({"bmm", {input({2, 3, 2}, dt, -1, 1, 23), input({2, 2, 4}, dt, -1, 1, 24)},
                         [](const Inputs& in) { return in[0].bmm(in[1]); }, ref});
            s.push_back({"dot", {input({6}, dt, -1, 1, 25), input({6}, dt, -1, 1, 26)},
                         [](const Inputs& in) { return dot(in[0], in[1]); }, ref});
            s.push_back({"outer", {input({3}, dt, -1, 1, 27), input({4}, dt, -1, 1, 28)},
                         [](const Inputs& in) { return outer(in[0], in[1]); },
                         [](const std::vector<Ref>& r) {
                           return matmul(Ref{r[0].v, {3, 1}}, Ref{r[1].v, {1, 4}});
                         }});
            return s;
          }, 1e-5, 1e-5};
}

// A view's reference: out[i] = in[source(i)], with source computed from the output index.
Sample view_sample(std::string label, Tensor x, std::function<Tensor(const Tensor&)> fn, Shape out_shape,
                   std::function<std::vector<int64_t>(const std::vector<int64_t>&)> source) {
  return {label, {x}, [fn](const Inputs& in) { return fn(in[0]); },
          [out_shape, source](const std::vector<Ref>& r) {
            Ref out{{}, out_shape};
            for (int64_t i = 0; i < numel_of(out_shape); ++i) {
              auto src = source(unravel(i, out_shape));
              int64_t flat = 0;
              for (size_t d = 0; d < src.size(); ++d) flat = flat * r[0].shape[d] + src[d];
              out.v.push_back(r[0].v[flat]);
            }
            return out;
          }};
}

std::vector<OpRow> view_rows() {
  using Idx = std::vector<int64_t>;
  // Reshape keeps row-major order: the reference maps flat index to flat index.
  auto reshape_sample = [](std::string label, Tensor x, Shape to) {
    return Sample{label, {x}, [to](const Inputs& in) { return in[0].reshape(to); },
                  [](const std::vector<Ref>& r) { return r[0]; }};
  };
  return {
      {"reshape", [=](DType dt) {
         auto fix = [](Sample s, Shape shape) {
           auto base = s.ref;
           s.ref = [base, shape](const std::vector<Ref>& r) { Ref o = base(r); o.shape = shape; return o; };
           return s;
         };
         return std::vector<Sample>{
             fix(reshape_sample("contiguous", input({2, 6}, dt, -1, 1), {3, 4}), {3, 4}),
             fix(reshape_sample("infer -1", input({2, 6}, dt, -1, 1), {-1, 2}), {6, 2}),
             fix(reshape_sample("non-contiguous (copies)", noncontig({3, 4}, dt, -1, 1), {12}), {12}),
             fix(reshape_sample("0-d to 1", input({}, dt, -1, 1), {1, 1}), {1, 1}),
             fix(reshape_sample("empty", input({0, 4}, dt, -1, 1), {4, 0}), {4, 0}),
             fix(Sample{"flatten", {input({2, 3, 4}, dt, -1, 1)}, [](const Inputs& in) { return in[0].flatten(1); },
                        [](const std::vector<Ref>& r) { return r[0]; }}, {2, 12}),
             fix(Sample{"unsqueeze", {input({3}, dt, -1, 1)}, [](const Inputs& in) { return in[0].unsqueeze(0); },
                        [](const std::vector<Ref>& r) { return r[0]; }}, {1, 3}),
             fix(Sample{"squeeze", {input({1, 3, 1}, dt, -1, 1)}, [](const Inputs& in) { return in[0].squeeze(); },
                        [](const std::vector<Ref>& r) { return r[0]; }}, {3}),
         };
       }},
      {"permute", [](DType dt) {
         return std::vector<Sample>{
             view_sample("3-D", input({2, 3, 4}, dt, -1, 1), [](const Tensor& x) { return x.permute({2, 0, 1}); },
                         {4, 2, 3}, [](const Idx& o) { return Idx{o[1], o[2], o[0]}; }),
             view_sample("t()", input({2, 3}, dt, -1, 1), [](const Tensor& x) { return x.t(); }, {3, 2},
                         [](const Idx& o) { return Idx{o[1], o[0]}; }),
             view_sample("transpose", input({2, 3, 4}, dt, -1, 1), [](const Tensor& x) { return x.transpose(0, 2); },
                         {4, 3, 2}, [](const Idx& o) { return Idx{o[2], o[1], o[0]}; })};
       }},
      {"expand", [](DType dt) {
         return std::vector<Sample>{
             view_sample("new leading dim", input({3}, dt, -1, 1), [](const Tensor& x) { return x.expand({2, 3}); },
                         {2, 3}, [](const Idx& o) { return Idx{o[1]}; }),
             view_sample("size-1 dim", input({3, 1}, dt, -1, 1), [](const Tensor& x) { return x.expand({-1, 4}); },
                         {3, 4}, [](const Idx& o) { return Idx{o[0], 0}; }),
             view_sample("0-d", input({}, dt, -1, 1), [](const Tensor& x) { return x.expand({2, 2}); }, {2, 2},
                         [](const Idx&) { return Idx{}; })};
       }},
      {"slice", [](DType dt) {
         return std::vector<Sample>{
             view_sample("step 2", input({7, 3}, dt, -1, 1), [](const Tensor& x) { return x.slice(0, 1, 7, 2); },
                         {3, 3}, [](const Idx& o) { return Idx{1 + 2 * o[0], o[1]}; }),
             view_sample("negative bounds", input({3, 6}, dt, -1, 1), [](const Tensor& x) { return x.slice(1, -4, -1); },
                         {3, 3}, [](const Idx& o) { return Idx{o[0], 2 + o[1]}; }),
             view_sample("narrow", input({3, 6}, dt, -1, 1), [](const Tensor& x) { return x.narrow(1, 2, 3); },
                         {3, 3}, [](const Idx& o) { return Idx{o[0], 2 + o[1]}; }),
             view_sample("split part", input({5, 2}, dt, -1, 1), [](const Tensor& x) { return x.split(2)[2]; },
                         {1, 2}, [](const Idx& o) { return Idx{4, o[1]}; }),
             view_sample("chunk part", input({2, 7}, dt, -1, 1), [](const Tensor& x) { return x.chunk(3, 1)[1]; },
                         {2, 3}, [](const Idx& o) { return Idx{o[0], 3 + o[1]}; }),
             view_sample("empty range", input({4}, dt, -1, 1), [](const Tensor& x) { return x.slice(0, 3, 2); },
                         {0}, [](const Idx& o) { return o; })};
       }},
      {"select", [](DType dt) {
         return std::vector<Sample>{
             view_sample("middle dim", input({2, 3, 4}, dt, -1, 1), [](const Tensor& x) { return x.select(1, 2); },
                         {2, 4}, [](const Idx& o) { return Idx{o[0], 2, o[1]}; }),
             view_sample("negative index", input({3, 2}, dt, -1, 1), [](const Tensor& x) { return x.select(0, -1); },
                         {2}, [](const Idx& o) { return Idx{2, o[0]}; }),
             view_sample("to 0-d", input({4}, dt, -1, 1), [](const Tensor& x) { return x.select(0, 1); }, {},
                         [](const Idx&) { return Idx{1}; })};
       }},
      {"diagonal", [](DType dt) {
         return std::vector<Sample>{
             view_sample("main", input({3, 4}, dt, -1, 1), [](const Tensor& x) { return x.diagonal(); }, {3},
                         [](const Idx& o) { return Idx{o[0], o[0]}; }),
             view_sample("offset 1", input({3, 4}, dt, -1, 1), [](const Tensor& x) { return x.diagonal(1); }, {3},
                         [](const Idx& o) { return Idx{o[0], o[0] + 1}; }),
             view_sample("offset -1, batched", input({2, 3, 3}, dt, -1, 1),
                         [](const Tensor& x) { return x.diagonal(-1, 1, 2); }, {2, 2},
                         [](const Idx& o) { return Idx{o[0], o[1] + 1, o[1]}; })};
       }},
  };
}

std::vector<OpRow> index_rows() {
  using Idx = std::vector<int64_t>;
  return {
      {"cat", [](DType dt) {
         auto cat_ref = [](int64_t dim) {
           return [dim](const std::vector<Ref>& r) {
             Shape shape = r[0].shape;
             shape[dim] = 0;
             for (auto& x : r) shape[dim] += x.shape[dim];
             Ref out{{}, shape};
             for (int64_t i = 0; i < numel_of(shape); ++i) {
               auto idx = unravel(i, shape);
               size_t part = 0;
               while (idx[dim] >= r[part].shape[dim]) idx[dim] -= r[part++].shape[dim];
               int64_t flat = 0;
               for (size_t d = 0; d < idx.size(); ++d) flat = flat * r[part].shape[d] + idx[d];
               out.v.push_back(r[part].v[flat]);
             }
             return out;
           };
         };
         return std::vector<Sample>{
             {"dim 0", {input({2, 3}, dt, -1, 1, 1), input({1, 3}, dt, -1, 1, 2)},
              [](const Inputs& in) { return cat({in[0], in[1]}, 0); }, cat_ref(0)},
             {"dim 1 with empty", {input({2, 2}, dt, -1, 1, 3), input({2, 0}, dt, -1, 1), noncontig({2, 3}, dt, -1, 1, 4)},
              [](const Inputs& in) { return cat({in[0], in[1], in[2]}, -1); }, cat_ref(1)},
             {"stack", {input({2, 3}, dt, -1, 1, 5), input({2, 3}, dt, -1, 1, 6)},
              [](const Inputs& in) { return stack({in[0], in[1]}, 1).reshape({2, 6}); }, [](const std::vector<Ref>& r) {
                Ref out{{}, {2, 6}};
                for (int i = 0; i < 2; ++i)
                  for (int k = 0; k < 2; ++k)
                    for (int j = 0; j < 3; ++j) out.v.push_back(r[k].v[i * 3 + j]);
                return out;
              }}};
       }},
      // Captured indices follow the input to its device (the CUDA tests run every sample there).
      {"index_select", [](DType dt) {
         Tensor idx = tensor<int64_t>({2, 0, 2, -1});
         return std::vector<Sample>{
             view_sample("dim 0", input({3, 4}, dt, -1, 1), [idx](const Tensor& x) { return x.index_select(0, idx.to(x.device())); },
                         {4, 4}, [](const Idx& o) { return Idx{Idx{2, 0, 2, 2}[o[0]], o[1]}; }),
             view_sample("dim 1, non-contiguous", noncontig({2, 3}, dt, -1, 1),
                         [idx](const Tensor& x) { return index_select(x, 1, idx.to(x.device())); }, {2, 4},
                         [](const Idx& o) { return Idx{o[0], Idx{2, 0, 2, 2}[o[1]]}; })};
       }},
      {"gather", [](DType dt) {
         Tensor idx = tensor<int64_t>({{0, 2}, {1, 1}, {2, 0}});
         return std::vector<Sample>{
             view_sample("dim 1", input({3, 3}, dt, -1, 1), [idx](const Tensor& x) { return gather(x, 1, idx.to(x.device())); },
                         {3, 2}, [](const Idx& o) { int64_t t[3][2] = {{0, 2}, {1, 1}, {2, 0}}; return Idx{o[0], t[o[0]][o[1]]}; }),
             view_sample("dim 0", input({3, 2}, dt, -1, 1), [idx](const Tensor& x) { return x.gather(0, idx.to(x.device())); },
                         {3, 2}, [](const Idx& o) { int64_t t[3][2] = {{0, 2}, {1, 1}, {2, 0}}; return Idx{t[o[0]][o[1]], o[1]}; })};
       }},
      {"scatter_add", [](DType dt) {
         Tensor idx = tensor<int64_t>({{0, 2}, {1, 1}, {0, 0}});
         auto ref = [](const std::vector<Ref>& r) {
           Ref out = r[0];  // 3x3 base; src 3x2 added at row idx[i][j], column j (dim 0)
           int64_t t[3][2] = {{0, 2}, {1, 1}, {0, 0}};
           for (int i = 0; i < 3; ++i)
             for (int j = 0; j < 2; ++j) out.v[t[i][j] * 3 + j] += r[1].v[i * 2 + j];
           return out;
         };
         return std::vector<Sample>{{"dim 0 with repeats", {input({3, 3}, dt, -1, 1, 1), input({3, 2}, dt, -1, 1, 2)},
                                     [idx](const Inputs& in) { return scatter_add(in[0], 0, idx.to(in[0].device()), in[1]); }, ref}};
       }},
      {"to_dtype", [](DType dt) {
         DType other = dt == kF32 ? kF64 : kF32;
         auto id = [](const std::vector<Ref>& r) { return r[0]; };
         return std::vector<Sample>{
             {"to other float", {input({2, 3}, dt, -1, 1)}, [other](const Inputs& in) { return in[0].to(other); }, id},
             {"to i64 truncates", {input({5}, dt, -9, 9)}, [](const Inputs& in) { return in[0].to(kI64); },
              [](const std::vector<Ref>& r) { return map(r[0], [](double v) { return std::trunc(v); }); }, false},
             {"to bool", {input({5}, dt, -1, 1).relu()}, [](const Inputs& in) { return in[0].to(kBool); },
              [](const std::vector<Ref>& r) { return map(r[0], [](double v) { return v != 0 ? 1.0 : 0.0; }); }, false},
             {"non-contiguous", {noncontig({3, 2}, dt, -1, 1)}, [other](const Inputs& in) { return in[0].to(other); }, id}};
       }},
      {"to_device", [](DType dt) {
         return std::vector<Sample>{{"to cpu", {input({2, 3}, dt, -1, 1)},
                                     [](const Inputs& in) { return in[0].to(kCPU); },
                                     [](const std::vector<Ref>& r) { return r[0]; }}};
       }},
      {"clone", [](DType dt) {
         auto id = [](const std::vector<Ref>& r) { return r[0]; };
         return std::vector<Sample>{
             {"contiguous", {input({2, 3}, dt, -1, 1)}, [](const Inputs& in) { return in[0].clone(); }, id},
             {"of a view", {noncontig({2, 3}, dt, -1, 1)}, [](const Inputs& in) { return in[0].contiguous(); }, id}};
       }},
  };
}

}  // namespace

const std::vector<OpRow>& op_table() {
  static const std::vector<OpRow> table = [] {
    std::vector<OpRow> t;
    for (auto rows : {unary_rows(), binary_rows(), reduce_rows(), std::vector<OpRow>{matmul_row()},
                      view_rows(), index_rows(), window_rows()})
      t.insert(t.end(), rows.begin(), rows.end());
    return t;
  }();
  return table;
}

}  // namespace tgtest
