// The public ops, as free functions and operators. Every op broadcasts where it combines tensors
// (NumPy rules), promotes dtypes as PyTorch does, and throws tg::Error naming the op, the shapes and
// the caller's line on bad input.
#pragma once

#include <optional>
#include <utility>
#include <vector>

#include "tapegrad/tensor.h"

namespace tg {

// --- factories ------------------------------------------------------------------------------------
// Uninitialized / constant tensors. dtype defaults to f32 (full: the value's dtype, f32 for floats).
Tensor empty(const Shape& shape, TensorOptions opts = {}, Loc loc = Loc::current());
Tensor zeros(const Shape& shape, TensorOptions opts = {}, Loc loc = Loc::current());
Tensor ones(const Shape& shape, TensorOptions opts = {}, Loc loc = Loc::current());
Tensor full(const Shape& shape, Scalar value, TensorOptions opts = {}, Loc loc = Loc::current());
Tensor zeros_like(const Tensor& t, TensorOptions opts = {}, Loc loc = Loc::current());
Tensor ones_like(const Tensor& t, TensorOptions opts = {}, Loc loc = Loc::current());
Tensor full_like(const Tensor& t, Scalar value, TensorOptions opts = {}, Loc loc = Loc::current());
Tensor empty_like(const Tensor& t, TensorOptions opts = {}, Loc loc = Loc::current());
// [start, end) by step; i64 when all arguments are integers, else f32.
Tensor arange(Scalar end, TensorOptions opts = {}, Loc loc = Loc::current());
Tensor arange(Scalar start, Scalar end, Scalar step = 1, TensorOptions opts = {},
              Loc loc = Loc::current());
// `steps` points from start to end inclusive.
Tensor linspace(double start, double end, int64_t steps, TensorOptions opts = {},
                Loc loc = Loc::current());
Tensor eye(int64_t n, std::optional<int64_t> m = std::nullopt, TensorOptions opts = {},
           Loc loc = Loc::current());

// From host data; the dtype follows the element type unless opts.dtype says otherwise.
Tensor from_blob_copy(const void* data, size_t count, DType src, const Shape& shape,
                      TensorOptions opts, Loc loc = Loc::current());
template <class T>
Tensor tensor(const std::vector<T>& values, const Shape& shape, TensorOptions opts = {},
              Loc loc = Loc::current()) {
  if constexpr (std::is_same_v<T, bool>) {  // vector<bool> is packed: unpack it
    std::vector<uint8_t> bytes(values.begin(), values.end());
    return from_blob_copy(bytes.data(), bytes.size(), kBool, shape, opts, loc);
  } else {
    return from_blob_copy(values.data(), values.size(), dtype_of_v<T>, shape, opts, loc);
  }
}
template <class T>
Tensor tensor(const std::vector<T>& values, TensorOptions opts = {}, Loc loc = Loc::current()) {
  return tensor(values, Shape{static_cast<int64_t>(values.size())}, opts, loc);
}
template <class T>
  requires std::is_arithmetic_v<T>
Tensor tensor(std::initializer_list<T> values, TensorOptions opts = {}, Loc loc = Loc::current()) {
  return tensor(std::vector<T>(values), opts, loc);
}
template <class T>
  requires std::is_arithmetic_v<T>
Tensor tensor(std::initializer_list<std::initializer_list<T>> rows, TensorOptions opts = {},
              Loc loc = Loc::current()) {
  std::vector<T> flat;
  size_t cols = rows.size() ? rows.begin()->size() : 0;
  bool ragged = false;
  for (auto& r : rows) {
    ragged |= r.size() != cols;
    flat.insert(flat.end(), r.begin(), r.end());
  }
  // A ragged list is reported by from_blob_copy as a size mismatch.
  Shape shape{static_cast<int64_t>(rows.size()), static_cast<int64_t>(ragged ? -1 : cols)};
  return tensor(flat, shape, opts, loc);
}
template <class T>
  requires std::is_arithmetic_v<T>
Tensor tensor(T value, TensorOptions opts = {}, Loc loc = Loc::current()) {  // 0-d
  return tensor(std::vector<T>{value}, Shape{}, opts, loc);
}

// --- random numbers (Philox 4x32-10: the same numbers whatever the thread count or device) -------
void manual_seed(uint64_t seed);
Tensor rand(const Shape& shape, TensorOptions opts = {}, Loc loc = Loc::current());   // U[0, 1)
Tensor randn(const Shape& shape, TensorOptions opts = {}, Loc loc = Loc::current());  // N(0, 1)
// Integers uniform in [low, high); i64 unless opts.dtype says otherwise.
Tensor randint(int64_t low, int64_t high, const Shape& shape, TensorOptions opts = {},
               Loc loc = Loc::current());
// A random permutation of 0 .. n-1 (i64 unless opts.dtype says otherwise).
Tensor randperm(int64_t n, TensorOptions opts = {}, Loc loc = Loc::current());
Tensor rand_like(const Tensor& t, TensorOptions opts = {}, Loc loc = Loc::current());
Tensor randn_like(const Tensor& t, TensorOptions opts = {}, Loc loc = Loc::current());

// --- elementwise math (integer inputs give f32 for the transcendental ones) ----------------------
Tensor neg(const Tensor& x, Loc loc = Loc::current());      // -x
Tensor exp(const Tensor& x, Loc loc = Loc::current());      // e^x
Tensor log(const Tensor& x, Loc loc = Loc::current());      // ln x
Tensor log1p(const Tensor& x, Loc loc = Loc::current());    // ln(1 + x)
Tensor expm1(const Tensor& x, Loc loc = Loc::current());    // e^x - 1
Tensor sqrt(const Tensor& x, Loc loc = Loc::current());     // √x
Tensor rsqrt(const Tensor& x, Loc loc = Loc::current());    // 1/√x
Tensor abs(const Tensor& x, Loc loc = Loc::current());      // |x|
Tensor sign(const Tensor& x, Loc loc = Loc::current());     // -1, 0 or 1
Tensor sin(const Tensor& x, Loc loc = Loc::current());
Tensor cos(const Tensor& x, Loc loc = Loc::current());
Tensor tanh(const Tensor& x, Loc loc = Loc::current());
Tensor sigmoid(const Tensor& x, Loc loc = Loc::current());  // 1 / (1 + e^-x)
Tensor relu(const Tensor& x, Loc loc = Loc::current());     // max(x, 0)
Tensor gelu(const Tensor& x, Loc loc = Loc::current());     // x·Φ(x), the exact (erf) form
Tensor erf(const Tensor& x, Loc loc = Loc::current());      // (2/√π) ∫₀ˣ e^(-t²) dt
Tensor softplus(const Tensor& x, Loc loc = Loc::current()); // ln(1 + e^x), stable
Tensor log_sigmoid(const Tensor& x, Loc loc = Loc::current());  // -softplus(-x), stable
Tensor pow(const Tensor& x, const Tensor& exponent, Loc loc = Loc::current());  // x^e
Tensor pow(const Tensor& x, Scalar exponent, Loc loc = Loc::current());
Tensor pow(Scalar x, const Tensor& exponent, Loc loc = Loc::current());
// min(max(x, lo), hi); either bound may be absent.
Tensor clamp(const Tensor& x, std::optional<Scalar> min, std::optional<Scalar> max,
             Loc loc = Loc::current());
Tensor maximum(const Tensor& a, const Tensor& b, Loc loc = Loc::current());  // NaN propagates
Tensor minimum(const Tensor& a, const Tensor& b, Loc loc = Loc::current());

Tensor add(const Tensor& a, const Tensor& b, Loc loc = Loc::current());
Tensor sub(const Tensor& a, const Tensor& b, Loc loc = Loc::current());
Tensor mul(const Tensor& a, const Tensor& b, Loc loc = Loc::current());
Tensor div(const Tensor& a, const Tensor& b, Loc loc = Loc::current());  // true division
Tensor add(const Tensor& a, Scalar b, Loc loc = Loc::current());
Tensor sub(const Tensor& a, Scalar b, Loc loc = Loc::current());
Tensor mul(const Tensor& a, Scalar b, Loc loc = Loc::current());
Tensor div(const Tensor& a, Scalar b, Loc loc = Loc::current());

// Comparisons give kBool.
Tensor eq(const Tensor& a, const Tensor& b, Loc loc = Loc::current());
Tensor ne(const Tensor& a, const Tensor& b, Loc loc = Loc::current());
Tensor lt(const Tensor& a, const Tensor& b, Loc loc = Loc::current());
Tensor le(const Tensor& a, const Tensor& b, Loc loc = Loc::current());
Tensor gt(const Tensor& a, const Tensor& b, Loc loc = Loc::current());
Tensor ge(const Tensor& a, const Tensor& b, Loc loc = Loc::current());
Tensor logical_and(const Tensor& a, const Tensor& b, Loc loc = Loc::current());
Tensor logical_or(const Tensor& a, const Tensor& b, Loc loc = Loc::current());
Tensor logical_not(const Tensor& a, Loc loc = Loc::current());

// Operators: a tensor with a tensor or a number on either side.
Tensor operator-(At x);
#define TG_DECLARE_OPERATOR(op)            \
  Tensor operator op(At a, const Tensor& b); \
  Tensor operator op(At a, Scalar b);        \
  Tensor operator op(Scalar a, At b);
TG_DECLARE_OPERATOR(+)
TG_DECLARE_OPERATOR(-)
TG_DECLARE_OPERATOR(*)
TG_DECLARE_OPERATOR(/)
TG_DECLARE_OPERATOR(==)
TG_DECLARE_OPERATOR(!=)
TG_DECLARE_OPERATOR(<)
TG_DECLARE_OPERATOR(<=)
TG_DECLARE_OPERATOR(>)
TG_DECLARE_OPERATOR(>=)
TG_DECLARE_OPERATOR(&)  // logical and of bool tensors
TG_DECLARE_OPERATOR(|)  // logical or
#undef TG_DECLARE_OPERATOR
Tensor operator~(At x);  // logical not of a bool tensor

// --- reductions --------------------------------------------------------------------------------
Tensor sum(const Tensor& x, const Shape& dims = {}, bool keepdim = false, Loc loc = Loc::current());
Tensor mean(const Tensor& x, const Shape& dims = {}, bool keepdim = false,
            Loc loc = Loc::current());
Tensor prod(const Tensor& x, const Shape& dims = {}, bool keepdim = false,
            Loc loc = Loc::current());
Tensor amax(const Tensor& x, const Shape& dims = {}, bool keepdim = false,
            Loc loc = Loc::current());
Tensor amin(const Tensor& x, const Shape& dims = {}, bool keepdim = false,
            Loc loc = Loc::current());
Tensor argmax(const Tensor& x, std::optional<int64_t> dim = std::nullopt, bool keepdim = false,
              Loc loc = Loc::current());
Tensor argmin(const Tensor& x, std::optional<int64_t> dim = std::nullopt, bool keepdim = false,
              Loc loc = Loc::current());
// Σ(x - mean)² / (N - correction); correction 1 is Bessel's (PyTorch's default).
Tensor var(const Tensor& x, const Shape& dims = {}, int64_t correction = 1, bool keepdim = false,
           Loc loc = Loc::current());
Tensor std(const Tensor& x, const Shape& dims = {}, int64_t correction = 1, bool keepdim = false,
           Loc loc = Loc::current());
// (Σ|x|^p)^(1/p); p = inf gives max|x|, p = 0 the count of non-zeros.
Tensor norm(const Tensor& x, double p = 2, const Shape& dims = {}, bool keepdim = false,
            Loc loc = Loc::current());
// ln Σ e^x, computed as m + ln Σ e^(x-m) with m = max x so it never overflows.
Tensor logsumexp(const Tensor& x, int64_t dim, bool keepdim = false, Loc loc = Loc::current());
Tensor logsumexp(const Tensor& x, const Shape& dims, bool keepdim = false,
                 Loc loc = Loc::current());
Tensor softmax(const Tensor& x, int64_t dim, Loc loc = Loc::current());      // e^x / Σ e^x
Tensor log_softmax(const Tensor& x, int64_t dim, Loc loc = Loc::current());  // x - logsumexp(x)

// --- linear algebra ----------------------------------------------------------------------------
// NumPy semantics: 1-D·1-D is a dot product, 1-D operands gain and lose a dim, batch dims broadcast.
Tensor matmul(const Tensor& a, const Tensor& b, Loc loc = Loc::current());
Tensor mm(const Tensor& a, const Tensor& b, Loc loc = Loc::current());   // (n,k)·(k,m)
Tensor bmm(const Tensor& a, const Tensor& b, Loc loc = Loc::current());  // (b,n,k)·(b,k,m)
Tensor dot(const Tensor& a, const Tensor& b, Loc loc = Loc::current());  // Σ a_i b_i, 1-D
Tensor outer(const Tensor& a, const Tensor& b, Loc loc = Loc::current());  // a_i b_j

// --- joining, splitting, indexing ----------------------------------------------------------------
Tensor cat(const std::vector<Tensor>& tensors, int64_t dim = 0, Loc loc = Loc::current());
Tensor stack(const std::vector<Tensor>& tensors, int64_t dim = 0, Loc loc = Loc::current());
std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim = 0,
                          Loc loc = Loc::current());
