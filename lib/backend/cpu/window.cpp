// CPU sliding-window kernels: im2col and its adjoint col2im (convolution is a gemm over their
// columns), max and average pooling. Images are contiguous (N, C, H, W), columns any (N, C*K, L)
// view with contiguous rows (conv2d lays them out (C*K, N, L)); each (n, c) plane is
// independent, so planes are the unit of parallel work and results do not depend on thread count.
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "backend/cpu/cpu_kernels.h"
#include "backend/cpu/loops.h"
#include "backend/cpu/vec_kernels.h"

namespace tg::cpu {
namespace {

// The output columns [lo, hi) whose input position o*stride + off lies in [0, size).
struct Span {
  int64_t lo, hi;
};
Span valid_span(int64_t out_size, int64_t stride, int64_t off, int64_t size) {
  int64_t lo = off >= 0 ? 0 : (-off + stride - 1) / stride;
  int64_t hi = off >= size ? 0 : (size - 1 - off) / stride + 1;
  lo = std::min(lo, out_size);
  hi = std::clamp(hi, lo, out_size);
  return {lo, hi};
}

struct Geometry {
  int64_t N, C, H, W, OH, OW;
  int64_t col_n = 0, col_r = 0;  // element strides of the columns' sample and row dims
  // The first of the K rows that image plane p = (n, c) owns in the columns.
  int64_t rows_of(int64_t p, int64_t K) const { return p / C * col_n + p % C * K * col_r; }
};

// Calls f(plane, ki, kj) for every (n, c) plane and kernel offset, planes in parallel.
template <class F>
void for_planes(const Geometry& g, int64_t work_per_plane, F&& f) {
  int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_plane));
  parallel_for(g.N * g.C, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) f(p);
  });
}

template <class T>
void im2col(T* cols, const T* x, const Geometry& g, const Window2d& w) {
  int64_t L = g.OH * g.OW, K = w.kh * w.kw;
  for_planes(g, K * L, [&](int64_t p) {
    const T* plane = x + p * g.H * g.W;
    T* rows = cols + g.rows_of(p, K);  // (n, c) owns rows c*K .. c*K+K-1 of sample n
    for (int64_t ki = 0; ki < w.kh; ++ki) {
      for (int64_t kj = 0; kj < w.kw; ++kj) {
        T* row = rows + (ki * w.kw + kj) * g.col_r;
        int64_t offw = kj * w.dw - w.pw;
        Span sw = valid_span(g.OW, w.sw, offw, g.W);
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          T* dst = row + oh * g.OW;
          int64_t ih = oh * w.sh - w.ph + ki * w.dh;
          if (ih < 0 || ih >= g.H) {
            std::fill(dst, dst + g.OW, T(0));
            continue;
          }
          const T* src = plane + ih * g.W;  // input column ow * sw + offw
          std::fill(dst, dst + sw.lo, T(0));
          if (w.sw == 1) {
            if (sw.hi > sw.lo)
              std::memcpy(dst + sw.lo, src + sw.lo + offw, (sw.hi - sw.lo) * sizeof(T));
          } else {
            for (int64_t ow = sw.lo; ow < sw.hi; ++ow) dst[ow] = src[ow * w.sw + offw];
          }
          std::fill(dst + sw.hi, dst + g.OW, T(0));
        }
      }
    }
  });
}

template <class T>
void col2im(T* x, const T* cols, const Geometry& g, const Window2d& w) {
  int64_t L = g.OH * g.OW, K = w.kh * w.kw;
  for_planes(g, K * L, [&](int64_t p) {
    T* plane = x + p * g.H * g.W;
    std::fill(plane, plane + g.H * g.W, T(0));
    const T* rows = cols + g.rows_of(p, K);
    for (int64_t ki = 0; ki < w.kh; ++ki) {
      for (int64_t kj = 0; kj < w.kw; ++kj) {
        const T* row = rows + (ki * w.kw + kj) * g.col_r;
        int64_t offw = kj * w.dw - w.pw;
        Span sw = valid_span(g.OW, w.sw, offw, g.W);
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          int64_t ih = oh * w.sh - w.ph + ki * w.dh;
          if (ih < 0 || ih >= g.H) continue;
          const T* src = row + oh * g.OW;
          T* dst = plane + ih * g.W;
          for (int64_t ow = sw.lo; ow < sw.hi; ++ow) dst[ow * w.sw + offw] += src[ow];
        }
      }
    }
  });
}

