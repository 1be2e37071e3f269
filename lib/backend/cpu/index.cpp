// CPU indexing kernels: index_select, gather, scatter_add. Every index is checked before any
// write, so a bad index throws tg::Error and leaves the output untouched.
#include "backend/cpu/cpu_kernels.h"
#include "backend/cpu/loops.h"
#include "backend/cpu/scalar_math.h"

namespace tg::cpu {
namespace {

void check_indices(const TensorImpl& index, int64_t size, const char* op, int dim) {
  int64_t bad = 0;
  if (find_bad_index(index, size, bad)) throw_index_error(op, bad, dim, size);
}

inline int64_t wrap(int64_t v, int64_t size) { return v < 0 ? v + size : v; }

// Row-major multi-index of element i of `sizes`, written into idx.
inline void unravel(int64_t i, const Shape& sizes, int64_t* idx) {
  for (size_t d = sizes.size(); d-- > 0;) {
    idx[d] = i % sizes[d];
    i /= sizes[d];
  }
}
inline int64_t offset_of(const int64_t* idx, const Shape& strides) {
  int64_t off = 0;
  for (size_t d = 0; d < strides.size(); ++d) off += idx[d] * strides[d];
  return off;
}

}  // namespace

bool find_bad_index(const TensorImpl& index, int64_t size, int64_t& first_bad) {
  Loop L = make_loop({&index});
  bool bad = false;
  loop_range(L, 0, L.numel, [&](char** p, const int64_t* s, int64_t n) {
    for (int64_t i = 0; i < n && !bad; ++i) {
      int64_t v = *reinterpret_cast<const int64_t*>(p[0] + i * s[0]);
      if (v < -size || v >= size) bad = true, first_bad = v;
    }
  });
  return bad;
}

void index_kernel(OpKind kind, const TensorImpl& out, const TensorImpl& x, int dim,
                  const TensorImpl& index) {
  const TensorImpl& target = kind == OpKind::ScatterAdd ? out : x;
  int64_t dim_size = target.sizes.empty() ? 1 : target.sizes[dim];
  check_indices(index, dim_size, op_name(kind).data(), dim);
  // The iteration space: out for index_select/gather, src (x) for scatter_add.
  const TensorImpl& space = kind == OpKind::ScatterAdd ? x : out;
  int64_t n = space.numel;
  const int64_t* ip = reinterpret_cast<const int64_t*>(index.data());
  TG_DISPATCH_ALL(out.dtype, [&] {
    T* o = reinterpret_cast<T*>(out.data());
    const T* xi = reinterpret_cast<const T*>(x.data());
    auto body = [&](int64_t i, int64_t* idx) {
      unravel(i, space.sizes, idx);
      if (kind == OpKind::IndexSelect) {
        int64_t pos = idx[dim];
        int64_t sel = wrap(ip[pos * (index.strides.empty() ? 0 : index.strides[0])], dim_size);
        idx[dim] = sel;
        int64_t src = offset_of(idx, x.strides);
        idx[dim] = pos;
        o[offset_of(idx, out.strides)] = xi[src];
      } else if (kind == OpKind::Gather) {
        int64_t sel = wrap(ip[offset_of(idx, index.strides)], dim_size);
        int64_t dst = offset_of(idx, out.strides);
        idx[dim] = sel;
        o[dst] = xi[offset_of(idx, x.strides)];
      } else {  // ScatterAdd: out[... index ...] += src
        int64_t sel = wrap(ip[offset_of(idx, index.strides)], dim_size);
        T v = xi[offset_of(idx, x.strides)];
        idx[dim] = sel;
        T& d = o[offset_of(idx, out.strides)];
        d = wrap_add(d, v);
      }
    };
    // Fast path: gather/scatter along the last dim of contiguous tensors whose other dims agree
    // (cross_entropy's gather, max pooling's scatter): rows, no multi-index arithmetic.
    int nd = static_cast<int>(space.sizes.size());
    const TensorImpl& along = kind == OpKind::ScatterAdd ? out : x;
    bool rows = kind != OpKind::IndexSelect && nd >= 1 && dim == nd - 1 && out.is_contiguous() &&
                x.is_contiguous() && index.is_contiguous() && index.sizes == space.sizes &&
                static_cast<int>(along.sizes.size()) == nd;
    for (int d = 0; rows && d < nd - 1; ++d) rows = along.sizes[d] == space.sizes[d];
    if (rows && n > 0) {
      int64_t m = space.sizes[nd - 1];
      if (kind == OpKind::ScatterAdd) {
        for (int64_t r = 0; r < n / m; ++r)
          for (int64_t j = 0; j < m; ++j) {
            T& d = o[r * dim_size + wrap(ip[r * m + j], dim_size)];
            d = wrap_add(d, xi[r * m + j]);
          }
      } else {
        parallel_for(n / m, std::max<int64_t>(1, kParallelGrain / m), [&](int64_t b, int64_t e) {
          for (int64_t r = b; r < e; ++r)
            for (int64_t j = 0; j < m; ++j) o[r * m + j] = xi[r * dim_size + wrap(ip[r * m + j], dim_size)];
        });
      }
      return;
    }
    if (x.sizes.empty() && out.sizes.empty()) {  // 0-d: one element, index 0 or -1
      o[0] = kind == OpKind::ScatterAdd ? wrap_add(o[0], xi[0]) : xi[0];
      return;
    }
    // Scatter writes collide, so it stays serial; the others write each output once.
    if (kind == OpKind::ScatterAdd) {
      int64_t idx[kMaxDims];
      for (int64_t i = 0; i < n; ++i) body(i, idx);
    } else {
      parallel_for(n, kParallelGrain, [&](int64_t b, int64_t e) {
        int64_t idx[kMaxDims];
        for (int64_t i = b; i < e; ++i) body(i, idx);
      });
    }
  });
}

}  // namespace tg::cpu