std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim = 0,
                          Loc loc = Loc::current());
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index, Loc loc = Loc::current());
// out[i][j] = x[index[i][j]][j] for dim 0 (and likewise for other dims); index is i64.
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index, Loc loc = Loc::current());
// A copy of x with out[index[i][j]][j] += src[i][j] for dim 0 (and likewise).
Tensor scatter_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src,
                   Loc loc = Loc::current());
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b, Loc loc = Loc::current());
Tensor where(const Tensor& cond, const Tensor& a, Scalar b, Loc loc = Loc::current());
Tensor where(const Tensor& cond, Scalar a, const Tensor& b, Loc loc = Loc::current());
Tensor masked_fill(const Tensor& x, const Tensor& mask, Scalar value, Loc loc = Loc::current());
// i64 tensor with a trailing dim of num_classes (inferred as max + 1 when -1).
Tensor one_hot(const Tensor& labels, int64_t num_classes = -1, Loc loc = Loc::current());
Tensor tril(const Tensor& x, int64_t diagonal = 0, Loc loc = Loc::current());
Tensor triu(const Tensor& x, int64_t diagonal = 0, Loc loc = Loc::current());

// --- convolution and pooling over images (N, C, H, W); a 3-D (C, H, W) input is one image -------
// A pair of sizes (height, width); one number means both: `conv2d(x, w, b, /*stride=*/2)`.
struct Size2 {
  Size2(int64_t both) : h(both), w(both) {}  // NOLINT: implicit, as in PyTorch
  Size2(int64_t h, int64_t w) : h(h), w(w) {}
  int64_t h, w;
};
// Cross-correlation, as PyTorch's conv2d: weight (out, in/groups, kh, kw), bias (out) or undefined.
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias = {}, Size2 stride = 1,
              Size2 padding = 0, Size2 dilation = 1, int64_t groups = 1, Loc loc = Loc::current());