// Without padding every window is inside the image: a whole output row is updated tap by tap,
// in loops over ow that the compiler vectorizes (compare and select, no branches).
// Max pooling 2x2 with stride 2 (most CNNs): four loads and three selects per output.
template <class T>
void max_pool_2x2(T* __restrict o, int64_t* __restrict idx, const T* __restrict plane,
                  const Geometry& g) {
  const int64_t OH = g.OH, OW = g.OW, W = g.W;
  auto better = [](T v, T b) { return (v > b) | ((v != v) & (b == b)); };  // NaN wins
  for (int64_t oh = 0; oh < OH; ++oh) {
    const T* r0 = plane + 2 * oh * W;
    const T* r1 = r0 + W;
    for (int64_t ow = 0; ow < OW; ++ow) {
      int64_t at = 2 * oh * W + 2 * ow;
      T best = r0[2 * ow];
      int64_t arg = at;
      T v = r0[2 * ow + 1];
      if (better(v, best)) best = v, arg = at + 1;
      v = r1[2 * ow];
      if (better(v, best)) best = v, arg = at + W;
      v = r1[2 * ow + 1];
      if (better(v, best)) best = v, arg = at + W + 1;
      o[oh * OW + ow] = best;
      idx[oh * OW + ow] = arg;
    }
  }
}

template <class T>
void pool_unpadded(bool is_max, T* o, int64_t* idx, const T* plane, const Geometry& g,
                   const Window2d& w) {
  if (is_max && idx && w.kh == 2 && w.kw == 2 && w.sh == 2 && w.sw == 2 && w.dh == 1 && w.dw == 1) {
    if constexpr (std::is_same_v<T, float>)
      return vec_kernels().max_pool_2x2_f32(o, idx, plane, g.OH, g.OW, g.W);
    else
      return max_pool_2x2(o, idx, plane, g);
  }
  // Locals and restrict: the loops must not reload sizes through pointers that might alias.
  const int64_t OH = g.OH, OW = g.OW, W = g.W, sw = w.sw;
  std::vector<int64_t> scratch(idx ? 0 : static_cast<size_t>(OW));
  T inv = T(1) / static_cast<T>(w.kh * w.kw);
  for (int64_t oh = 0; oh < OH; ++oh) {
    T* __restrict best = o + oh * OW;
    int64_t* __restrict arg = idx ? idx + oh * OW : scratch.data();
    for (int64_t ki = 0; ki < w.kh; ++ki) {
      for (int64_t kj = 0; kj < w.kw; ++kj) {
        const int64_t base = (oh * w.sh + ki * w.dh) * W + kj * w.dw;
        const T* __restrict src = plane + base;
        bool first = ki == 0 && kj == 0;
        if (!is_max) {
          if (first)
            for (int64_t ow = 0; ow < OW; ++ow) best[ow] = src[ow * sw];
          else
            for (int64_t ow = 0; ow < OW; ++ow) best[ow] += src[ow * sw];
        } else if (first) {
          for (int64_t ow = 0; ow < OW; ++ow) best[ow] = src[ow * sw], arg[ow] = base + ow * sw;
        } else {
          for (int64_t ow = 0; ow < OW; ++ow) {
            T v = src[ow * sw], b = best[ow];
            bool take = (v > b) | ((v != v) & (b == b));  // NaN wins
            best[ow] = take ? v : b;
            arg[ow] = take ? base + ow * sw : arg[ow];
          }
        }
      }
    }
    if (!is_max)
      for (int64_t ow = 0; ow < OW; ++ow) best[ow] *= inv;
  }
}

