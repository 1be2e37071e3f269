// Sliding-window ops over (N, C, H, W) images: im2col and col2im (adjoint of each other),
// conv2d (a gemm over im2col's columns), max and average pooling, and their bprops. Each bprop is
// written with these public ops, so convolutions differentiate to any order.
#include <cmath>

#include "autograd/node.h"
#include "ops/ops_common.h"

namespace tg {
namespace {

Window2d make_window(Size2 kernel, Size2 stride, Size2 padding, Size2 dilation, const char* op) {
  TG_CHECK(kernel.h > 0 && kernel.w > 0, "{}: kernel size must be positive, got ({}, {})", op,
           kernel.h, kernel.w);
  TG_CHECK(stride.h > 0 && stride.w > 0, "{}: stride must be positive, got ({}, {})", op, stride.h,
           stride.w);
  TG_CHECK(padding.h >= 0 && padding.w >= 0, "{}: padding must be non-negative, got ({}, {})", op,
           padding.h, padding.w);
  TG_CHECK(dilation.h > 0 && dilation.w > 0, "{}: dilation must be positive, got ({}, {})", op,
           dilation.h, dilation.w);
  return {kernel.h, kernel.w, stride.h, stride.w, padding.h, padding.w, dilation.h, dilation.w};
}

// The window as node attrs (dims) and back; i1 holds conv2d's groups.
NodeAttrs window_attrs(const Window2d& w, int64_t groups = 1) {
  return {.dims = {w.kh, w.kw, w.sh, w.sw, w.ph, w.pw, w.dh, w.dw}, .i1 = groups};
}
Window2d window_of(const NodeAttrs& a) {
  const auto& d = a.dims;
  return {d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]};
}
Size2 kernel_of(const Window2d& w) { return {w.kh, w.kw}; }
Size2 stride_of(const Window2d& w) { return {w.sh, w.sw}; }
Size2 padding_of(const Window2d& w) { return {w.ph, w.pw}; }
Size2 dilation_of(const Window2d& w) { return {w.dh, w.dw}; }

// Checks a 4-D floating image and that the window gives a non-empty output; returns (OH, OW).
std::pair<int64_t, int64_t> check_image(const Tensor& x, const Window2d& w, const char* op) {
  check_defined(x, op);
  TG_CHECK(x.dim() == 4, "{}: expected an (N, C, H, W) input, got shape {}", op, x.shape());
  TG_CHECK(is_floating(x.dtype()), "{}: expected a floating input, got {}", op,
           dtype_name(x.dtype()));
  int64_t oh = w.out_h(x.size(2)), ow = w.out_w(x.size(3));
  TG_CHECK(oh > 0 && ow > 0,
           "{}: input {} is too small for kernel ({}, {}) with padding ({}, {}) and dilation "
           "({}, {}): the output would be {}x{}",
           op, x.shape(), w.kh, w.kw, w.ph, w.pw, w.dh, w.dw, oh, ow);
  return {oh, ow};
}

// Runs `f` on a batch of one when x is a single (C, H, W) image.
template <class F>
Tensor batched(const Tensor& x, const char* op, F&& f) {
  check_defined(x, op);
  if (x.dim() == 3) return f(x.unsqueeze(0)).squeeze(0);
  return f(x);
}

Tensor window_forward(OpKind kind, const Tensor& x, const Window2d& w, const Shape& out_shape,
                      const Tensor* indices = nullptr) {
  Tensor out = make_tensor(out_shape, x.dtype(), x.device());
  Tensor xc = x.contiguous();
  if (out.numel() > 0 && x.numel() > 0)
    backend_of(x).window(kind, impl_of(out), impl_of(xc), w, indices ? indices->impl() : nullptr);
  else if (out.numel() > 0)
    out.zero_();
  return out;
}

void check_pool_padding(const Window2d& w, const char* op) {
  TG_CHECK(2 * w.ph <= w.kh && 2 * w.pw <= w.kw,
           "{}: padding ({}, {}) must be at most half the kernel ({}, {})", op, w.ph, w.pw, w.kh,
           w.kw);
}

}  // namespace

