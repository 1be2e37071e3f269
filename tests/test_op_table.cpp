// Drives the op table: every sample of every op, forward against its reference, in f32 and f64.
#include <doctest/doctest.h>

#include <set>

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
