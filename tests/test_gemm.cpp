// Matrix products below the public matmul: the unpacked f32 kernels (Note [Skinny products]) on
// every ISA this CPU runs, in each layout they take, against sums in f64; and the backend's
// matmul_update (Note [Matmul updates]) against its reference default.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <cmath>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/vec_kernels.h"
#include "core/tensor_impl.h"

using namespace tg;

namespace {

struct Case {
  int64_t m, k, n;
};

// c = alpha·a·b + beta·c in f64, with a and b read through element strides.
std::vector<double> reference(const Case& s, double alpha, const std::vector<float>& a, int64_t ars,
                              int64_t acs, const std::vector<float>& b, int64_t brs, int64_t bcs,
                              double beta, const std::vector<float>& c, int64_t ldc) {
  std::vector<double> out(c.begin(), c.end());
  for (int64_t i = 0; i < s.m; ++i)
    for (int64_t j = 0; j < s.n; ++j) {
      double sum = 0;
      for (int64_t p = 0; p < s.k; ++p) sum += double(a[i * ars + p * acs]) * b[p * brs + j * bcs];
      double& o = out[i * ldc + j];
      o = alpha * sum + (beta == 0 ? 0.0 : beta * o);
    }
  return out;
}

}  // namespace

TEST_CASE("unpacked f32 products match f64 sums in every layout, on every ISA") {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1, 1);
  const Case cases[] = {{1, 1, 1},   {1, 784, 500}, {3, 5, 17},   {10, 1000, 33}, {17, 3, 129},
                        {8, 16, 16}, {9, 31, 300},  {60, 70, 15}, {784, 1, 500},  {130, 10, 257},
                        // 9 to 12 rows are one group; updates walk several panels last first
                        {10, 40, 300}, {11, 5, 129}, {12, 7, 260}, {784, 10, 500},
                        // short dot products (a·bᵀ with k <= 16) copy b row-major first; few
                        // rows by few columns (c 10×10) stream b's rows under a lane mask
                        {10, 10, 500}, {1, 16, 17}, {10, 500, 10}, {16, 33, 2}};
  for (const auto* table : cpu::available_vec_kernels()) {
    for (const Case& s : cases) {
      CAPTURE(table->isa);
      CAPTURE(s.m);
      CAPTURE(s.k);
      CAPTURE(s.n);
      std::vector<float> a(static_cast<size_t>(s.m * s.k)), b(static_cast<size_t>(s.k * s.n));
      for (float& v : a) v = u(rng);
      for (float& v : b) v = u(rng);
      const int64_t ldc = s.n + 3;  // rows of c at a stride, the padding left alone
      // Layouts: a row-major or transposed (a weight gradient's xᵀ); b row-major, or b's
      // columns contiguous (x·Wᵀ, which takes a row-major a).
      struct Layout {
        const char* name;
        int64_t ars, acs, brs, bcs;
      };
      const Layout layouts[] = {
          {"a·b", s.k, 1, s.n, 1}, {"aᵀ·b", 1, s.m, s.n, 1}, {"a·bᵀ", s.k, 1, 1, s.k}};
      for (const Layout& l : layouts) {
        for (auto [alpha, beta] : {std::pair{1.0f, 0.0f}, {-0.01f, 1.0f}, {2.0f, 0.5f}}) {
          CAPTURE(l.name);
          CAPTURE(alpha);
          CAPTURE(beta);
          std::vector<float> c(static_cast<size_t>(s.m * ldc));
          for (float& v : c) v = u(rng);
          // beta 0 must not read c: a NaN there stays out of the result.
          if (beta == 0) c[0] = NAN;
          std::vector<double> want =
              reference(s, alpha, a, l.ars, l.acs, b, l.brs, l.bcs, beta, c, ldc);
          table->gemm_skinny_f32(s.m, s.n, s.k, alpha, a.data(), l.ars, l.acs, b.data(), l.brs,
                                 l.bcs, beta, c.data(), ldc);
          double worst = 0;
          bool padding_kept = true;
          for (int64_t i = 0; i < s.m; ++i) {
            for (int64_t j = 0; j < s.n; ++j) {
              double w = want[i * ldc + j], g = c[i * ldc + j];
              worst = std::max(worst, std::isnan(g) ? INFINITY : std::abs(g - w));
            }
            for (int64_t j = s.n; j < ldc; ++j)
              padding_kept =
                  padding_kept && c[i * ldc + j] == static_cast<float>(want[i * ldc + j]);
          }
          CHECK(worst <= 1e-5 * (1 + std::sqrt(double(s.k))));
          CHECK(padding_kept);
        }
      }
    }
  }
}

