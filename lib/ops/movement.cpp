// Views (reshape, permute, expand, slice, select, diagonal and the ops built on them) and the
// copying joins and splits (cat, stack, split, chunk).
#include <algorithm>

#include "autograd/node.h"
#include "ops/ops_common.h"

namespace tg {
namespace {

// Strides for viewing t with `shape` without copying, if its layout allows (PyTorch's
// computeStride): each group of dims that is contiguous in memory may be re-split freely.
std::optional<Shape> view_strides(const Shape& old_sizes, const Shape& old_strides,
                                  const Shape& shape, int64_t numel) {
  Shape out(shape.size());
  if (numel == 0 || old_sizes.empty()) return contiguous_strides(shape);
  int64_t view_d = static_cast<int64_t>(shape.size()) - 1;
  int64_t chunk_base = old_strides.empty() ? 1 : old_strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t d = static_cast<int64_t>(old_sizes.size()) - 1; d >= 0; --d) {
    tensor_numel *= old_sizes[d];
    if (d == 0 || (old_sizes[d - 1] != 1 && old_strides[d - 1] != tensor_numel * chunk_base)) {
      while (view_d >= 0 && (view_numel < tensor_numel || shape[view_d] == 1)) {
        out[view_d] = view_numel * chunk_base;
        view_numel *= shape[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) return std::nullopt;
      if (d > 0) {
        chunk_base = old_strides[d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  if (view_d != -1) return std::nullopt;
  return out;
}

// Resolves one -1 in a target shape and checks the element count.
Shape infer_shape(const Shape& shape, int64_t numel, const Shape& from, const char* op) {
  Shape out = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == -1) {
      TG_CHECK(infer < 0, "{}: only one dim can be -1, got shape {}", op, shape);
      infer = static_cast<int64_t>(i);
    } else {
      TG_CHECK(out[i] >= 0, "{}: invalid size {} in shape {}", op, out[i], shape);
      known *= out[i];
    }
  }
  if (infer >= 0) {
    TG_CHECK(known != 0 && numel % known == 0,
             "{}: shape {} is invalid for input of shape {} ({} elements)", op, shape, from, numel);
    out[infer] = numel / known;
  } else {
    TG_CHECK(known == numel, "{}: shape {} ({} elements) is invalid for input of shape {} ({} elements)",
             op, shape, known, from, numel);
  }
  return out;
}

}  // namespace

Tensor Tensor::view(const Shape& shape, Loc loc) const {
  OpScope scope("view", loc);
  check_defined(*this, "view");
  RecordScope rec{this};
  Shape target = infer_shape(shape, numel(), this->shape(), "view");
  auto strides = view_strides(this->shape(), this->strides(), target, numel());
  TG_CHECK(strides.has_value(),
           "view: shape {} is not compatible with the strides {} of the input (shape {}); use "
           "reshape, which copies when it must",
           target, this->strides(), this->shape());
  return rec.finish(OpKind::Reshape, make_view(*this, target, *strides, storage_offset()));
}

Tensor Tensor::reshape(const Shape& shape, Loc loc) const {
  OpScope scope("reshape", loc);
  check_defined(*this, "reshape");
  RecordScope rec{this};
  Shape target = infer_shape(shape, numel(), this->shape(), "reshape");
  if (auto strides = view_strides(this->shape(), this->strides(), target, numel()))
    return rec.finish(OpKind::Reshape, make_view(*this, target, *strides, storage_offset()));
  return rec.finish(OpKind::Reshape, contiguous().view(target));
}

Tensor Tensor::flatten(int64_t start_dim, int64_t end_dim, Loc loc) const {
  OpScope scope("flatten", loc);
  check_defined(*this, "flatten");
  if (dim() == 0) return reshape({1});
  int64_t s = wrap_dim(start_dim, dim(), "flatten"), e = wrap_dim(end_dim, dim(), "flatten");
  TG_CHECK(s <= e, "flatten: start_dim {} comes after end_dim {}", start_dim, end_dim);
  Shape target(shape().begin(), shape().begin() + s);
  int64_t n = 1;
  for (int64_t d = s; d <= e; ++d) n *= shape()[d];
  target.push_back(n);
  target.insert(target.end(), shape().begin() + e + 1, shape().end());
  return reshape(target);
}

Tensor Tensor::permute(const Shape& dims, Loc loc) const {
  OpScope scope("permute", loc);
  check_defined(*this, "permute");
  RecordScope rec{this};
  TG_CHECK(static_cast<int64_t>(dims.size()) == dim(),
           "permute: {} dims given for a tensor of {} dims (shape {})", dims.size(), dim(), shape());
  Shape sizes(dims.size()), strides(dims.size()), perm(dims.size());
  std::vector<bool> seen(dims.size(), false);
  for (size_t i = 0; i < dims.size(); ++i) {
    int64_t d = wrap_dim(dims[i], dim(), "permute");
    TG_CHECK(!seen[d], "permute: dim {} repeated in {}", d, dims);
    seen[d] = true;
    sizes[i] = shape()[d];
    strides[i] = this->strides()[d];
    perm[i] = d;
  }
  return rec.finish(OpKind::Permute, make_view(*this, sizes, strides, storage_offset()),
                    {.dims = perm});
}

Tensor Tensor::transpose(int64_t d0, int64_t d1, Loc loc) const {
  OpScope scope("transpose", loc);
  check_defined(*this, "transpose");
  if (dim() == 0) return *this;
  Shape perm(dim());
  for (int64_t i = 0; i < dim(); ++i) perm[i] = i;
  std::swap(perm[wrap_dim(d0, dim(), "transpose")], perm[wrap_dim(d1, dim(), "transpose")]);
  return permute(perm);
}

Tensor Tensor::t(Loc loc) const {
  OpScope scope("t", loc);
  check_defined(*this, "t");
  TG_CHECK(dim() <= 2, "t: expects a tensor of at most 2 dims, got shape {}; use transpose",
           shape());
  return dim() < 2 ? *this : transpose(0, 1);
}

Tensor Tensor::unsqueeze(int64_t d, Loc loc) const {
  OpScope scope("unsqueeze", loc);
  check_defined(*this, "unsqueeze");
  RecordScope rec{this};
  int64_t w = wrap_dim(d, dim() + 1, "unsqueeze");
  Shape sizes = shape(), strides = this->strides();
  int64_t st = w < dim() ? sizes[w] * strides[w] : 1;
  sizes.insert(sizes.begin() + w, 1);
  strides.insert(strides.begin() + w, st);
  return rec.finish(OpKind::Reshape, make_view(*this, sizes, strides, storage_offset()));
}

Tensor Tensor::squeeze(Loc loc) const {
  OpScope scope("squeeze", loc);
  check_defined(*this, "squeeze");
  RecordScope rec{this};
  Shape sizes, strides;
  for (int64_t d = 0; d < dim(); ++d)
    if (shape()[d] != 1) sizes.push_back(shape()[d]), strides.push_back(this->strides()[d]);
  return rec.finish(OpKind::Reshape, make_view(*this, sizes, strides, storage_offset()));
}

Tensor Tensor::squeeze(int64_t d, Loc loc) const {
  OpScope scope("squeeze", loc);
  check_defined(*this, "squeeze");
  if (dim() == 0) return *this;
  int64_t w = wrap_dim(d, dim(), "squeeze");
  if (shape()[w] != 1) return *this;
  RecordScope rec{this};
  Shape sizes = shape(), strides = this->strides();
  sizes.erase(sizes.begin() + w);
  strides.erase(strides.begin() + w);
  return rec.finish(OpKind::Reshape, make_view(*this, sizes, strides, storage_offset()));
}

Tensor Tensor::expand(const Shape& target, Loc loc) const {
  OpScope scope("expand", loc);
  check_defined(*this, "expand");
  RecordScope rec{this};
  TG_CHECK(target.size() >= static_cast<size_t>(dim()),
           "expand: the target shape {} has fewer dims than the input shape {}", target, shape());
  size_t lead = target.size() - static_cast<size_t>(dim());
  Shape sizes(target.size()), strides(target.size(), 0);
  for (size_t i = 0; i < target.size(); ++i) {
    if (i < lead) {
      TG_CHECK(target[i] >= 0, "expand: size -1 is not allowed for the new leading dim {} of {}",
               i, target);
      sizes[i] = target[i];
      continue;
    }
    int64_t have = shape()[i - lead];
    int64_t want = target[i] == -1 ? have : target[i];
    TG_CHECK(want == have || have == 1,
             "expand: cannot expand shape {} to {} (dim {} has size {}, not 1)", shape(), target,
             i - lead, have);
    sizes[i] = want;
    strides[i] = want == have ? this->strides()[i - lead] : 0;
  }
  return rec.finish(OpKind::Expand, make_view(*this, sizes, strides, storage_offset()));
}

Tensor Tensor::expand_as(const Tensor& other, Loc loc) const { return expand(other.shape(), loc); }

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end, int64_t step, Loc loc) const {
  OpScope scope("slice", loc);
  check_defined(*this, "slice");
  TG_CHECK(dim() > 0, "slice: cannot slice a 0-d tensor");
  TG_CHECK(step > 0, "slice: step must be positive, got {}", step);
  int64_t w = wrap_dim(d, dim(), "slice");
  RecordScope rec{this};
  int64_t n = shape()[w];
  // Python-style clamping: negative bounds count from the end, out-of-range ones clamp.
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape sizes = shape(), strides = this->strides();
  sizes[w] = (end - start + step - 1) / step;
  strides[w] *= step;
  return rec.finish(OpKind::Slice,
                    make_view(*this, sizes, strides, storage_offset() + start * this->strides()[w]),
                    {.dim = w, .i1 = start, .i2 = step});
}

Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length, Loc loc) const {
  OpScope scope("narrow", loc);
  check_defined(*this, "narrow");
  TG_CHECK(dim() > 0, "narrow: cannot narrow a 0-d tensor");
  int64_t w = wrap_dim(d, dim(), "narrow");
  int64_t n = shape()[w];
  if (start < 0) start += n;
  TG_CHECK(start >= 0 && length >= 0 && start + length <= n,
           "narrow: start {} and length {} are out of range for dim {} of size {} (shape {})",
           start, length, d, n, shape());
  return slice(w, start, start + length);
}

Tensor Tensor::select(int64_t d, int64_t index, Loc loc) const {
  OpScope scope("select", loc);
  check_defined(*this, "select");
  TG_CHECK(dim() > 0, "select: cannot select from a 0-d tensor");
  int64_t w = wrap_dim(d, dim(), "select");
  int64_t n = shape()[w];
  TG_CHECK(index >= -n && index < n, "select: index {} is out of range for dim {} of size {} (shape {})",
           index, d, n, shape());
  if (index < 0) index += n;
  RecordScope rec{this};
  Shape sizes = shape(), strides = this->strides();
  int64_t offset = storage_offset() + index * strides[w];
  sizes.erase(sizes.begin() + w);
  strides.erase(strides.begin() + w);
  return rec.finish(OpKind::Select, make_view(*this, sizes, strides, offset),
                    {.dim = w, .i1 = index});
}

Tensor Tensor::diagonal(int64_t offset, int64_t dim1, int64_t dim2, Loc loc) const {
  OpScope scope("diagonal", loc);
  check_defined(*this, "diagonal");
  TG_CHECK(dim() >= 2, "diagonal: needs at least 2 dims, got shape {}", shape());
  int64_t a = wrap_dim(dim1, dim(), "diagonal"), b = wrap_dim(dim2, dim(), "diagonal");
  TG_CHECK(a != b, "diagonal: dim1 and dim2 are both {}", a);
  RecordScope rec{this};
  int64_t len, start = storage_offset();
  if (offset >= 0) {
    len = std::max<int64_t>(std::min(shape()[a], shape()[b] - offset), 0);
    if (len > 0) start += offset * strides()[b];
  } else {
    len = std::max<int64_t>(std::min(shape()[a] + offset, shape()[b]), 0);
    if (len > 0) start -= offset * strides()[a];
  }
  Shape sizes, st;
  for (int64_t d = 0; d < dim(); ++d)
    if (d != a && d != b) sizes.push_back(shape()[d]), st.push_back(strides()[d]);
  sizes.push_back(len);
  st.push_back(strides()[a] + strides()[b]);
  return rec.finish(OpKind::Diagonal, make_view(*this, sizes, st, start),
                    {.dim = offset, .i1 = a, .i2 = b});
}

std::vector<Tensor> Tensor::split(int64_t split_size, int64_t d, Loc loc) const {
  OpScope scope("split", loc);
  check_defined(*this, "split");
  TG_CHECK(dim() > 0, "split: cannot split a 0-d tensor");
  TG_CHECK(split_size > 0, "split: split_size must be positive, got {}", split_size);
  int64_t w = wrap_dim(d, dim(), "split");
  std::vector<Tensor> out;
  int64_t n = shape()[w];
  for (int64_t s = 0; s < n; s += split_size) out.push_back(slice(w, s, std::min(n, s + split_size)));
  if (n == 0) out.push_back(*this);
  return out;
}

std::vector<Tensor> Tensor::chunk(int64_t chunks, int64_t d, Loc loc) const {
  OpScope scope("chunk", loc);
  check_defined(*this, "chunk");
  TG_CHECK(chunks > 0, "chunk: chunks must be positive, got {}", chunks);
  TG_CHECK(dim() > 0, "chunk: cannot chunk a 0-d tensor");
  int64_t n = shape()[wrap_dim(d, dim(), "chunk")];
  return split(std::max<int64_t>((n + chunks - 1) / chunks, 1), d);
}

std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim, Loc loc) {
  return x.split(split_size, dim, loc);
}
std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim, Loc loc) {
  return x.chunk(chunks, dim, loc);
}

