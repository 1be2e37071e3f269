// gradcheck and gradgradcheck (see gradcheck.h).
#include "gradcheck.h"

#include <cmath>
#include <sstream>

namespace tgtest {
using namespace tg;

namespace {

// Calls fn(k, p) for each element k (row-major) of t with p pointing at it.
template <class Fn>
void for_each_element(const Tensor& t, Fn fn) {
  double* base = static_cast<double*>(t.raw_data_ptr());
  std::vector<int64_t> idx(static_cast<size_t>(t.dim()), 0);
  for (int64_t k = 0; k < t.numel(); ++k) {
    int64_t off = 0;
    for (int64_t d = 0; d < t.dim(); ++d) off += idx[d] * t.strides()[d];
    fn(k, base + off);
    for (int64_t d = t.dim() - 1; d >= 0; --d) {
      if (++idx[d] < t.shape()[d]) break;
      idx[d] = 0;
    }
  }
}

std::vector<double> flat(const std::vector<Tensor>& ts) {
  std::vector<double> out;
  for (const auto& t : ts) {
    if (!t.defined()) continue;
    auto v = t.to(kF64).to_vector<double>();
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

// Deterministic values in [-1, 1).
Tensor noise(const Tensor& like, uint64_t& state) {
  std::vector<double> v(static_cast<size_t>(like.numel()));
  for (double& x : v) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    x = static_cast<double>(state >> 11) / 9007199254740992.0 * 2 - 1;
  }
  return tensor(v, like.shape());
}

bool close(double a, double n, const GradcheckOptions& o) {
  if (std::isnan(a) || std::isnan(n)) return std::isnan(a) && std::isnan(n);
  return std::abs(a - n) <= o.atol + o.rtol * std::abs(n);
}

struct Setup {
  std::vector<Tensor> inputs;  // leaves: floating ones require grad
  std::vector<size_t> diff;    // indices of the floating inputs
};

Setup prepare(const std::vector<Tensor>& inputs) {
  Setup s;
  for (size_t i = 0; i < inputs.size(); ++i) {
    Tensor x = inputs[i].detach();
    if (is_floating(x.dtype())) {
      x.requires_grad_();
      s.diff.push_back(i);
    }
    s.inputs.push_back(x);
  }
  return s;
}

// Floating outputs that depend on the inputs (others have zero derivative).
std::vector<Tensor> run(const MultiFn& f, const std::vector<Tensor>& in) { return f(in); }

// Analytical vᵀJ for each differentiable input (zeros where unused).
std::vector<Tensor> analytical(const std::vector<Tensor>& outs, const std::vector<Tensor>& v,
                               const Setup& s) {
  std::vector<Tensor> ys, gs;
  for (size_t o = 0; o < outs.size(); ++o)
    if (outs[o].defined() && outs[o].requires_grad()) ys.push_back(outs[o]), gs.push_back(v[o]);
  std::vector<Tensor> xs;
  for (size_t i : s.diff) xs.push_back(s.inputs[i]);
  std::vector<Tensor> result;
  if (ys.empty()) {
    for (auto& x : xs) result.push_back(zeros_like(x));
    return result;
  }
  result = grad(ys, xs, {.grad_outputs = gs, .retain_graph = true, .allow_unused = true});
  for (size_t k = 0; k < result.size(); ++k)
    if (!result[k].defined()) result[k] = zeros_like(xs[k]);
  return result;
}

std::string full_check(const MultiFn& f, const Setup& s, const std::vector<Tensor>& outs,
                       const GradcheckOptions& o) {
  // Numerical Jacobian, one input element at a time.
  std::vector<std::vector<double>> num;  // [input element][output element]
  for (size_t i : s.diff) {
    for_each_element(s.inputs[i], [&](int64_t, double* p) {
      double keep = *p;
      NoGradGuard no_grad;
      *p = keep + o.eps;
      auto plus = flat(run(f, s.inputs));
      *p = keep - o.eps;
      auto minus = flat(run(f, s.inputs));
      *p = keep;
      std::vector<double> col(plus.size());
      for (size_t j = 0; j < plus.size(); ++j) col[j] = (plus[j] - minus[j]) / (2 * o.eps);
      num.push_back(col);
    });
  }
  // Analytical, one output element at a time.
  size_t out_index = 0;
  for (size_t oi = 0; oi < outs.size(); ++oi) {
    if (!outs[oi].defined()) continue;
    for (int64_t j = 0; j < outs[oi].numel(); ++j, ++out_index) {
      std::vector<Tensor> v;
      for (size_t ok = 0; ok < outs.size(); ++ok) {
        Tensor z = zeros(outs[ok].shape(), {.dtype = kF64});
        if (ok == oi) z.reshape({-1}).select(0, j).fill_(1.0);
        v.push_back(z);
      }
      auto row = flat(analytical(outs, v, s));
      for (size_t k = 0; k < row.size(); ++k) {
        double n = num[k][out_index];
        if (!close(row[k], n, o)) {
          std::ostringstream m;
          m << "d output[" << out_index << "] / d input element " << k << ": analytical " << row[k]
            << ", numerical " << n;
          return m.str();
        }
      }
    }
  }
  return "";
}

std::string fast_check(const MultiFn& f, const Setup& s, const std::vector<Tensor>& outs,
                       const GradcheckOptions& o) {
  uint64_t state = 12345;
  std::vector<Tensor> u, v;
  for (size_t i : s.diff) u.push_back(noise(s.inputs[i], state));
  for (const auto& y : outs) v.push_back(y.defined() ? noise(y, state) : Tensor());
  // Numerical: d/dt of vᵀ f(x + t u) at 0.
  std::vector<std::vector<double>> keep;
  auto shift = [&](double t) {
    for (size_t k = 0; k < s.diff.size(); ++k) {
      auto uk = u[k].to_vector<double>();
      size_t n = 0;
      for_each_element(s.inputs[s.diff[k]], [&](int64_t e, double* p) {
        if (keep.size() <= k) keep.resize(k + 1);
        if (keep[k].size() <= static_cast<size_t>(e)) keep[k].push_back(*p);
        *p = keep[k][e] + t * uk[e];
        ++n;
      });
    }
  };
  auto project = [&](const std::vector<Tensor>& ys) {
    double acc = 0;
    for (size_t k = 0; k < ys.size(); ++k) {
      if (!ys[k].defined()) continue;
      auto a = ys[k].to(kF64).to_vector<double>(), b = v[k].to_vector<double>();
      for (size_t e = 0; e < a.size(); ++e) acc += a[e] * b[e];
    }
    return acc;
  };
  double numerical;
  {
    NoGradGuard no_grad;
    shift(o.eps);
    double plus = project(run(f, s.inputs));
    shift(-o.eps);
    double minus = project(run(f, s.inputs));
    shift(0);
    numerical = (plus - minus) / (2 * o.eps);
  }
  auto g = analytical(outs, v, s);
  double a = 0;
  for (size_t k = 0; k < g.size(); ++k) {
    auto gv = g[k].to_vector<double>(), uv = u[k].to_vector<double>();
    for (size_t e = 0; e < gv.size(); ++e) a += gv[e] * uv[e];
  }
  if (!close(a, numerical, o)) {
    std::ostringstream m;
    m << "random projection uᵀJv: analytical " << a << ", numerical " << numerical;
    return m.str();
  }
  return "";
}

}  // namespace

std::string gradcheck(const MultiFn& f, const std::vector<Tensor>& inputs,
                      const GradcheckOptions& options) {
  Setup s = prepare(inputs);
  if (s.diff.empty()) return "";
  std::vector<Tensor> outs = run(f, s.inputs);
  int64_t n_in = 0, n_out = 0;
  for (size_t i : s.diff) n_in += s.inputs[i].numel();
  for (auto& y : outs) {
    if (!y.defined()) continue;
    if (y.dtype() != kF64) return "output is not f64: gradcheck needs f64 outputs";
    n_out += y.numel();
  }
  if (n_in == 0 || n_out == 0) return "";
  if (n_in <= options.full_limit && n_out <= options.full_limit)
    return full_check(f, s, outs, options);
  return fast_check(f, s, outs, options);
}

std::string gradgradcheck(const MultiFn& f, const std::vector<Tensor>& inputs,
                          const GradcheckOptions& options) {
  // The gradient seeds become inputs too, so d(grad)/d(seed) is checked as well.
  std::vector<Tensor> outs;
  {
    NoGradGuard no_grad;
    outs = f(inputs);
  }
  uint64_t state = 777;
  std::vector<Tensor> all = inputs;
  size_t n_inputs = inputs.size();
  for (auto& y : outs) all.push_back(noise(y, state));
  MultiFn g = [f, n_inputs](const std::vector<Tensor>& in) {
    EnableGradGuard grad_mode;  // its values are gradients, also while the check perturbs inputs
    std::vector<Tensor> xs(in.begin(), in.begin() + static_cast<std::ptrdiff_t>(n_inputs));
    std::vector<Tensor> vs(in.begin() + static_cast<std::ptrdiff_t>(n_inputs), in.end());
    auto ys = f(xs);
    std::vector<Tensor> ry, rv, rx;
    for (size_t k = 0; k < ys.size(); ++k)
      if (ys[k].requires_grad()) ry.push_back(ys[k]), rv.push_back(vs[k]);
    for (auto& x : xs)
      if (x.requires_grad()) rx.push_back(x);
    std::vector<Tensor> gs;
    if (!ry.empty() && !rx.empty())
      gs = grad(ry, rx, {.grad_outputs = rv, .create_graph = true, .allow_unused = true});
    else
      gs.resize(rx.size());
    for (size_t k = 0; k < gs.size(); ++k)
      if (!gs[k].defined()) gs[k] = zeros_like(rx[k]);
    return gs;
  };
  return gradcheck(g, all, options);
}

}  // namespace tgtest
