// OpAttrs, apart from backend.h so that CUDA device code (lib/backend/cuda/kernels.cu), which
// cannot include the host headers, shares the scalar definitions of scalar_math.h.
#pragma once

namespace tg {

// Scalar attributes of an op: the exponent of PowScalar, the bounds of Clamp (±inf when absent).
struct OpAttrs {
  double a = 0;
  double b = 0;
};

}  // namespace tg
