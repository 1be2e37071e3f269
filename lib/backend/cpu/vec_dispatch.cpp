// Picks the vectorized kernel table for this CPU at run time.
#include <cstdlib>
#include <string>

#include "backend/cpu/vec_kernels.h"

namespace tg::cpu {
namespace baseline { extern const VecKernels kTable; }
namespace avx2 { extern const VecKernels kTable; }
namespace avx512 { extern const VecKernels kTable; }

std::vector<const VecKernels*> available_vec_kernels() {
  std::vector<const VecKernels*> out{&baseline::kTable};
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) out.push_back(&avx2::kTable);
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    out.push_back(&avx512::kTable);
  return out;
}

const VecKernels& vec_kernels() {
  static const VecKernels* chosen = [] {
    auto tables = available_vec_kernels();
    const VecKernels* best = tables.back();
    if (const char* want = std::getenv("TAPEGRAD_ISA")) {
      for (auto* t : tables)
        if (t->isa == want) best = t;
    }
    return best;
  }();
  return *chosen;
}

}  // namespace tg::cpu
