// Philox 4x32-10 and the maps from its 32-bit outputs to uniform and normal numbers. Shared with
// the CUDA backend, so the same seed gives the same numbers on both devices.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define TG_HD_PHILOX __host__ __device__
#else
#define TG_HD_PHILOX
#endif

namespace tg::cpu {

struct Philox4 {
  uint32_t v[4];
};

// Counter (ctr, 0, 0) under key seed: one call gives four 32-bit numbers.
TG_HD_PHILOX inline Philox4 philox4x32_10(uint64_t seed, uint64_t ctr) {
  uint32_t c[4] = {static_cast<uint32_t>(ctr), static_cast<uint32_t>(ctr >> 32), 0, 0};
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c[0];
    uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c[2];
    uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c[1] ^ k0;
    uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c[3] ^ k1;
    c[0] = n0;
    c[1] = static_cast<uint32_t>(p1);
    c[2] = n2;
    c[3] = static_cast<uint32_t>(p0);
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c[0], c[1], c[2], c[3]}};
}

// A double in [0, 1) from 53 random bits of two outputs.
TG_HD_PHILOX inline double uniform01(uint32_t hi, uint32_t lo) {
  uint64_t bits = ((static_cast<uint64_t>(hi) << 32) | lo) >> 11;
  return static_cast<double>(bits) * 0x1.0p-53;
}

// Four standard normals by Box-Muller on the four outputs (paired).
TG_HD_PHILOX inline void normal4(const Philox4& r, double out[4]) {
  for (int k = 0; k < 4; k += 2) {
    double u1 = (static_cast<double>(r.v[k]) + 1.0) * 0x1.0p-32;  // (0, 1]: log is finite
    double u2 = static_cast<double>(r.v[k + 1]) * 0x1.0p-32;
    double radius = std::sqrt(-2.0 * std::log(u1));
    out[k] = radius * std::cos(2.0 * M_PI * u2);
    out[k + 1] = radius * std::sin(2.0 * M_PI * u2);
  }
}

template <class T>
inline void out_int_store(T* out, int64_t i, int64_t n, int64_t v) {
  if (i < n) out[i] = static_cast<T>(v);
}

}  // namespace tg::cpu