Tensor im2col(const Tensor& x, Size2 kernel, Size2 stride, Size2 padding, Size2 dilation,
              Loc loc) {
  OpScope scope("im2col", loc);
  Window2d w = make_window(kernel, stride, padding, dilation, "im2col");
  auto [oh, ow] = check_image(x, w, "im2col");
  RecordScope rec{&x};
  Tensor out = window_forward(OpKind::Im2col, x, w, {x.size(0), x.size(1) * w.kh * w.kw, oh * ow});
  return rec.finish(OpKind::Im2col, out, window_attrs(w));
}

Tensor col2im(const Tensor& cols, Size2 image_size, Size2 kernel, Size2 stride, Size2 padding,
              Size2 dilation, Loc loc) {
  OpScope scope("col2im", loc);
  Window2d w = make_window(kernel, stride, padding, dilation, "col2im");
  check_defined(cols, "col2im");
  TG_CHECK(cols.dim() == 3, "col2im: expected (N, C*kh*kw, L) columns, got shape {}", cols.shape());
  TG_CHECK(is_floating(cols.dtype()), "col2im: expected a floating input, got {}",
           dtype_name(cols.dtype()));
  TG_CHECK(image_size.h > 0 && image_size.w > 0, "col2im: image size must be positive");
  int64_t kk = w.kh * w.kw, oh = w.out_h(image_size.h), ow = w.out_w(image_size.w);
  TG_CHECK(cols.size(1) % kk == 0,
           "col2im: {} rows are not a multiple of the kernel's {}x{} = {} (columns of shape {})",
           cols.size(1), w.kh, w.kw, kk, cols.shape());
  TG_CHECK(oh > 0 && ow > 0 && cols.size(2) == oh * ow,
           "col2im: {} columns do not match a {}x{} image with this window ({}x{} = {} expected)",
           cols.size(2), image_size.h, image_size.w, oh, ow, oh * ow);
  RecordScope rec{&cols};
  Shape shape{cols.size(0), cols.size(1) / kk, image_size.h, image_size.w};
  Tensor out = make_tensor(shape, cols.dtype(), cols.device());
  Tensor cc = cols.stride(2) == 1 ? cols : cols.contiguous();  // rows need to be contiguous only
  if (out.numel() > 0) {
    if (cols.numel() > 0)
      backend_of(cols).window(OpKind::Col2im, impl_of(out), impl_of(cc), w, nullptr);
    else
      out.zero_();
  }
  return rec.finish(OpKind::Col2im, out, window_attrs(w));
}

