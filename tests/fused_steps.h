// Helpers shared by the tests of fused groups (test_trace_fuse, test_jit, test_trace_capture,
// test_cuda): random step programs, and equality of values with NaN equal to NaN.
#pragma once

#include <tapegrad/tapegrad.h>

#include <cmath>
#include <random>
#include <vector>

#include "backend/backend.h"

namespace tgtest {

// Equal shapes, dtypes and values, NaN equal to NaN.
inline bool same(const tg::Tensor& a, const tg::Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  auto x = a.to(tg::kCPU).to_vector<double>(), y = b.to(tg::kCPU).to_vector<double>();
  for (size_t i = 0; i < x.size(); ++i)
    if (!(x[i] == y[i] || (std::isnan(x[i]) && std::isnan(y[i])))) return false;
  return true;
}

// A random step program of 1..max_steps steps of `dtype` over `ninputs` inputs and earlier
// values: each step unary (from `unary`) or binary (from `binary`), alike likely.
inline std::vector<tg::FusedStep> random_steps(std::mt19937& rng, int ninputs, int max_steps,
                                               const std::vector<tg::OpKind>& unary,
                                               const std::vector<tg::OpKind>& binary,
                                               tg::DType dtype = tg::kF32) {
  std::vector<tg::FusedStep> steps;
  int nsteps = 1 + static_cast<int>(rng() % static_cast<unsigned>(max_steps));
  for (int i = 0; i < nsteps; ++i) {
    auto pick = [&] {
      int r = static_cast<int>(rng() % static_cast<unsigned>(i + ninputs));
      return r < ninputs ? -r - 1 : r - ninputs;
    };
    tg::FusedStep s;
    s.dtype = dtype;
    if (rng() % 2) {
      s.kind = tg::FusedStep::Kind::Unary;
      s.op = unary[rng() % unary.size()];
      s.a = pick();
    } else {
      s.kind = tg::FusedStep::Kind::Binary;
      s.op = binary[rng() % binary.size()];
      s.a = pick();
      s.b = pick();
    }
    steps.push_back(s);
  }
  return steps;
}

// An input of a fused sum over `shape`, as a group meets them: contiguous, broadcast along the
// last dim (a row's max), or with the first and last dims swapped in memory; one draw of rng.
inline tg::Tensor random_sum_input(std::mt19937& rng, const tg::Shape& shape, tg::DType dtype,
                                   tg::Device device = tg::kCPU) {
  switch (rng() % 3) {
    case 0:
      return tg::randn(shape, {.dtype = dtype}).to(device);
    case 1: {
      tg::Shape lead = shape;
      lead.back() = 1;
      return tg::randn(lead, {.dtype = dtype}).to(device).expand(shape);
    }
    default: {
      tg::Shape swapped = shape;
      std::swap(swapped[0], swapped[swapped.size() - 1]);
      return tg::randn(swapped, {.dtype = dtype}).to(device).transpose(0, -1);
    }
  }
}

}  // namespace tgtest
