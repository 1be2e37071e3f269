// Printing: `std::cout << t` and `fmt::format("{}", t)` show values (elided past 1000 elements, as
// PyTorch does), then dtype, shape and device.
#pragma once

#include <fmt/core.h>

#include <iosfwd>

#include "tapegrad/tensor.h"

namespace tg {
std::ostream& operator<<(std::ostream& os, const Tensor& t);
std::ostream& operator<<(std::ostream& os, DType t);
std::ostream& operator<<(std::ostream& os, const Device& d);
}  // namespace tg

template <>
struct fmt::formatter<tg::Tensor> {
  constexpr auto parse(format_parse_context& ctx) { return ctx.begin(); }
  format_context::iterator format(const tg::Tensor& t, format_context& ctx) const;
};
template <>
struct fmt::formatter<tg::DType> {
  constexpr auto parse(format_parse_context& ctx) { return ctx.begin(); }
  format_context::iterator format(tg::DType t, format_context& ctx) const;
};
template <>
struct fmt::formatter<tg::Device> {
  constexpr auto parse(format_parse_context& ctx) { return ctx.begin(); }
  format_context::iterator format(const tg::Device& d, format_context& ctx) const;
};
template <>
struct fmt::formatter<tg::cuda> : fmt::formatter<tg::Device> {};