namespace {

// Note [Convolution layout]
// With groups = 1 the columns X are laid out (C·kk, N, L) (a permuted view is what im2col fills).
//   - The forward is a batch of per-sample products W·X[:, n, :] written straight into the
//     output's (N, O, L) layout (one product over all samples would give (O, N, L), and permuting
//     that into place cost a copy of the whole output).
//   - dW = G·Xᵀ over all N·L positions. When a sample has at least kLongRows positions (conv1 of
//     LeNet: 784), per-sample products G[n]·X[:, n, :]ᵀ are summed (dot products of that length
//     are efficient, and G is read as it is); for small images (conv2: 100) G is copied to
//     (O, N·L) once and the product is one gemm whose dot products run over all samples.
//   - dX = col2im(Wᵀ·G), one gemm over all samples.
// The choice depends only on shapes, so results do not depend on the thread count. Grouped and
// 1x1 convolutions use per-sample (N, C·kk, L) columns.
constexpr int64_t kLongRows = 256;

// The convolution primitive over (x, weight); conv2d() adds the bias as a separate op.
Tensor conv2d_primitive(const Tensor& x, const Tensor& weight, const Window2d& w, int64_t groups) {
  auto [oh, ow] = check_image(x, w, "conv2d");
  int64_t n = x.size(0), c = x.size(1), o = weight.size(0), kk = w.kh * w.kw, l = oh * ow;
  RecordScope rec{&x, &weight};
  Tensor xin = cast_if_needed(x, promote_types(x.dtype(), weight.dtype()));
  Tensor wt = cast_if_needed(weight, xin.dtype());
  NodeAttrs attrs = window_attrs(w, groups);
  bool keep = rec.active() && weight.requires_grad();
  // A 1x1 window with stride 1 and no padding reads the image as its own columns.
  bool pointwise = kk == 1 && w.sh == 1 && w.sw == 1 && w.ph == 0 && w.pw == 0;
  Tensor out;
  if (groups == 1 && !pointwise) {
    Tensor cols = make_tensor({c * kk, n, l}, xin.dtype(), xin.device());
    Tensor xc = xin.contiguous();
    if (cols.numel() > 0)
      backend_of(x).window(OpKind::Im2col, impl_of(cols.permute({1, 0, 2})), impl_of(xc), w, nullptr);
    out = matmul(wt.reshape({o, c * kk}), cols.permute({1, 0, 2})).reshape({n, o, oh, ow});
    if (keep) attrs.extra = cols;  // for the weight's gradient (Note [Saved by-products])
  } else {
    Tensor cols = pointwise ? xin.reshape({n, c, l})
                            : window_forward(OpKind::Im2col, xin, w, {n, c * kk, l});
    std::vector<Tensor> parts;
    int64_t cg = c / groups * kk, og = o / groups;
    for (int64_t g = 0; g < groups; ++g)
      parts.push_back(matmul(wt.slice(0, g * og, (g + 1) * og).reshape({og, cg}),
                             cols.slice(1, g * cg, (g + 1) * cg)));
    out = (groups == 1 ? parts[0] : cat(parts, 1)).reshape({n, o, oh, ow});
    if (keep) attrs.extra = cols;
  }
  return rec.finish(OpKind::Conv2d, out, std::move(attrs));
}

}  // namespace

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Size2 stride,
              Size2 padding, Size2 dilation, int64_t groups, Loc loc) {
  OpScope scope("conv2d", loc);
  Window2d w{};
  check_defined(weight, "conv2d", "weight");
  TG_CHECK(weight.dim() == 4, "conv2d: weight must be (out, in/groups, kh, kw), got shape {}",
           weight.shape());
  w = make_window({weight.size(2), weight.size(3)}, stride, padding, dilation, "conv2d");
  check_same_device(x, weight, "conv2d");
  TG_CHECK(groups > 0, "conv2d: groups must be positive, got {}", groups);
  return batched(x, "conv2d", [&](const Tensor& x4) {
    check_image(x4, w, "conv2d");
    TG_CHECK(is_floating(weight.dtype()), "conv2d: weight must be floating, got {}",
             dtype_name(weight.dtype()));
    int64_t c = x4.size(1), o = weight.size(0);
    TG_CHECK(c % groups == 0 && o % groups == 0,
             "conv2d: {} input and {} output channels must both divide into {} groups", c, o,
             groups);
    TG_CHECK(weight.size(1) * groups == c,
             "conv2d: input {} has {} channels but weight {} expects {} ({} per group x {} groups)",
             x4.shape(), c, weight.shape(), weight.size(1) * groups, weight.size(1), groups);
    Tensor out = conv2d_primitive(x4, weight, w, groups);
    if (!bias.defined()) return out;
    check_same_device(x4, bias, "conv2d");
    TG_CHECK(bias.dim() == 1 && bias.size(0) == o, "conv2d: bias must have shape [{}], got {}", o,
             bias.shape());
    return out + bias.reshape({1, o, 1, 1});
  });
}

std::pair<Tensor, Tensor> max_pool2d_with_indices(const Tensor& x, Size2 kernel,
                                                  std::optional<Size2> stride, Size2 padding,
                                                  Size2 dilation, Loc loc) {
  OpScope scope("max_pool2d", loc);
  Window2d w = make_window(kernel, stride.value_or(kernel), padding, dilation, "max_pool2d");
  check_pool_padding(w, "max_pool2d");
  Tensor indices;
  Tensor values = batched(x, "max_pool2d", [&](const Tensor& x4) {
    auto [oh, ow] = check_image(x4, w, "max_pool2d");
    RecordScope rec{&x4};
    Shape shape{x4.size(0), x4.size(1), oh, ow};
    indices = make_tensor(shape, kI64, x4.device());
    Tensor out = window_forward(OpKind::MaxPool2d, x4, w, shape, &indices);
    // Each is a position in its input's plane, so the gradient's scatter need not check them
    // (Note [Indices checked once]).
    mark_indices_below(impl_of(indices), x4.size(2) * x4.size(3));
    NodeAttrs attrs = window_attrs(w);
    if (rec.active()) attrs.extra = indices;  // the bprop scatters through them
    return rec.finish(OpKind::MaxPool2d, out, std::move(attrs));
  });
  if (x.dim() == 3) indices = indices.squeeze(0);
  return {values, indices};
}

Tensor max_pool2d(const Tensor& x, Size2 kernel, std::optional<Size2> stride, Size2 padding,
                  Size2 dilation, Loc loc) {
  return max_pool2d_with_indices(x, kernel, stride, padding, dilation, loc).first;
}

