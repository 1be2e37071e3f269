// tg::Tensor: a cheap handle to shared, strided, typed storage on a device.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <type_traits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tapegrad/device.h"
#include "tapegrad/dtype.h"
#include "tapegrad/error.h"
#include "tapegrad/shape.h"

namespace tg {

struct TensorImpl;  // lib/core/tensor_impl.h: storage, sizes, strides, offset, dtype
class Tensor;
class Node;  // autograd.h: one recorded op

// Options of factories, by designated initializers: `zeros({2, 3}, {.dtype = kF64})`.
// An unset dtype means f32 for floating factories, or the element type for `tensor(...)`.
struct TensorOptions {
  std::optional<DType> dtype = std::nullopt;
  Device device = kCPU;
};

// The left (or only tensor) operand of an operator, remembering the user's line: `a + b` cannot
// take a defaulted source_location, but the conversion to At can.
struct At {
  At(const Tensor& t, Loc loc = Loc::current()) : t(t), loc(loc) {}  // NOLINT: implicit
  const Tensor& t;
  Loc loc;
};

class Tensor {
 public:
  Tensor() = default;  // undefined: defined() is false
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // --- metadata -------------------------------------------------------------------------------
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  const Shape& sizes() const { return shape(); }
  const Shape& strides() const;
  int64_t size(int64_t dim, Loc loc = Loc::current()) const;  // negative dims count from the end
  int64_t stride(int64_t dim, Loc loc = Loc::current()) const;
  int64_t dim() const;
  int64_t numel() const;
  int64_t storage_offset() const;
  DType dtype() const;
  Device device() const;
  size_t element_size() const { return tg::element_size(dtype()); }
  bool is_contiguous() const;
  // Bumped by every in-place op on any view of the same storage (autograd checks it).
  uint64_t version() const;
  // True when both tensors view the same storage.
  bool is_alias_of(const Tensor& other) const;
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  std::string str() const;  // what `std::cout << t` prints

  // --- element access (copies to the host when the tensor is on a device) --------------------
  template <class T> T item(Loc loc = Loc::current()) const {
    T v;
    item_into(dtype_of_v<T>, &v, loc);
    return v;
  }
  template <class T> std::vector<T> to_vector(Loc loc = Loc::current()) const {
    std::vector<T> v(static_cast<size_t>(numel()));
    to_vector_into(dtype_of_v<T>, v.data(), loc);
    return v;
  }
  // Pointer to the first element; T must match dtype() and the tensor must be on the CPU.
  template <class T> T* data_ptr(Loc loc = Loc::current()) const {
    return static_cast<T*>(data_ptr_checked(dtype_of_v<T>, loc));
  }
  void* raw_data_ptr() const;  // no checks

  // --- conversions and copies -----------------------------------------------------------------
  Tensor contiguous(Loc loc = Loc::current()) const;
  Tensor to(DType dtype, Loc loc = Loc::current()) const;
  Tensor to(Device device, Loc loc = Loc::current()) const;
  Tensor clone(Loc loc = Loc::current()) const;

