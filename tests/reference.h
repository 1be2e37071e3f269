// Plain reference arrays for the tests: f64 values in row-major order with a shape, and obviously
// correct (slow) loops for broadcasting, reductions and matmul, independent of the library's code.
#pragma once

#include <tapegrad/tapegrad.h>

#include <functional>
#include <vector>

namespace tgtest {

struct Ref {
  std::vector<double> v;
  tg::Shape shape;
  int64_t numel() const { return static_cast<int64_t>(v.size()); }
};

Ref to_ref(const tg::Tensor& t);
int64_t numel_of(const tg::Shape& s);
std::vector<int64_t> unravel(int64_t i, const tg::Shape& shape);
// Index into `shape` from an index of a (broadcast) larger shape, aligned at the right.
int64_t broadcast_index(const std::vector<int64_t>& idx, const tg::Shape& shape);
tg::Shape broadcast(const tg::Shape& a, const tg::Shape& b);

Ref map(const Ref& a, const std::function<double(double)>& f);
Ref zip(const Ref& a, const Ref& b, const std::function<double(double, double)>& f);
// Folds over the dims in `dims` (all when empty): init, then acc = f(acc, x).
Ref reduce(const Ref& a, const tg::Shape& dims, bool keepdim, double init,
           const std::function<double(double, double)>& f);
// Argmax/argmin along one dim (first occurrence; NaN wins), or over all elements.
Ref arg_reduce(const Ref& a, std::optional<int64_t> dim, bool keepdim, bool is_max);
Ref matmul(const Ref& a, const Ref& b);

// Are got and want equal in shape and close in value (NaNs where both have NaN)?
// Returns "" when they are, else a description of the first difference.
std::string compare(const Ref& got, const Ref& want, double rtol, double atol);

}  // namespace tgtest
