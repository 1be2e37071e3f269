// The op table: one row per op of lib/ops/op_list.def, with sample inputs and a reference.
//
// How to add an op: add its row in op_table.cpp, next to its family. A row names the op (as in
// op_list.def) and gives, per dtype, samples: inputs (include broadcast, 0-d, empty and
// non-contiguous cases), the call under test, and a reference computed with the plain loops of
// reference.h. test_op_table.cpp checks every sample of every row, and fails for an op without a row.
// The autograd issue adds gradcheck and gradgradcheck over the same samples.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "reference.h"

namespace tgtest {

using Inputs = std::vector<tg::Tensor>;

struct Sample {
  std::string label;
  Inputs inputs;
  std::function<tg::Tensor(const Inputs&)> op;     // the call under test
  std::function<Ref(const std::vector<Ref>&)> ref;  // what it should give
  bool differentiable = true;                        // inputs[0..] in floating dtype
};

struct OpRow {
  std::string op;                                  // name in op_list.def
  std::function<std::vector<Sample>(tg::DType)> samples;
  double rtol_f32 = 1e-5, atol_f32 = 1e-5;
  double rtol_f64 = 1e-10, atol_f64 = 1e-10;
  // Samples (by label) at a point where the op has no derivative, left out of gradcheck.
  std::vector<std::string> no_gradient = {};
};

const std::vector<OpRow>& op_table();

// Deterministic pseudo-random values in [lo, hi), independent of the library's RNG.
tg::Tensor input(const tg::Shape& shape, tg::DType dt, double lo, double hi, int seed = 1);
// Same values, but a non-contiguous view: built transposed, then transposed back.
tg::Tensor noncontig(const tg::Shape& shape, tg::DType dt, double lo, double hi, int seed = 1);

// The rows of one family, kept in their own file (op_table_window.cpp).
std::vector<OpRow> window_rows();

}  // namespace tgtest
