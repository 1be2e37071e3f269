// gradcheck and gradgradcheck: tg::grad against central differences, in f64.
#pragma once

#include <tapegrad/tapegrad.h>

#include <functional>
#include <string>
#include <vector>

namespace tgtest {

using MultiFn = std::function<std::vector<tg::Tensor>(const std::vector<tg::Tensor>&)>;

struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-5;
  double rtol = 1e-3;
  // Up to this many input and output elements the whole Jacobian is compared; beyond it, random
  // projections uᵀJv (PyTorch's fast mode), which check every entry with one number.
  int64_t full_limit = 64;
};

// "" when the analytical gradients of f's floating outputs with respect to its floating inputs
// match central differences; otherwise a description of the first mismatch. Inputs are perturbed
// in place (through their own strides, so views keep their layout) and restored.
std::string gradcheck(const MultiFn& f, const std::vector<tg::Tensor>& inputs,
                      const GradcheckOptions& options = {});

// gradcheck of (inputs, v) -> grad(f(inputs), inputs, v, create_graph): second derivatives, and
// the bprops' own differentiability.
std::string gradgradcheck(const MultiFn& f, const std::vector<tg::Tensor>& inputs,
                          const GradcheckOptions& options = {});

}  // namespace tgtest
