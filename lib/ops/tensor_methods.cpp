// Tensor methods: each forwards to the free function of the same name (ops.h).
#include "ops/ops_common.h"

namespace tg {

Tensor Tensor::neg(Loc loc) const { return tg::neg(*this, loc); }
Tensor Tensor::exp(Loc loc) const { return tg::exp(*this, loc); }
Tensor Tensor::log(Loc loc) const { return tg::log(*this, loc); }
Tensor Tensor::log1p(Loc loc) const { return tg::log1p(*this, loc); }
Tensor Tensor::expm1(Loc loc) const { return tg::expm1(*this, loc); }
Tensor Tensor::sqrt(Loc loc) const { return tg::sqrt(*this, loc); }
Tensor Tensor::rsqrt(Loc loc) const { return tg::rsqrt(*this, loc); }
Tensor Tensor::abs(Loc loc) const { return tg::abs(*this, loc); }
Tensor Tensor::sign(Loc loc) const { return tg::sign(*this, loc); }
Tensor Tensor::sin(Loc loc) const { return tg::sin(*this, loc); }
Tensor Tensor::cos(Loc loc) const { return tg::cos(*this, loc); }
Tensor Tensor::tanh(Loc loc) const { return tg::tanh(*this, loc); }
Tensor Tensor::sigmoid(Loc loc) const { return tg::sigmoid(*this, loc); }
Tensor Tensor::relu(Loc loc) const { return tg::relu(*this, loc); }
Tensor Tensor::gelu(Loc loc) const { return tg::gelu(*this, loc); }
Tensor Tensor::erf(Loc loc) const { return tg::erf(*this, loc); }
Tensor Tensor::softplus(Loc loc) const { return tg::softplus(*this, loc); }
Tensor Tensor::log_sigmoid(Loc loc) const { return tg::log_sigmoid(*this, loc); }
Tensor Tensor::logical_not(Loc loc) const { return tg::logical_not(*this, loc); }
Tensor Tensor::maximum(const Tensor& o, Loc loc) const { return tg::maximum(*this, o, loc); }
Tensor Tensor::minimum(const Tensor& o, Loc loc) const { return tg::minimum(*this, o, loc); }
Tensor Tensor::eq(const Tensor& o, Loc loc) const { return tg::eq(*this, o, loc); }
Tensor Tensor::ne(const Tensor& o, Loc loc) const { return tg::ne(*this, o, loc); }
Tensor Tensor::lt(const Tensor& o, Loc loc) const { return tg::lt(*this, o, loc); }
Tensor Tensor::le(const Tensor& o, Loc loc) const { return tg::le(*this, o, loc); }
Tensor Tensor::gt(const Tensor& o, Loc loc) const { return tg::gt(*this, o, loc); }
Tensor Tensor::ge(const Tensor& o, Loc loc) const { return tg::ge(*this, o, loc); }
Tensor Tensor::logical_and(const Tensor& o, Loc loc) const { return tg::logical_and(*this, o, loc); }
Tensor Tensor::logical_or(const Tensor& o, Loc loc) const { return tg::logical_or(*this, o, loc); }
Tensor Tensor::matmul(const Tensor& o, Loc loc) const { return tg::matmul(*this, o, loc); }
Tensor Tensor::mm(const Tensor& o, Loc loc) const { return tg::mm(*this, o, loc); }
Tensor Tensor::bmm(const Tensor& o, Loc loc) const { return tg::bmm(*this, o, loc); }
Tensor Tensor::dot(const Tensor& o, Loc loc) const { return tg::dot(*this, o, loc); }
Tensor Tensor::pow(const Tensor& e, Loc loc) const { return tg::pow(*this, e, loc); }
Tensor Tensor::pow(Scalar e, Loc loc) const { return tg::pow(*this, e, loc); }
Tensor Tensor::clamp(std::optional<Scalar> lo, std::optional<Scalar> hi, Loc loc) const {
  return tg::clamp(*this, lo, hi, loc);
}
Tensor Tensor::sum(const Shape& dims, bool keepdim, Loc loc) const {
  return tg::sum(*this, dims, keepdim, loc);
}
Tensor Tensor::mean(const Shape& dims, bool keepdim, Loc loc) const {
  return tg::mean(*this, dims, keepdim, loc);
}
Tensor Tensor::prod(const Shape& dims, bool keepdim, Loc loc) const {
  return tg::prod(*this, dims, keepdim, loc);
}
Tensor Tensor::amax(const Shape& dims, bool keepdim, Loc loc) const {
  return tg::amax(*this, dims, keepdim, loc);
}
Tensor Tensor::amin(const Shape& dims, bool keepdim, Loc loc) const {
  return tg::amin(*this, dims, keepdim, loc);
}
Tensor Tensor::argmax(std::optional<int64_t> dim, bool keepdim, Loc loc) const {
  return tg::argmax(*this, dim, keepdim, loc);
}
Tensor Tensor::argmin(std::optional<int64_t> dim, bool keepdim, Loc loc) const {
  return tg::argmin(*this, dim, keepdim, loc);
}
Tensor Tensor::var(const Shape& dims, int64_t correction, bool keepdim, Loc loc) const {
  return tg::var(*this, dims, correction, keepdim, loc);
}
Tensor Tensor::std(const Shape& dims, int64_t correction, bool keepdim, Loc loc) const {
  return tg::std(*this, dims, correction, keepdim, loc);
}
Tensor Tensor::norm(double p, const Shape& dims, bool keepdim, Loc loc) const {
  return tg::norm(*this, p, dims, keepdim, loc);
}
Tensor Tensor::logsumexp(const Shape& dims, bool keepdim, Loc loc) const {
  return tg::logsumexp(*this, dims, keepdim, loc);
}
Tensor Tensor::softmax(int64_t dim, Loc loc) const { return tg::softmax(*this, dim, loc); }
Tensor Tensor::log_softmax(int64_t dim, Loc loc) const { return tg::log_softmax(*this, dim, loc); }
Tensor Tensor::index_select(int64_t dim, const Tensor& index, Loc loc) const {
  return tg::index_select(*this, dim, index, loc);
}
Tensor Tensor::gather(int64_t dim, const Tensor& index, Loc loc) const {
  return tg::gather(*this, dim, index, loc);
}
Tensor Tensor::scatter_add(int64_t dim, const Tensor& index, const Tensor& src, Loc loc) const {
  return tg::scatter_add(*this, dim, index, src, loc);
}
Tensor Tensor::masked_fill(const Tensor& mask, Scalar value, Loc loc) const {
  return tg::masked_fill(*this, mask, value, loc);
}
Tensor Tensor::tril(int64_t diagonal, Loc loc) const { return tg::tril(*this, diagonal, loc); }
Tensor Tensor::triu(int64_t diagonal, Loc loc) const { return tg::triu(*this, diagonal, loc); }

}  // namespace tg
