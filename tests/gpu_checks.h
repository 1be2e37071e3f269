// What the CUDA test files share: whether a GPU is here (else the case says why and skips), and
// comparisons of a GPU's result with the CPU's.
#pragma once

#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <cmath>
#include <cstring>
#include <string>

namespace tgtest {

inline bool have_gpu() {
  if (tg::cuda::is_available()) return true;
  // A std::string: doctest prints a bare const char* from an expression as a pointer.
  std::string why = tg::cuda::is_built()
                        ? "built with CUDA, but no GPU is present: CUDA case skipped"
                        : "built without CUDA: CUDA case skipped";
  MESSAGE(why);
  return false;
}

// The same shape and dtype, and each element within tol * (1 + |want|) (NaN matches NaN), on
// whatever devices; the first element that is not is named.
inline bool close(const tg::Tensor& got, const tg::Tensor& want, double tol) {
  if (got.shape() != want.shape() || got.dtype() != want.dtype()) return false;
  auto a = got.to(tg::kCPU).to_vector<double>(), b = want.to(tg::kCPU).to_vector<double>();
  for (size_t i = 0; i < a.size(); ++i) {
    if ((std::isnan(a[i]) && std::isnan(b[i])) || a[i] == b[i]) continue;
    if (!(std::abs(a[i] - b[i]) <= tol * (1 + std::abs(b[i])))) {
      MESSAGE("element " << i << ": " << a[i] << " against " << b[i]);
      return false;
    }
  }
  return true;
}

// The same bits (NaN included), element by element.
inline bool same_bits(const tg::Tensor& a, const tg::Tensor& b) {
  auto x = a.to(tg::kCPU).to_vector<double>(), y = b.to(tg::kCPU).to_vector<double>();
  return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(double)) == 0;
}

}  // namespace tgtest