// Pooling; stride defaults to the kernel. Padding is at most half the kernel; max pooling never
// picks it, average pooling counts it as zeros (PyTorch's count_include_pad).
Tensor max_pool2d(const Tensor& x, Size2 kernel, std::optional<Size2> stride = std::nullopt,
                  Size2 padding = 0, Size2 dilation = 1, Loc loc = Loc::current());
// The maxima and, as i64, the flat position h*W + w of each in its input plane.
std::pair<Tensor, Tensor> max_pool2d_with_indices(const Tensor& x, Size2 kernel,
                                                  std::optional<Size2> stride = std::nullopt,
                                                  Size2 padding = 0, Size2 dilation = 1,
                                                  Loc loc = Loc::current());
Tensor avg_pool2d(const Tensor& x, Size2 kernel, std::optional<Size2> stride = std::nullopt,
                  Size2 padding = 0, Loc loc = Loc::current());
// Averages over PyTorch's adaptive bins: [floor(i·H/OH), ceil((i+1)·H/OH)).
Tensor adaptive_avg_pool2d(const Tensor& x, Size2 output_size, Loc loc = Loc::current());
// The columns convolution multiplies: (N, C·kh·kw, OH·OW), zeros where a window is in the padding
// (PyTorch's unfold). col2im (PyTorch's fold) is its adjoint: it sums columns back into
// (N, C, H, W) images of `image_size`.
Tensor im2col(const Tensor& x, Size2 kernel, Size2 stride = 1, Size2 padding = 0,
              Size2 dilation = 1, Loc loc = Loc::current());
Tensor col2im(const Tensor& cols, Size2 image_size, Size2 kernel, Size2 stride = 1,
              Size2 padding = 0, Size2 dilation = 1, Loc loc = Loc::current());

// --- threads --------------------------------------------------------------------------------------
// Threads for intra-op loops and for BLAS (tapegrad owns both pools). Default: all cores.
void set_num_threads(int n, Loc loc = Loc::current());
int get_num_threads();

}  // namespace tg