// A window entirely inside the image takes the fast path, without bound checks.
template <class T>
void pool(OpKind kind, T* out, int64_t* indices, const T* x, const Geometry& g, const Window2d& w) {
  bool is_max = kind == OpKind::MaxPool2d;
  T inv = T(1) / static_cast<T>(w.kh * w.kw);
  for_planes(g, g.OH * g.OW * w.kh * w.kw, [&](int64_t p) {
    const T* plane = x + p * g.H * g.W;
    T* o = out + p * g.OH * g.OW;
    int64_t* idx = indices ? indices + p * g.OH * g.OW : nullptr;
    if (w.ph == 0 && w.pw == 0) return pool_unpadded(is_max, o, idx, plane, g, w);
    for (int64_t oh = 0; oh < g.OH; ++oh) {
      int64_t ih0 = oh * w.sh - w.ph;
      bool rows_inside = ih0 >= 0 && ih0 + (w.kh - 1) * w.dh < g.H;
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        int64_t iw0 = ow * w.sw - w.pw;
        bool inside = rows_inside && iw0 >= 0 && iw0 + (w.kw - 1) * w.dw < g.W;
        T best = is_max ? -std::numeric_limits<T>::infinity() : T(0);
        int64_t arg = -1;
        auto visit = [&](int64_t pos) {
          T v = plane[pos];
          if (!is_max) {
            best += v;
          } else if (arg < 0 || v > best || (v != v && best == best)) {  // NaN wins
            best = v;
            arg = pos;
          }
        };
        if (inside) {
          for (int64_t ki = 0; ki < w.kh; ++ki)
            for (int64_t kj = 0; kj < w.kw; ++kj) visit((ih0 + ki * w.dh) * g.W + iw0 + kj * w.dw);
        } else {
          for (int64_t ki = 0; ki < w.kh; ++ki) {
            int64_t ih = ih0 + ki * w.dh;
            if (ih < 0 || ih >= g.H) continue;
            for (int64_t kj = 0; kj < w.kw; ++kj) {
              int64_t iw = iw0 + kj * w.dw;
              if (iw >= 0 && iw < g.W) visit(ih * g.W + iw);
            }
          }
        }
        o[oh * g.OW + ow] = is_max ? best : best * inv;
        if (idx) idx[oh * g.OW + ow] = std::max<int64_t>(arg, 0);
      }
    }
  });
}

}  // namespace

void window_kernel(OpKind kind, const TensorImpl& out, const TensorImpl& x, const Window2d& w,
                   const TensorImpl* indices) {
  // Geometry from the image side: x for im2col and pooling, out for col2im.
  const TensorImpl& image = kind == OpKind::Col2im ? out : x;
  Geometry g{image.sizes[0], image.sizes[1], image.sizes[2], image.sizes[3], 0, 0};
  g.OH = w.out_h(g.H);
  g.OW = w.out_w(g.W);
  // The columns (out of im2col, x of col2im) may be any (N, C*K) view with contiguous rows.
  const TensorImpl& cols = kind == OpKind::Im2col ? out : x;
  if (kind == OpKind::Im2col || kind == OpKind::Col2im) {
    TG_INTERNAL_ASSERT(cols.strides[2] == 1 || cols.sizes[2] == 1);
    g.col_n = cols.strides[0];
    g.col_r = cols.strides[1];
  }
  TG_DISPATCH_FLOAT(out.dtype, [&] {
    T* o = reinterpret_cast<T*>(out.data());
    const T* xi = reinterpret_cast<const T*>(x.data());
    switch (kind) {
      case OpKind::Im2col: im2col(o, xi, g, w); break;
      case OpKind::Col2im: col2im(o, xi, g, w); break;
      default:
        pool(kind, o, indices ? reinterpret_cast<int64_t*>(indices->data()) : nullptr, xi, g, w);
    }
  });
}

}  // namespace tg::cpu
