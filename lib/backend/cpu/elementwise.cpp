// CPU elementwise kernels: copy/convert, fill, unary, binary, where. Contiguous f32 runs go to the
// vectorized kernels of the best instruction set (vec_kernels.h); everything else runs the
// reference scalar definitions of scalar_math.h over strided loops.
#include <cstring>

#include "backend/cpu/cpu_kernels.h"
#include "backend/cpu/loops.h"
#include "backend/cpu/scalar_math.h"
#include "backend/cpu/vec_kernels.h"

namespace tg::cpu {

Loop make_loop(std::initializer_list<const TensorImpl*> ops) {
  Loop L;
  L.nops = static_cast<int>(ops.size());
  const TensorImpl& out = **ops.begin();
  L.numel = out.numel;
  int k = 0;
  for (const TensorImpl* t : ops) L.base[k++] = t->data();
  // Innermost first, size-1 dims dropped.
  int nd = static_cast<int>(out.sizes.size());
  for (int d = nd - 1; d >= 0; --d) {
    if (out.sizes[d] == 1) continue;
    L.sizes[L.ndim] = out.sizes[d];
    k = 0;
    for (const TensorImpl* t : ops)
      L.strides[k++][L.ndim] = t->strides[d] * static_cast<int64_t>(element_size(t->dtype));
    ++L.ndim;
  }
  // Merge dim d+1 into d when every operand steps through it as one run.
  int w = 0;
  for (int d = 1; d < L.ndim; ++d) {
    bool merge = true;
    for (k = 0; k < L.nops; ++k) merge &= L.strides[k][d] == L.strides[k][w] * L.sizes[w];
    if (merge) {
      L.sizes[w] *= L.sizes[d];
    } else {
      ++w;
      L.sizes[w] = L.sizes[d];
      for (k = 0; k < L.nops; ++k) L.strides[k][w] = L.strides[k][d];
    }
  }
  if (L.ndim) L.ndim = w + 1;
  return L;
}

namespace {

bool contiguous_run(const Loop& L, std::initializer_list<size_t> elem_sizes) {
  if (L.ndim > 1) return false;
  int k = 0;
  for (size_t es : elem_sizes) {
    if (L.ndim == 1 && L.strides[k][0] != static_cast<int64_t>(es)) return false;
    ++k;
  }
  return true;
}

template <class To, class From>
void convert_loop(const Loop& L) {
  for_each_row(L, [](char** p, const int64_t* s, int64_t n) {
    if (s[0] == sizeof(To) && s[1] == sizeof(From)) {
      To* o = reinterpret_cast<To*>(p[0]);
      const From* x = reinterpret_cast<const From*>(p[1]);
      for (int64_t i = 0; i < n; ++i) o[i] = convert<To>(x[i]);
    } else {
      for (int64_t i = 0; i < n; ++i)
        *reinterpret_cast<To*>(p[0] + i * s[0]) =
            convert<To>(*reinterpret_cast<const From*>(p[1] + i * s[1]));
    }
  });
}

template <class T, class F>
void unary_loop(const Loop& L, F f) {
  for_each_row(L, [&](char** p, const int64_t* s, int64_t n) {
    if (s[0] == sizeof(T) && s[1] == sizeof(T)) {
      T* o = reinterpret_cast<T*>(p[0]);
      const T* x = reinterpret_cast<const T*>(p[1]);
      for (int64_t i = 0; i < n; ++i) o[i] = f(x[i]);
    } else {
      for (int64_t i = 0; i < n; ++i)
        *reinterpret_cast<T*>(p[0] + i * s[0]) = f(*reinterpret_cast<const T*>(p[1] + i * s[1]));
    }
  });
}

template <class O, class T, class F>
void binary_loop(const Loop& L, F f) {
  for_each_row(L, [&](char** p, const int64_t* s, int64_t n) {
    O* o = reinterpret_cast<O*>(p[0]);
    const T* a = reinterpret_cast<const T*>(p[1]);
    const T* b = reinterpret_cast<const T*>(p[2]);
    if (s[0] == sizeof(O) && s[1] == sizeof(T) && s[2] == sizeof(T)) {
      for (int64_t i = 0; i < n; ++i) o[i] = f(a[i], b[i]);
    } else if (s[0] == sizeof(O) && s[1] == sizeof(T) && s[2] == 0) {
      const T bv = *b;
      for (int64_t i = 0; i < n; ++i) o[i] = f(a[i], bv);
    } else if (s[0] == sizeof(O) && s[1] == 0 && s[2] == sizeof(T)) {
      const T av = *a;
      for (int64_t i = 0; i < n; ++i) o[i] = f(av, b[i]);
    } else {
      for (int64_t i = 0; i < n; ++i)
        *reinterpret_cast<O*>(p[0] + i * s[0]) = f(*reinterpret_cast<const T*>(p[1] + i * s[1]),
                                                   *reinterpret_cast<const T*>(p[2] + i * s[2]));
    }
  });
}

// Splits a contiguous run over threads for a vectorized kernel.
template <class F>
void vec_run(int64_t n, F f) {
  parallel_for(n, kParallelGrain, [&](int64_t b, int64_t e) { f(b, e - b); });
}

}  // namespace

void copy_kernel(const TensorImpl& dst, const TensorImpl& src) {
  Loop L = make_loop({&dst, &src});
  if (dst.dtype == src.dtype && contiguous_run(L, {element_size(dst.dtype), element_size(src.dtype)})) {
    size_t es = element_size(dst.dtype);
    char* o = L.base[0];
    const char* x = L.base[1];
    vec_run(L.numel, [&](int64_t b, int64_t n) {
      std::memmove(o + b * es, x + b * es, static_cast<size_t>(n) * es);
    });
    return;
  }
  TG_DISPATCH_ALL(dst.dtype, [&] {
    using To = T;
    TG_DISPATCH_ALL(src.dtype, [&] { convert_loop<To, T>(L); });
  });
}

void fill_kernel(const TensorImpl& dst, Scalar value) {
  Loop L = make_loop({&dst});
  TG_DISPATCH_ALL(dst.dtype, [&] {
    T v = value.is_floating() ? convert<T>(value.to_double()) : convert<T>(value.to_int());
    if (value.kind() == Scalar::Kind::Bool) v = static_cast<T>(value.to_int());
    for_each_row(L, [&](char** p, const int64_t* s, int64_t n) {
      for (int64_t i = 0; i < n; ++i) *reinterpret_cast<T*>(p[0] + i * s[0]) = v;
    });
  });
}

#define TG_UNARY_CASE(K) \
  case OpKind::K: unary_loop<T>(L, [&](T x) { return scalar_unary(OpKind::K, x, attrs); }); break;

void unary_kernel(OpKind kind, const TensorImpl& out, const TensorImpl& x, const OpAttrs& attrs) {
  Loop L = make_loop({&out, &x});
  if (out.dtype == kF32 && contiguous_run(L, {4, 4})) {
    if (auto fn = vec_kernels().unary_f32(kind)) {
      float* o = reinterpret_cast<float*>(L.base[0]);
      const float* xi = reinterpret_cast<const float*>(L.base[1]);
      vec_run(L.numel, [&](int64_t b, int64_t n) { fn(o + b, xi + b, n, attrs); });
      return;
    }
  }
  TG_DISPATCH_ALL(out.dtype, [&] {
    switch (kind) {
      TG_UNARY_CASE(Neg) TG_UNARY_CASE(Exp) TG_UNARY_CASE(Log) TG_UNARY_CASE(Log1p)
      TG_UNARY_CASE(Expm1) TG_UNARY_CASE(Sqrt) TG_UNARY_CASE(Rsqrt) TG_UNARY_CASE(Abs)
      TG_UNARY_CASE(Sign) TG_UNARY_CASE(Sin) TG_UNARY_CASE(Cos) TG_UNARY_CASE(Tanh)
      TG_UNARY_CASE(Sigmoid) TG_UNARY_CASE(Relu) TG_UNARY_CASE(Gelu) TG_UNARY_CASE(Erf)
      TG_UNARY_CASE(Softplus)
      TG_UNARY_CASE(LogSigmoid) TG_UNARY_CASE(PowScalar) TG_UNARY_CASE(Clamp)
      TG_UNARY_CASE(LogicalNot)
      default: TG_INTERNAL_ASSERT(false && "not a unary op");
    }
  });
}
#undef TG_UNARY_CASE

#define TG_BINARY_CASE(K) \
  case OpKind::K: binary_loop<T, T>(L, [](T a, T b) { return scalar_binary(OpKind::K, a, b); }); break;
#define TG_COMPARE_CASE(K) \
  case OpKind::K: binary_loop<bool, T>(L, [](T a, T b) { return scalar_compare(OpKind::K, a, b); }); break;

void binary_kernel(OpKind kind, const TensorImpl& out, const TensorImpl& a, const TensorImpl& b) {
  Loop L = make_loop({&out, &a, &b});
  if (out.dtype == kF32 && L.ndim <= 1) {
    auto fn = vec_kernels().binary_f32(kind);
    int64_t sa = L.ndim ? L.strides[1][0] : 4, sb = L.ndim ? L.strides[2][0] : 4;
    bool out_ok = L.ndim == 0 || L.strides[0][0] == 4;
    if (fn && out_ok && (sa == 4 || sa == 0) && (sb == 4 || sb == 0)) {
      float* o = reinterpret_cast<float*>(L.base[0]);
      const float* pa = reinterpret_cast<const float*>(L.base[1]);
      const float* pb = reinterpret_cast<const float*>(L.base[2]);
      vec_run(L.numel, [&](int64_t i, int64_t n) {
        fn(o + i, sa ? pa + i : pa, sa != 0, sb ? pb + i : pb, sb != 0, n);
      });
      return;
    }
  }
  if (out.dtype == kF32 && a.dtype == kF32 && b.dtype == kF32 && L.ndim > 1) {
    // Broadcasts over several dims (a bias over a batch, a scale over rows): each row whose
    // operands are contiguous or one broadcast value goes through the vectorized kernel.
    if (auto fn = vec_kernels().binary_f32(kind)) {
      for_each_row(L, [fn, kind](char** p, const int64_t* s, int64_t n) {
        if (s[0] == 4 && (s[1] == 4 || s[1] == 0) && (s[2] == 4 || s[2] == 0)) {
          fn(reinterpret_cast<float*>(p[0]), reinterpret_cast<const float*>(p[1]), s[1] != 0,
             reinterpret_cast<const float*>(p[2]), s[2] != 0, n);
          return;
        }
        for (int64_t i = 0; i < n; ++i)
          *reinterpret_cast<float*>(p[0] + i * s[0]) =
              scalar_binary(kind, *reinterpret_cast<const float*>(p[1] + i * s[1]),
                            *reinterpret_cast<const float*>(p[2] + i * s[2]));
      });
      return;
    }
  }
  TG_DISPATCH_ALL(a.dtype, [&] {
    switch (kind) {
      TG_BINARY_CASE(Add) TG_BINARY_CASE(Sub) TG_BINARY_CASE(Mul) TG_BINARY_CASE(Div)
      TG_BINARY_CASE(Pow) TG_BINARY_CASE(Maximum) TG_BINARY_CASE(Minimum)
      TG_BINARY_CASE(LogicalAnd) TG_BINARY_CASE(LogicalOr)
      TG_COMPARE_CASE(Eq) TG_COMPARE_CASE(Ne) TG_COMPARE_CASE(Lt) TG_COMPARE_CASE(Le)
      TG_COMPARE_CASE(Gt) TG_COMPARE_CASE(Ge)
      default: TG_INTERNAL_ASSERT(false && "not a binary op");
    }
  });
}
#undef TG_BINARY_CASE
#undef TG_COMPARE_CASE

void where_kernel(const TensorImpl& out, const TensorImpl& cond, const TensorImpl& a,
                  const TensorImpl& b) {
  Loop L = make_loop({&out, &cond, &a, &b});
  if (out.dtype == kF32) {  // rows with contiguous output and mask: the vectorized select
    auto fn = vec_kernels().where_f32;
    for_each_row(L, [fn](char** p, const int64_t* s, int64_t n) {
      if (s[0] == 4 && s[1] == 1 && (s[2] == 4 || s[2] == 0) && (s[3] == 4 || s[3] == 0)) {
        fn(reinterpret_cast<float*>(p[0]), reinterpret_cast<const bool*>(p[1]),
           reinterpret_cast<const float*>(p[2]), s[2] != 0, reinterpret_cast<const float*>(p[3]),
           s[3] != 0, n);
        return;
      }
      for (int64_t i = 0; i < n; ++i) {
        bool c = *reinterpret_cast<const bool*>(p[1] + i * s[1]);
        *reinterpret_cast<float*>(p[0] + i * s[0]) =
            c ? *reinterpret_cast<const float*>(p[2] + i * s[2])
              : *reinterpret_cast<const float*>(p[3] + i * s[3]);
      }
    });
    return;
  }
  TG_DISPATCH_ALL(out.dtype, [&] {
    for_each_row(L, [](char** p, const int64_t* s, int64_t n) {
      for (int64_t i = 0; i < n; ++i) {
        bool c = *reinterpret_cast<const bool*>(p[1] + i * s[1]);
        *reinterpret_cast<T*>(p[0] + i * s[0]) = c ? *reinterpret_cast<const T*>(p[2] + i * s[2])
                                                   : *reinterpret_cast<const T*>(p[3] + i * s[3]);
      }
    });
  });
}

}  // namespace tg::cpu