Tensor avg_pool2d(const Tensor& x, Size2 kernel, std::optional<Size2> stride, Size2 padding,
                  Loc loc) {
  OpScope scope("avg_pool2d", loc);
  Window2d w = make_window(kernel, stride.value_or(kernel), padding, 1, "avg_pool2d");
  check_pool_padding(w, "avg_pool2d");
  return batched(x, "avg_pool2d", [&](const Tensor& x4) {
    auto [oh, ow] = check_image(x4, w, "avg_pool2d");
    RecordScope rec{&x4};
    Tensor out = window_forward(OpKind::AvgPool2d, x4, w, {x4.size(0), x4.size(1), oh, ow});
    return rec.finish(OpKind::AvgPool2d, out, window_attrs(w));
  });
}

namespace {
// (out, in) matrix averaging PyTorch's adaptive bins [floor(i·in/out), ceil((i+1)·in/out)).
Tensor adaptive_bins(int64_t in, int64_t out, DType dtype, Device device) {
  std::vector<double> m(static_cast<size_t>(in * out), 0.0);
  for (int64_t i = 0; i < out; ++i) {
    int64_t lo = i * in / out, hi = ((i + 1) * in + out - 1) / out;
    for (int64_t j = lo; j < hi; ++j) m[i * in + j] = 1.0 / static_cast<double>(hi - lo);
  }
  return tensor(m, {out, in}, {.dtype = dtype, .device = device});
}
}  // namespace

Tensor adaptive_avg_pool2d(const Tensor& x, Size2 output_size, Loc loc) {
  OpScope scope("adaptive_avg_pool2d", loc);
  TG_CHECK(output_size.h > 0 && output_size.w > 0,
           "adaptive_avg_pool2d: output size must be positive, got ({}, {})", output_size.h,
           output_size.w);
  return batched(x, "adaptive_avg_pool2d", [&](const Tensor& x4) {
    check_image(x4, Window2d{}, "adaptive_avg_pool2d");
    int64_t h = x4.size(2), w = x4.size(3);
    if (h % output_size.h == 0 && w % output_size.w == 0) {
      Size2 k{h / output_size.h, w / output_size.w};
      return avg_pool2d(x4, k, k);
    }
    // Uneven bins overlap: average with a bin matrix on each side, rows then columns.
    Tensor rows = adaptive_bins(h, output_size.h, x4.dtype(), x4.device());
    Tensor cols = adaptive_bins(w, output_size.w, x4.dtype(), x4.device());
    return matmul(matmul(rows, x4), cols.t());
  });
}

// --- bprops ---------------------------------------------------------------------------------------