TEST_CASE("matmul uses the unpacked kernels for skinny shapes and agrees with f64 matmul") {
  // Through the public op: the shapes of small batches, forward and backward.
  // {500, 10, 10} and {300, 16, 15}: a narrow layer's weight gradient xᵀ·δ (few columns of c,
  // a short inner dimension, a's columns contiguous), which BLAS keeps.
  // {10, 500, 10} and {10, 10, 500}: a batch of 10 through a 10-wide layer, forward (ours, c
  // narrower than a vector) and back (δ·Wᵀ, short dot products, b copied row-major).
  for (auto [m, k, n] : {std::tuple{1, 784, 500}, {10, 1000, 1000}, {784, 10, 500}, {60, 64, 50},
                         {500, 10, 10}, {300, 16, 15}, {16, 3, 1}, {10, 500, 10}, {10, 10, 500}}) {
    CAPTURE(m);
    CAPTURE(k);
    CAPTURE(n);
    Tensor a = randn({m, k}), b = randn({k, n}), wt = randn({n, k});
    auto err = [](const Tensor& got, const Tensor& want) {
      return (got.to(kF64) - want).abs().amax().item<double>();
    };
    CHECK(err(a.matmul(b), a.to(kF64).matmul(b.to(kF64))) < 1e-3);
    CHECK(err(a.matmul(wt.t()), a.to(kF64).matmul(wt.to(kF64).t())) < 1e-3);
    Tensor at = randn({k, m});
    CHECK(err(at.t().matmul(b), at.to(kF64).t().matmul(b.to(kF64))) < 1e-3);
  }
}

TEST_CASE("backend matmul_update matches the reference default, with and without a scale") {
  Backend& cpu = cpu_backend();
  for (DType dt : {kF32, kF64}) {
    for (auto [m, k, n] : {std::tuple{7, 1, 33}, {5, 12, 40}, {40, 50, 30}, {500, 10, 10},
                           {64, 16, 15}}) {
      CAPTURE(dtype_name(dt));
      CAPTURE(m);
      CAPTURE(k);
      Tensor a = randn({1, k, m}, {.dtype = dt}).transpose(1, 2),
             b = randn({1, k, n}, {.dtype = dt});
      Tensor lr = full({}, 0.25, {.dtype = dt});
      // out: rows of a wider buffer (a slice), as a parameter's view may be.
      Tensor base = randn({m, n + 4}, {.dtype = dt});
      for (auto [alpha, beta, scaled] :
           {std::tuple{-1.0, 1.0, true}, {1.0, 0.9, false}, {2.0, 0.0, true}}) {
        CAPTURE(alpha);
        CAPTURE(beta);
        Tensor got = base.clone(), want = base.clone();
        auto out3 = [&](const Tensor& t) { return t.slice(1, 0, n).unsqueeze(0); };
        Tensor go = out3(got), wo = out3(want);
        const TensorImpl* scale = scaled ? lr.impl() : nullptr;
        cpu.matmul_update(*go.impl(), *a.impl(), *b.impl(), alpha, beta, scale);
        cpu.Backend::matmul_update(*wo.impl(), *a.impl(), *b.impl(), alpha, beta, scale);
        double tol = dt == kF32 ? 1e-4 : 1e-12;
        CHECK((got - want).abs().amax().item<double>() < tol);
        // The padding columns are not touched.
        CHECK((got.slice(1, n, n + 4) - base.slice(1, n, n + 4)).abs().amax().item<double>() == 0);
      }
    }
  }
}
