// Reference loops for the tests (see reference.h).
#include "reference.h"

#include <cmath>
#include <sstream>

#include <fmt/ranges.h>

namespace tgtest {

Ref to_ref(const tg::Tensor& t) { return {t.to(tg::kF64).to_vector<double>(), t.shape()}; }

int64_t numel_of(const tg::Shape& s) {
  int64_t n = 1;
  for (auto x : s) n *= x;
  return n;
}

std::vector<int64_t> unravel(int64_t i, const tg::Shape& shape) {
  std::vector<int64_t> idx(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    idx[d] = i % shape[d];
    i /= shape[d];
  }
  return idx;
}

int64_t broadcast_index(const std::vector<int64_t>& idx, const tg::Shape& shape) {
  int64_t flat = 0;
  size_t lead = idx.size() - shape.size();
  for (size_t d = 0; d < shape.size(); ++d)
    flat = flat * shape[d] + (shape[d] == 1 ? 0 : idx[lead + d]);
  return flat;
}

tg::Shape broadcast(const tg::Shape& a, const tg::Shape& b) {
  size_t n = std::max(a.size(), b.size());
  tg::Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t sa = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t sb = i < n - b.size() ? 1 : b[i - (n - b.size())];
    out[i] = sa == 1 ? sb : sa;
  }
  return out;
}

Ref map(const Ref& a, const std::function<double(double)>& f) {
  Ref out{a.v, a.shape};
  for (double& x : out.v) x = f(x);
  return out;
}

Ref zip(const Ref& a, const Ref& b, const std::function<double(double, double)>& f) {
  Ref out;
  out.shape = broadcast(a.shape, b.shape);
  out.v.resize(static_cast<size_t>(numel_of(out.shape)));
  for (int64_t i = 0; i < out.numel(); ++i) {
    auto idx = unravel(i, out.shape);
    out.v[i] = f(a.v[broadcast_index(idx, a.shape)], b.v[broadcast_index(idx, b.shape)]);
  }
  return out;
}

Ref reduce(const Ref& a, const tg::Shape& dims, bool keepdim, double init,
           const std::function<double(double, double)>& f) {
  size_t nd = a.shape.size();
  std::vector<bool> red(nd, dims.empty());
  for (auto d : dims)
    if (nd > 0) red[d < 0 ? d + nd : d] = true;  // a 0-d tensor reduces over "dim 0" to itself
  tg::Shape kshape;  // keepdim shape
  for (size_t d = 0; d < nd; ++d) kshape.push_back(red[d] ? 1 : a.shape[d]);
  Ref out;
  out.v.assign(static_cast<size_t>(numel_of(kshape)), init);
  for (int64_t i = 0; i < a.numel(); ++i) {
    auto idx = unravel(i, a.shape);
    for (size_t d = 0; d < nd; ++d)
      if (red[d]) idx[d] = 0;
    int64_t o = 0;
    for (size_t d = 0; d < nd; ++d) o = o * kshape[d] + idx[d];
    out.v[o] = f(out.v[o], a.v[i]);
  }
  for (size_t d = 0; d < nd; ++d)
    if (!red[d] || keepdim) out.shape.push_back(kshape[d]);
  return out;
}

Ref arg_reduce(const Ref& a, std::optional<int64_t> dim, bool keepdim, bool is_max) {
  auto better = [&](double x, double best) {
    if (std::isnan(best)) return false;
    if (std::isnan(x)) return true;
    return is_max ? x > best : x < best;
  };
  if (!dim) {
    int64_t bi = 0;
    for (int64_t i = 1; i < a.numel(); ++i)
      if (better(a.v[i], a.v[bi])) bi = i;
    Ref out{{static_cast<double>(bi)}, {}};
    if (keepdim) out.shape.assign(a.shape.size(), 1);
    return out;
  }
  size_t nd = a.shape.size();
  size_t d = static_cast<size_t>(*dim < 0 ? *dim + static_cast<int64_t>(nd) : *dim);
  tg::Shape kshape = a.shape;
  kshape[d] = 1;
  Ref out;
  out.v.assign(static_cast<size_t>(numel_of(kshape)), 0);
  std::vector<double> best(out.v.size(), 0);
  std::vector<bool> seen(out.v.size(), false);
  for (int64_t i = 0; i < a.numel(); ++i) {
    auto idx = unravel(i, a.shape);
    int64_t pos = idx[d];
    idx[d] = 0;
    int64_t o = 0;
    for (size_t k = 0; k < nd; ++k) o = o * kshape[k] + idx[k];
    if (!seen[o] || better(a.v[i], best[o])) {
      seen[o] = true;
      best[o] = a.v[i];
      out.v[o] = static_cast<double>(pos);
    }
  }
  for (size_t k = 0; k < nd; ++k)
    if (k != d || keepdim) out.shape.push_back(kshape[k]);
  return out;
}

Ref matmul(const Ref& a, const Ref& b) {
  // Promote 1-D operands, broadcast batch dims, then triple loops.
  tg::Shape as = a.shape, bs = b.shape;
  if (as.size() == 1) as.insert(as.begin(), 1);
  if (bs.size() == 1) bs.push_back(1);
  int64_t m = as[as.size() - 2], k = as.back(), n = bs.back();
  tg::Shape ab(as.begin(), as.end() - 2), bb(bs.begin(), bs.end() - 2);
  tg::Shape batch = broadcast(ab, bb);
  Ref out;
  int64_t nb = numel_of(batch);
  out.v.assign(static_cast<size_t>(nb * m * n), 0);
  for (int64_t bi = 0; bi < nb; ++bi) {
    auto idx = unravel(bi, batch);
    int64_t ia = broadcast_index(idx, ab), ib = broadcast_index(idx, bb);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0;
        for (int64_t p = 0; p < k; ++p) acc += a.v[ia * m * k + i * k + p] * b.v[ib * k * n + p * n + j];
        out.v[bi * m * n + i * n + j] = acc;
      }
  }
  out.shape = batch;
  if (a.shape.size() > 1) out.shape.push_back(m);
  if (b.shape.size() > 1) out.shape.push_back(n);
  return out;
}

std::string compare(const Ref& got, const Ref& want, double rtol, double atol) {
  std::ostringstream os;
  if (got.shape != want.shape) {
    os << "shape " << fmt::format("{}", got.shape) << " != expected " << fmt::format("{}", want.shape);
    return os.str();
  }
  for (size_t i = 0; i < got.v.size(); ++i) {
    double g = got.v[i], w = want.v[i];
    if (std::isnan(w) && std::isnan(g)) continue;
    if (std::isinf(w) && g == w) continue;
    if (!(std::abs(g - w) <= atol + rtol * std::abs(w))) {
      os << "element " << i << ": got " << g << ", expected " << w;
      return os.str();
    }
  }
  return "";
}

}  // namespace tgtest
