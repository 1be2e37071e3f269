// tg::scan: a step function over the leading dimension of sequences (Theano's scan), written on
// the public ops, so it is differentiable and traces as its unrolled loop.
#include "core/check.h"
#include "tapegrad/ops.h"
#include "tapegrad/trace.h"

namespace tg {

namespace {

Tensor run(const std::function<Tensor(const Tensor&, int64_t)>& step, const Tensor& init,
           int64_t n, Loc loc) {
  OpScope scope("scan", loc);
  TG_CHECK(init.defined(), "scan: init is an undefined tensor");
  TG_CHECK(n >= 0, "scan: the number of steps is {}, which is negative", n);
  std::vector<Tensor> carries;
  carries.reserve(static_cast<size_t>(n));
  Tensor carry = init;
  for (int64_t t = 0; t < n; ++t) {
    Tensor next = step(carry, t);
    TG_CHECK(next.defined() && next.shape() == init.shape() && next.dtype() == init.dtype(),
             "scan: step {} returned {}, and the carry is {}{} (the step must keep init's shape "
             "and dtype)", t,
             next.defined() ? fmt::format("{}{}", dtype_name(next.dtype()), next.shape())
                            : std::string("an undefined tensor"),
             dtype_name(init.dtype()), init.shape());
    carries.push_back(next);
    carry = std::move(next);
  }
  if (carries.empty()) {
    Shape s = init.shape();
    std::vector<int64_t> dims{0};
    for (int64_t d : s) dims.push_back(d);
    return zeros(Shape(dims), {.dtype = init.dtype(), .device = init.device()});
  }
  return stack(carries, 0);
}

}  // namespace

Tensor scan(const std::function<Tensor(const Tensor&, const std::vector<Tensor>&)>& step,
            const Tensor& init, const std::vector<Tensor>& sequences, Loc loc) {
  OpScope scope("scan", loc);
  TG_CHECK(!sequences.empty(), "scan: no sequences (use scan(step, init, n_steps))");
  for (size_t i = 0; i < sequences.size(); ++i) {
    TG_CHECK(sequences[i].defined() && sequences[i].dim() >= 1,
             "scan: sequence {} must have a leading (time) dimension", i);
    TG_CHECK(sequences[i].size(0) == sequences[0].size(0),
             "scan: sequence {} has {} steps and sequence 0 has {}", i, sequences[i].size(0),
             sequences[0].size(0));
  }
  return run(
      [&](const Tensor& carry, int64_t t) {
        std::vector<Tensor> xs;
        for (const Tensor& s : sequences) xs.push_back(s.select(0, t));
        return step(carry, xs);
      },
      init, sequences[0].size(0), loc);
}

Tensor scan(const std::function<Tensor(const Tensor&, const Tensor&)>& step, const Tensor& init,
            const Tensor& sequence, Loc loc) {
  return scan([&](const Tensor& c, const std::vector<Tensor>& xs) { return step(c, xs[0]); }, init,
              std::vector<Tensor>{sequence}, loc);
}

Tensor scan(const std::function<Tensor(const Tensor&)>& step, const Tensor& init, int64_t n_steps,
            Loc loc) {
  return run([&](const Tensor& c, int64_t) { return step(c); }, init, n_steps, loc);
}

}  // namespace tg