Tensor cat(const std::vector<Tensor>& tensors, int64_t dim, Loc loc) {
  OpScope scope("cat", loc);
  TG_CHECK(!tensors.empty(), "cat: expected a non-empty list of tensors");
  for (size_t i = 0; i < tensors.size(); ++i) check_defined(tensors[i], "cat", "a list element");
  const Tensor& first = tensors[0];
  TG_CHECK(first.dim() > 0, "cat: zero-dimensional tensor (at position 0) cannot be concatenated");
  int64_t w = wrap_dim(dim, first.dim(), "cat");
  Shape shape = first.shape();
  DType dtype = first.dtype();
  int64_t total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    check_same_device(first, t, "cat");
    TG_CHECK(t.dim() == first.dim(), "cat: tensor {} has shape {}, tensor 0 has shape {}: ranks differ",
             i, t.shape(), first.shape());
    for (int64_t d = 0; d < first.dim(); ++d)
      TG_CHECK(d == w || t.shape()[d] == shape[d],
               "cat: tensor {} has shape {}, tensor 0 has shape {}: sizes must match except in dim {}",
               i, t.shape(), shape, w);
    total += t.shape()[w];
    dtype = promote_types(dtype, t.dtype());
  }
  shape[w] = total;
  RecordScope rec(tensors);
  Tensor out = make_tensor(shape, dtype, first.device());
  int64_t at = 0;
  for (const Tensor& t : tensors) {
    int64_t n = t.shape()[w];
    if (n > 0) backend_of(out).copy(impl_of(out.slice(w, at, at + n)), impl_of(t));
    at += n;
  }
  return rec.finish(OpKind::Cat, out, {.dim = w});
}