  // --- views (share storage, never copy) ------------------------------------------------------
  Tensor reshape(const Shape& shape, Loc loc = Loc::current()) const;  // copies if it must
  Tensor view(const Shape& shape, Loc loc = Loc::current()) const;     // throws if it can't view
  Tensor permute(const Shape& dims, Loc loc = Loc::current()) const;
  Tensor transpose(int64_t d0, int64_t d1, Loc loc = Loc::current()) const;
  Tensor t(Loc loc = Loc::current()) const;  // transpose of a 1-D or 2-D tensor
  Tensor unsqueeze(int64_t dim, Loc loc = Loc::current()) const;
  Tensor squeeze(Loc loc = Loc::current()) const;  // all size-1 dims
  Tensor squeeze(int64_t dim, Loc loc = Loc::current()) const;
  Tensor expand(const Shape& shape, Loc loc = Loc::current()) const;  // -1 keeps a size
  Tensor expand_as(const Tensor& other, Loc loc = Loc::current()) const;
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1, Loc loc = Loc::current()) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1,
               Loc loc = Loc::current()) const;
  Tensor narrow(int64_t dim, int64_t start, int64_t length, Loc loc = Loc::current()) const;
  Tensor select(int64_t dim, int64_t index, Loc loc = Loc::current()) const;
  Tensor diagonal(int64_t offset = 0, int64_t dim1 = 0, int64_t dim2 = 1,
                  Loc loc = Loc::current()) const;
  std::vector<Tensor> split(int64_t split_size, int64_t dim = 0, Loc loc = Loc::current()) const;
  std::vector<Tensor> chunk(int64_t chunks, int64_t dim = 0, Loc loc = Loc::current()) const;

  // --- math (see ops.h for formulas) ----------------------------------------------------------
  Tensor neg(Loc loc = Loc::current()) const;
  Tensor exp(Loc loc = Loc::current()) const;
  Tensor log(Loc loc = Loc::current()) const;
  Tensor log1p(Loc loc = Loc::current()) const;
  Tensor expm1(Loc loc = Loc::current()) const;
  Tensor sqrt(Loc loc = Loc::current()) const;
  Tensor rsqrt(Loc loc = Loc::current()) const;
  Tensor abs(Loc loc = Loc::current()) const;
  Tensor sign(Loc loc = Loc::current()) const;
  Tensor sin(Loc loc = Loc::current()) const;
  Tensor cos(Loc loc = Loc::current()) const;
  Tensor tanh(Loc loc = Loc::current()) const;
  Tensor sigmoid(Loc loc = Loc::current()) const;
  Tensor relu(Loc loc = Loc::current()) const;
  Tensor gelu(Loc loc = Loc::current()) const;
  Tensor erf(Loc loc = Loc::current()) const;
  Tensor softplus(Loc loc = Loc::current()) const;
  Tensor log_sigmoid(Loc loc = Loc::current()) const;
  Tensor pow(const Tensor& exponent, Loc loc = Loc::current()) const;
  Tensor pow(Scalar exponent, Loc loc = Loc::current()) const;
  Tensor clamp(std::optional<Scalar> min, std::optional<Scalar> max,
               Loc loc = Loc::current()) const;
  Tensor maximum(const Tensor& other, Loc loc = Loc::current()) const;
  Tensor minimum(const Tensor& other, Loc loc = Loc::current()) const;
  Tensor eq(const Tensor& other, Loc loc = Loc::current()) const;
  Tensor ne(const Tensor& other, Loc loc = Loc::current()) const;
  Tensor lt(const Tensor& other, Loc loc = Loc::current()) const;
  Tensor le(const Tensor& other, Loc loc = Loc::current()) const;
  Tensor gt(const Tensor& other, Loc loc = Loc::current()) const;
  Tensor ge(const Tensor& other, Loc loc = Loc::current()) const;
  Tensor logical_and(const Tensor& other, Loc loc = Loc::current()) const;
  Tensor logical_or(const Tensor& other, Loc loc = Loc::current()) const;
  Tensor logical_not(Loc loc = Loc::current()) const;

  // --- reductions: over `dims` (all when empty), keeping them as size 1 when keepdim ----------
  Tensor sum(const Shape& dims = {}, bool keepdim = false, Loc loc = Loc::current()) const;
  Tensor mean(const Shape& dims = {}, bool keepdim = false, Loc loc = Loc::current()) const;
  Tensor prod(const Shape& dims = {}, bool keepdim = false, Loc loc = Loc::current()) const;
  Tensor amax(const Shape& dims = {}, bool keepdim = false, Loc loc = Loc::current()) const;
  Tensor amin(const Shape& dims = {}, bool keepdim = false, Loc loc = Loc::current()) const;
  // Index of the first maximum along `dim`, or into the flattened tensor when dim is unset.
  Tensor argmax(std::optional<int64_t> dim = std::nullopt, bool keepdim = false,
                Loc loc = Loc::current()) const;
  Tensor argmin(std::optional<int64_t> dim = std::nullopt, bool keepdim = false,
                Loc loc = Loc::current()) const;
  Tensor var(const Shape& dims = {}, int64_t correction = 1, bool keepdim = false,
             Loc loc = Loc::current()) const;
  Tensor std(const Shape& dims = {}, int64_t correction = 1, bool keepdim = false,
             Loc loc = Loc::current()) const;
  Tensor norm(double p = 2, const Shape& dims = {}, bool keepdim = false,
              Loc loc = Loc::current()) const;
  Tensor logsumexp(const Shape& dims, bool keepdim = false, Loc loc = Loc::current()) const;
  Tensor softmax(int64_t dim, Loc loc = Loc::current()) const;
  Tensor log_softmax(int64_t dim, Loc loc = Loc::current()) const;

  // --- linear algebra -------------------------------------------------------------------------
  Tensor matmul(const Tensor& other, Loc loc = Loc::current()) const;
  Tensor mm(const Tensor& other, Loc loc = Loc::current()) const;
  Tensor bmm(const Tensor& other, Loc loc = Loc::current()) const;
  Tensor dot(const Tensor& other, Loc loc = Loc::current()) const;

  // --- indexing -------------------------------------------------------------------------------
  Tensor index_select(int64_t dim, const Tensor& index, Loc loc = Loc::current()) const;
  Tensor gather(int64_t dim, const Tensor& index, Loc loc = Loc::current()) const;
  Tensor scatter_add(int64_t dim, const Tensor& index, const Tensor& src,
                     Loc loc = Loc::current()) const;
  Tensor masked_fill(const Tensor& mask, Scalar value, Loc loc = Loc::current()) const;
  Tensor tril(int64_t diagonal = 0, Loc loc = Loc::current()) const;
  Tensor triu(int64_t diagonal = 0, Loc loc = Loc::current()) const;

  // --- autograd (autograd.h) -------------------------------------------------------------------
  // Makes this leaf record the ops that use it; only floating tensors can require grad.
  Tensor& requires_grad_(bool requires_grad = true, Loc loc = Loc::current());
  bool requires_grad() const;
  bool is_leaf() const;  // made by the user, not by a recorded op
  // The gradient accumulated by backward(): undefined before the first one. A handle: zero_() on
  // it clears the stored gradient.
  Tensor grad() const;
  void set_grad(const Tensor& grad, Loc loc = Loc::current());  // an undefined tensor clears it
  std::shared_ptr<Node> grad_fn() const;  // the node that made this tensor; null for a leaf
  // The same data, cut from the tape (shares storage and version counter).
  Tensor detach() const;
  // Makes this leaf hold src's data (storage, shape, dtype, device) while every handle to it stays
  // valid: how a module moves its parameters to a device or dtype. The grad is cleared when the
  // shape, dtype or device changes.
  void set_data(const Tensor& src, Loc loc = Loc::current());
  // backward() also fills grad() of this non-leaf tensor.
  void retain_grad(Loc loc = Loc::current());
  bool retains_grad() const;
  // Runs when the gradient of this tensor is computed; a hook returning a defined tensor replaces
  // the gradient. `x.register_hook([](const Tensor& g) { return g * 2; })`.
  template <class F> void register_hook(F&& hook, Loc loc = Loc::current()) {
    if constexpr (std::is_void_v<std::invoke_result_t<F, const Tensor&>>) {
      add_hook([h = std::forward<F>(hook)](const Tensor& g) mutable { h(g); return Tensor(); }, loc);
    } else {
      add_hook(std::function<Tensor(const Tensor&)>(std::forward<F>(hook)), loc);
    }
  }
  // Accumulates d(this)/d(leaf) into the grad() of every leaf that requires grad. `gradient` may be
  // left out for a one-element tensor. The tape's saved tensors are freed unless retain_graph.
  // With create_graph, a leaf's grad() keeps a tape that ends in the leaf itself: clear it with
  // set_grad({}) when done (as in PyTorch), or use tg::grad, which returns the gradients instead.
  void backward(const Tensor& gradient = {}, bool retain_graph = false, bool create_graph = false,
                Loc loc = Loc::current()) const;
  // A name shown by print_graph and to_dot.
  Tensor& set_name(std::string name);
  std::string name() const;

  // --- in place: each bumps the version shared by all views of the storage --------------------
  Tensor& add_(const Tensor& other, Loc loc = Loc::current());
  Tensor& add_(Scalar other, Loc loc = Loc::current());
  Tensor& sub_(const Tensor& other, Loc loc = Loc::current());
  Tensor& sub_(Scalar other, Loc loc = Loc::current());
  Tensor& mul_(const Tensor& other, Loc loc = Loc::current());
  Tensor& mul_(Scalar other, Loc loc = Loc::current());
  Tensor& div_(const Tensor& other, Loc loc = Loc::current());
  Tensor& div_(Scalar other, Loc loc = Loc::current());
  // LibTorch's scaled updates, one pass over memory outside autograd and tracing (Note [Scaled
  // in-place updates]); the scale is a number or a one-element tensor (a learning rate that a
  // traced step reads afresh):
  //   add_(other, alpha):        self += alpha · other
  //   addcmul_(t1, t2, value):   self += value · t1 · t2
  //   addcdiv_(t1, t2, value):   self += value · (t1 / t2)
  // The operands broadcast to self's shape; the results are those of the plain ops in this order.
  Tensor& add_(const Tensor& other, Scalar alpha, Loc loc = Loc::current());
  Tensor& add_(const Tensor& other, const Tensor& alpha, Loc loc = Loc::current());
  Tensor& addcmul_(const Tensor& t1, const Tensor& t2, Scalar value = 1, Loc loc = Loc::current());
  Tensor& addcmul_(const Tensor& t1, const Tensor& t2, const Tensor& value, Loc loc = Loc::current());
  Tensor& addcdiv_(const Tensor& t1, const Tensor& t2, Scalar value = 1, Loc loc = Loc::current());
  Tensor& addcdiv_(const Tensor& t1, const Tensor& t2, const Tensor& value, Loc loc = Loc::current());
  Tensor& zero_(Loc loc = Loc::current());
  Tensor& fill_(Scalar value, Loc loc = Loc::current());
  Tensor& copy_(const Tensor& src, Loc loc = Loc::current());
  Tensor& clamp_(std::optional<Scalar> min, std::optional<Scalar> max, Loc loc = Loc::current());
  Tensor& operator+=(At other) { return add_(other.t, other.loc); }
  Tensor& operator-=(At other) { return sub_(other.t, other.loc); }
  Tensor& operator*=(At other) { return mul_(other.t, other.loc); }
  Tensor& operator/=(At other) { return div_(other.t, other.loc); }
  Tensor& operator+=(Scalar other) { return add_(other); }
  Tensor& operator-=(Scalar other) { return sub_(other); }
  Tensor& operator*=(Scalar other) { return mul_(other); }
  Tensor& operator/=(Scalar other) { return div_(other); }

 private:
  void item_into(DType want, void* out, Loc loc) const;
  void to_vector_into(DType want, void* out, Loc loc) const;
  void* data_ptr_checked(DType want, Loc loc) const;
  void add_hook(std::function<Tensor(const Tensor&)> hook, Loc loc);

  std::shared_ptr<TensorImpl> impl_;
};

}  // namespace tg