namespace {

void im2col_bprop(BpropCtx& ctx) {
  Window2d w = window_of(ctx.attrs());
  const Shape& in = ctx.input_shape(0);
  ctx.set(0, col2im(ctx.grad, {in[2], in[3]}, kernel_of(w), stride_of(w), padding_of(w),
                    dilation_of(w)));
}

void col2im_bprop(BpropCtx& ctx) {
  Window2d w = window_of(ctx.attrs());
  ctx.set(0, im2col(ctx.grad, kernel_of(w), stride_of(w), padding_of(w), dilation_of(w)));
}

// With columns X = im2col(x) and W as (O, C·kk) per group: out = W·X, so dW = Σ_n G_n·X_nᵀ and
// dx = col2im(Wᵀ·G) (Note [Convolution layout]). The forward's columns serve dW unless this pass
// is recorded, where they are recomputed by im2col so that second derivatives reach x.
void conv2d_bprop(BpropCtx& ctx) {
  Window2d w = window_of(ctx.attrs());
  int64_t groups = ctx.attrs().i1;
  const Shape& xs = ctx.input_shape(0);
  const Shape& ws = ctx.input_shape(1);
  int64_t n = xs[0], c = xs[1], o = ws[0], kk = w.kh * w.kw;
  int64_t cg = c / groups * kk, og = o / groups, l = ctx.grad.size(2) * ctx.grad.size(3);
  bool pointwise = kk == 1 && w.sh == 1 && w.sw == 1 && w.ph == 0 && w.pw == 0;
  const Tensor& kept = ctx.attrs().extra;
  bool use_kept = kept.defined() && !ctx.create_graph();
  auto columns = [&] { return im2col(ctx.input(0), kernel_of(w), stride_of(w), padding_of(w), dilation_of(w)); };
  auto image = [&](const Tensor& gcols) {  // (N, C·kk, L) columns back to x's gradient
    return col2im(gcols, {xs[2], xs[3]}, kernel_of(w), stride_of(w), padding_of(w), dilation_of(w))
        .to(ctx.input_dtype(0));
  };
  if (groups == 1 && !pointwise) {
    // G as (O, N·L), made once when a product over all samples needs it.
    Tensor g_all;
    auto g = [&]() -> const Tensor& {
      if (!g_all.defined()) g_all = ctx.grad.permute({1, 0, 2, 3}).reshape({o, n * l});
      return g_all;
    };
    if (ctx.needs(1)) {
      ctx.input(0);  // the version check of x
      Tensor dw;
      if (l >= kLongRows) {
        Tensor per_sample = use_kept ? kept.permute({1, 0, 2}) : columns();  // (N, C·kk, L)
        dw = matmul(ctx.grad.reshape({n, o, l}), per_sample.transpose(-1, -2)).sum({0});
      } else {
        Tensor flat = use_kept ? kept.reshape({c * kk, n * l})
                               : columns().permute({1, 0, 2}).reshape({c * kk, n * l});
        dw = matmul(g(), flat.t());
      }
      ctx.set(1, dw.reshape(ws).to(ctx.input_dtype(1)));
    }
    if (ctx.needs(0)) {
      Tensor gcols = matmul(ctx.input(1).reshape({o, c * kk}).t(), g());
      ctx.set(0, image(gcols.reshape({c * kk, n, l}).permute({1, 0, 2})));
    }
    return;
  }
  Tensor g = ctx.grad.reshape({n, groups, og, l});
  if (ctx.needs(1)) {
    Tensor x = ctx.input(0);
    Tensor cols = (use_kept ? kept.to(x.dtype()) : columns()).reshape({n, groups, cg, l});
    ctx.set(1, matmul(g, cols.transpose(-1, -2)).sum({0}).reshape(ws).to(ctx.input_dtype(1)));
  }
  if (ctx.needs(0)) {
    Tensor wt = ctx.input(1).reshape({groups, og, cg});
    ctx.set(0, image(matmul(wt.transpose(-1, -2), g).reshape({n, c * kk, l})));
  }
}

// The gradient goes to each window's maximum, at the indices the forward kept.
void max_pool2d_bprop(BpropCtx& ctx) {
  const Shape& xs = ctx.input_shape(0);
  const Tensor& indices = ctx.attrs().extra;
  TG_INTERNAL_ASSERT(indices.defined());
  int64_t n = xs[0], c = xs[1];
  Tensor g = ctx.grad.reshape({n, c, -1});
  TensorOptions opts{.dtype = g.dtype(), .device = g.device()};
  Tensor gx = zeros({n, c, xs[2] * xs[3]}, opts).scatter_add(2, indices.reshape({n, c, -1}), g);
  ctx.set(0, gx.reshape(xs));
}

// Each output spreads its gradient evenly over its window: col2im of the repeated gradient.
void avg_pool2d_bprop(BpropCtx& ctx) {
  Window2d w = window_of(ctx.attrs());
  const Shape& xs = ctx.input_shape(0);
  int64_t n = xs[0], c = xs[1], kk = w.kh * w.kw;
  Tensor g = (ctx.grad / static_cast<double>(kk)).reshape({n, c, 1, -1});
  Tensor cols = g.expand({n, c, kk, g.size(3)}).reshape({n, c * kk, g.size(3)});
  ctx.set(0, col2im(cols, {xs[2], xs[3]}, kernel_of(w), stride_of(w), padding_of(w),
                    dilation_of(w)));
}

const bool registered = [] {
  register_bprop(OpKind::Im2col, im2col_bprop, kSaveNone);
  register_bprop(OpKind::Col2im, col2im_bprop, kSaveNone);
  register_bprop(OpKind::Conv2d, conv2d_bprop, kSaveIn0 | kSaveIn1);
  register_bprop(OpKind::MaxPool2d, max_pool2d_bprop, kSaveNone);
  register_bprop(OpKind::AvgPool2d, avg_pool2d_bprop, kSaveNone);
  return true;
}();

}  // namespace

}  // namespace tg
