// Drives the op table: every sample of every op, forward against its reference, in f32 and f64.
#include <doctest/doctest.h>

#include <algorithm>
#include <set>

#include "gradcheck.h"
#include "ops/op_registry.h"
#include "op_table.h"

using namespace tgtest;

TEST_CASE("every op in op_list.def has a row in the op table") {
  std::set<std::string> rows;
  for (const auto& row : op_table()) {
    CHECK_MESSAGE(rows.insert(row.op).second, "duplicate row for " << row.op);
  }
  for (const auto& info : tg::all_ops()) {
    CHECK_MESSAGE(rows.count(std::string(info.name)) == 1, "op '" << info.name << "' has no row in tests/op_table.cpp");
  }
  for (const auto& name : rows) {
    bool known = false;
    for (const auto& info : tg::all_ops()) known |= info.name == name;
    CHECK_MESSAGE(known, "row '" << name << "' names no op of op_list.def");
  }
}

TEST_CASE("forward of every op matches its reference, f32 and f64") {
  int checked = 0;
  for (const auto& row : op_table()) {
    for (tg::DType dt : {tg::kF32, tg::kF64}) {
      double rtol = dt == tg::kF32 ? row.rtol_f32 : row.rtol_f64;
      double atol = dt == tg::kF32 ? row.atol_f32 : row.atol_f64;
      for (const auto& s : row.samples(dt)) {
        CAPTURE(row.op);
        CAPTURE(s.label);
        CAPTURE(tg::dtype_name(dt));
        std::vector<Ref> refs;
        // The reference sees the inputs as the op does (after rounding to dt).
        for (const auto& t : s.inputs) refs.push_back(to_ref(t));
        tg::Tensor got;
        REQUIRE_NOTHROW(got = s.op(s.inputs));
        Ref want = s.ref(refs);
        if (got.dtype() == tg::kF32)  // what an exact f32 op gives: the f64 result rounded
          for (double& v : want.v) v = static_cast<float>(v);
        std::string diff = compare(to_ref(got), want, rtol, atol);
        CHECK_MESSAGE(diff.empty(), row.op << " [" << s.label << ", " << tg::dtype_name(dt) << "]: " << diff);
        ++checked;
      }
    }
  }
  CHECK(checked > 300);
}

TEST_CASE("ops keep floating dtypes: f32 in gives f32 out, f64 gives f64") {
  for (const auto& row : op_table()) {
    for (tg::DType dt : {tg::kF32, tg::kF64}) {
      for (const auto& s : row.samples(dt)) {
        if (!s.differentiable || row.op == "to_dtype") continue;
        CAPTURE(row.op);
        CAPTURE(s.label);
        CHECK(s.op(s.inputs).dtype() == dt);
      }
    }
  }
}

// --- gradients: every differentiable sample of every row, in f64 ---------------------------------


namespace {

// A sample's call as a function of all its inputs (only floating ones are differentiated).
MultiFn as_fn(const Sample& s) {
  return [op = s.op](const std::vector<tg::Tensor>& in) { return std::vector<tg::Tensor>{op(in)}; };
}

// Samples whose gradient is checked: differentiable, with an f64 output.
template <class Check> int check_gradients(const char* what, Check check) {
  int checked = 0;
  for (const auto& row : op_table()) {
    for (const auto& s : row.samples(tg::kF64)) {
      if (!s.differentiable) continue;
      if (std::find(row.no_gradient.begin(), row.no_gradient.end(), s.label) != row.no_gradient.end())
        continue;
      tg::Tensor out;
      {
        tg::NoGradGuard no_grad;
        out = s.op(s.inputs);
      }
      if (out.dtype() != tg::kF64) continue;  // casts to f32: see the to_dtype test in test_autograd
      CAPTURE(row.op);
      CAPTURE(s.label);
      std::string err = check(as_fn(s), s.inputs);
      CHECK_MESSAGE(err.empty(), std::string(what) << " of " << row.op << " [" << s.label << "]: " << err);
      ++checked;
    }
  }
  return checked;
}

}  // namespace

TEST_CASE("gradcheck: every differentiable op, every sample, f64 central differences") {
  int n = check_gradients("gradcheck", [](const MultiFn& f, const Inputs& in) { return gradcheck(f, in); });
  CHECK(n > 150);
}

TEST_CASE("gradgradcheck: every differentiable op, every sample") {
  int n = check_gradients("gradgradcheck",
                          [](const MultiFn& f, const Inputs& in) { return gradgradcheck(f, in); });
  CHECK(n > 150);
}

TEST_CASE("every op with a floating output either has a bprop or is composite") {
  for (const auto& info : tg::all_ops()) {
    bool composite = info.family == tg::OpFamily::Composite;
    bool non_diff = info.name == "sign" ? false
                    : info.kind == tg::OpKind::LogicalNot || info.kind == tg::OpKind::Argmax ||
                          info.kind == tg::OpKind::Argmin || info.family == tg::OpFamily::Binary;
    if (info.family == tg::OpFamily::Binary) {
      std::string n(info.name);
      non_diff = n == "eq" || n == "ne" || n == "lt" || n == "le" || n == "gt" || n == "ge" ||
                 n == "logical_and" || n == "logical_or";
    }
    CAPTURE(info.name);
    if (composite && info.bprop == nullptr) continue;  // differentiates through its primitives
    CHECK_MESSAGE((info.bprop != nullptr) != non_diff,
                  "op '" << info.name << "': bprop registered = " << (info.bprop != nullptr));
  }
}
