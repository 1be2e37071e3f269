// Philox 4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): a counter-
// based generator, so element i's number depends only on (seed, offset, i) and not on threads.
#include <cmath>
#include <cstring>

#include "backend/cpu/cpu_kernels.h"
#include "backend/cpu/loops.h"
#include "backend/cpu/philox.h"

namespace tg::cpu {

void random_kernel(RandomKind kind, const TensorImpl& dst, uint64_t seed, uint64_t offset,
                   double a, double b) {
  int64_t n = dst.numel;
  TG_DISPATCH_ALL(dst.dtype, [&] {
    T* out = reinterpret_cast<T*>(dst.data());
    parallel_for((n + 3) / 4, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t blk = begin; blk < end; ++blk) {
        Philox4 r = philox4x32_10(seed, offset + static_cast<uint64_t>(blk));
        double v[4];
        if (kind == RandomKind::Normal) {
          normal4(r, v);
          for (double& x : v) x = a + b * x;
        } else if (kind == RandomKind::Uniform) {
          for (int k = 0; k < 4; ++k) v[k] = a + (b - a) * uniform01(r.v[k], r.v[(k + 1) & 3]);
          if constexpr (std::is_same_v<T, float>)  // rounding to f32 must not reach b
            for (double& x : v) x = std::min<double>(x, std::nextafter(static_cast<float>(b), -INFINITY));
        } else {
          auto range = static_cast<uint64_t>(b - a);
          for (int k = 0; k < 4; ++k) {
            uint64_t bits = (static_cast<uint64_t>(r.v[k]) << 32) | r.v[(k + 1) & 3];
            // Multiply-high maps 64 random bits to [0, range) with negligible bias.
            auto hi = static_cast<uint64_t>((static_cast<unsigned __int128>(bits) * range) >> 64);
            v[k] = 0;
            int64_t iv = static_cast<int64_t>(a) + static_cast<int64_t>(hi);
            out_int_store<T>(out, blk * 4 + k, n, iv);
          }
          continue;
        }
        for (int k = 0; k < 4 && blk * 4 + k < n; ++k) out[blk * 4 + k] = static_cast<T>(v[k]);
      }
    });
  });
}

void iota_kernel(const TensorImpl& dst, double start, double step) {
  int64_t n = dst.numel;
  TG_DISPATCH_ALL(dst.dtype, [&] {
    T* out = reinterpret_cast<T*>(dst.data());
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(start + static_cast<double>(i) * step);
  });
}

}  // namespace tg::cpu