Tensor stack(const std::vector<Tensor>& tensors, int64_t dim, Loc loc) {
  OpScope scope("stack", loc);
  TG_CHECK(!tensors.empty(), "stack: expected a non-empty list of tensors");
  for (size_t i = 0; i < tensors.size(); ++i) {
    check_defined(tensors[i], "stack", "a list element");
    TG_CHECK(tensors[i].shape() == tensors[0].shape(),
             "stack: tensor {} has shape {}, tensor 0 has shape {}: all must match", i,
             tensors[i].shape(), tensors[0].shape());
  }
  int64_t w = wrap_dim(dim, tensors[0].dim() + 1, "stack");
  std::vector<Tensor> parts;
  for (const Tensor& t : tensors) parts.push_back(t.unsqueeze(w));
  return cat(parts, w);
}

// --- bprops: the adjoint of each view, and of cat ----------------------------------------------

namespace {

void reshape_bprop(BpropCtx& ctx) { ctx.set(0, ctx.grad.reshape(ctx.input_shape(0))); }

void permute_bprop(BpropCtx& ctx) {
  const std::vector<int64_t>& perm = ctx.attrs().dims;
  Shape inverse(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) inverse[perm[i]] = static_cast<int64_t>(i);
  ctx.set(0, ctx.grad.permute(inverse));
}

void expand_bprop(BpropCtx& ctx) { ctx.set(0, sum_to(ctx.grad, ctx.input_shape(0))); }

// g placed at [start, start + step·n) of a zero tensor of the input's shape along `dim`.
Tensor embed_slice(const BpropCtx& ctx, const Tensor& g, int64_t dim, int64_t start, int64_t step) {
  const Shape& in = ctx.input_shape(0);
  int64_t n = g.shape()[dim];
  TensorOptions opts{.dtype = g.dtype(), .device = g.device()};
  if (step == 1) {
    Shape before = in, after = in;
    before[dim] = start;
    after[dim] = in[dim] - start - n;
    return cat({zeros(before, opts), g, zeros(after, opts)}, dim);
  }
  Shape along(g.dim(), 1);
  along[dim] = n;
  Tensor index = (arange(n, {.device = g.device()}) * step + start).reshape(along);
  return zeros(in, opts).scatter_add(dim, index.expand(g.shape()).contiguous(), g);
}

void slice_bprop(BpropCtx& ctx) {
  const NodeAttrs& a = ctx.attrs();
  ctx.set(0, embed_slice(ctx, ctx.grad, a.dim, a.i1, a.i2));
}

void select_bprop(BpropCtx& ctx) {
  const NodeAttrs& a = ctx.attrs();
  ctx.set(0, embed_slice(ctx, ctx.grad.unsqueeze(a.dim), a.dim, a.i1, 1));
}

// The diagonal's gradient on the diagonal of a zero matrix: built in the layout (other dims...,
// dim1, dim2) by masking a broadcast of g, then permuted back.
void diagonal_bprop(BpropCtx& ctx) {
  const Shape& in = ctx.input_shape(0);
  int64_t offset = ctx.attrs().dim, d1 = ctx.attrs().i1, d2 = ctx.attrs().i2;
  int64_t rows = in[d1], cols = in[d2];
  Tensor g = ctx.grad;
  TensorOptions opts{.dtype = g.dtype(), .device = g.device()};
  int64_t len = g.shape()[g.dim() - 1];
  int64_t target = offset >= 0 ? rows : cols;  // element k sits in row k, or in column k
  Shape pad = g.shape();
  pad[pad.size() - 1] = target - len;
  Tensor padded = cat({g, zeros(pad, opts)}, -1);
  padded = offset >= 0 ? padded.unsqueeze(-1) : padded.unsqueeze(-2);
  Tensor i = arange(rows, {.device = g.device()}).unsqueeze(1);
  Tensor j = arange(cols, {.device = g.device()}).unsqueeze(0);
  Tensor full = where(j - i == offset, padded, 0.0);
  Shape layout;
  for (int64_t d = 0; d < static_cast<int64_t>(in.size()); ++d)
    if (d != d1 && d != d2) layout.push_back(d);
  layout.push_back(d1);
  layout.push_back(d2);
  Shape inverse(layout.size());
  for (size_t k = 0; k < layout.size(); ++k) inverse[layout[k]] = static_cast<int64_t>(k);
  ctx.set(0, full.permute(inverse));
}

void cat_bprop(BpropCtx& ctx) {
  int64_t dim = ctx.attrs().dim, at = 0;
  for (size_t i = 0; i < ctx.num_inputs(); ++i) {
    int64_t n = ctx.input_shape(i)[dim];
    if (ctx.needs(i)) ctx.set(i, ctx.grad.narrow(dim, at, n));
    at += n;
  }
}

const bool registered = [] {
  register_bprop(OpKind::Reshape, reshape_bprop, kSaveNone);
  register_bprop(OpKind::Permute, permute_bprop, kSaveNone);
  register_bprop(OpKind::Expand, expand_bprop, kSaveNone);
  register_bprop(OpKind::Slice, slice_bprop, kSaveNone);
  register_bprop(OpKind::Select, select_bprop, kSaveNone);
  register_bprop(OpKind::Diagonal, diagonal_bprop, kSaveNone);
  register_bprop(OpKind::Cat, cat_bprop, kSaveNone);
  return true;
}();

}  // namespace

}  // namespace tg
