// Printing tensors, dtypes and devices, PyTorch-style: values with a shared format, elided past
// 1000 elements (3 at each edge), then dtype, shape and device.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <ostream>

#include "ops/ops_common.h"
#include "tapegrad/autograd.h"
#include "tapegrad/format.h"

namespace tg {
namespace {

constexpr int64_t kThreshold = 1000;
constexpr int64_t kEdge = 3;

struct Printer {
  std::vector<double> values;  // the shown elements, to choose one format for all
  bool floating = false;
  bool boolean = false;
  bool sci = false;
  int precision = 4;

  std::string fmt_value(double v) const {
    if (boolean) return v != 0 ? "true" : "false";
    if (!floating) return fmt::format("{}", static_cast<int64_t>(v));
    if (std::isnan(v)) return "nan";
    if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
    if (sci) return fmt::format("{:.{}e}", v, precision);
    return fmt::format("{:.{}f}", v, precision);
  }
};

// Recursively prints dims of `t` (an f64 copy on the CPU) starting at `dim`.
// With `collect` set, gathers the shown values instead of printing.
void print_rec(std::string& out, const Printer& p, const double* data, const Shape& shape,
               const Shape& strides, size_t dim, bool elide, size_t indent, size_t width,
               std::vector<double>* collect = nullptr) {
  if (dim == shape.size()) {
    if (collect) {
      collect->push_back(*data);
      return;
    }
    std::string s = p.fmt_value(*data);
    out += std::string(width > s.size() ? width - s.size() : 0, ' ') + s;
    return;
  }
  out += '[';
  int64_t n = shape[dim];
  for (int64_t i = 0; i < n; ++i) {
    if (elide && n > 2 * kEdge && i == kEdge) {
      out += "...";
      i = n - kEdge - 1;
      out += dim + 1 == shape.size() ? ", " : fmt::format(",\n{}", std::string(indent + 1, ' '));
      continue;
    }
    print_rec(out, p, data + i * strides[dim], shape, strides, dim + 1, elide, indent + 1, width,
              collect);
    if (i + 1 < n) {
      out += ',';
      if (dim + 1 == shape.size()) out += ' ';
      else out += std::string(shape.size() - dim - 1, '\n') + std::string(indent + 1, ' ');
    }
  }
  out += ']';
}

}  // namespace

std::string Tensor::str() const {
  if (!defined()) return "tensor(undefined)";
  NoGradGuard no_grad;  // reading values is not part of the tape
  Tensor host = to(kCPU).to(kF64).contiguous();
  bool elide = numel() > kThreshold;
  Printer p;
  p.floating = is_floating(dtype());
  p.boolean = dtype() == kBool;
  const double* data = numel() > 0 ? static_cast<const double*>(host.raw_data_ptr()) : nullptr;
  // Collect the shown values to choose fixed or scientific notation and the column width.
  std::vector<double> shown;
  if (numel() > 0) {
    std::string unused;
    print_rec(unused, p, data, host.shape(), host.strides(), 0, elide, 0, 0, &shown);
  }
  double max_abs = 0, min_abs = INFINITY;
  bool all_int = true;
  for (double v : shown) {
    if (!std::isfinite(v)) continue;
    max_abs = std::max(max_abs, std::abs(v));
    if (v != 0) min_abs = std::min(min_abs, std::abs(v));
    all_int &= v == std::floor(v);
  }
  if (p.floating) {
    p.sci = max_abs >= 1e8 || (min_abs < 1e-4 && min_abs > 0) || (max_abs / min_abs > 1e3 && min_abs < 1e-2);
    if (all_int && !p.sci) p.precision = 1;
  }
  size_t width = 0;
  for (double v : shown) width = std::max(width, p.fmt_value(v).size());
  std::string out = "tensor(";
  if (dim() == 0) {
    out += p.fmt_value(data[0]);
  } else {
    print_rec(out, p, data, host.shape(), host.strides(), 0, elide, 7, width);
  }
  out += fmt::format(", dtype={}, shape={}, device={}", dtype_name(dtype()), shape(), device().str());
  if (auto fn = grad_fn())
    out += fmt::format(", grad_fn=<{}>", fn->name());
  else if (requires_grad())
    out += ", requires_grad=true";
  out += ")";
  return out;
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << t.str(); }
std::ostream& operator<<(std::ostream& os, DType t) { return os << dtype_name(t); }
std::ostream& operator<<(std::ostream& os, const Device& d) { return os << d.str(); }

}  // namespace tg

fmt::format_context::iterator fmt::formatter<tg::Tensor>::format(const tg::Tensor& t,
                                                                 format_context& ctx) const {
  return fmt::format_to(ctx.out(), "{}", t.str());
}
fmt::format_context::iterator fmt::formatter<tg::DType>::format(tg::DType t,
                                                                format_context& ctx) const {
  return fmt::format_to(ctx.out(), "{}", tg::dtype_name(t));
}
fmt::format_context::iterator fmt::formatter<tg::Device>::format(const tg::Device& d,
                                                                 format_context& ctx) const {
  return fmt::format_to(ctx.out(), "{}", d.str());
}
