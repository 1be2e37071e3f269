// matmul with NumPy semantics and its bprop, and mm, bmm, dot, outer on top of it.
#include "autograd/node.h"
#include "ops/ops_common.h"

namespace tg {

Tensor matmul(const Tensor& a, const Tensor& b, Loc loc) {
  OpScope scope("matmul", loc);
  check_defined(a, "matmul", "first operand");
  check_defined(b, "matmul", "second operand");
  check_same_device(a, b, "matmul");
  TG_CHECK(a.dim() > 0 && b.dim() > 0, "matmul: both operands need at least 1 dim, got shapes {} and {}",
           a.shape(), b.shape());
  RecordScope rec{&a, &b};
  // 1-D operands become matrices: a as a row, b as a column; the added dims are dropped after.
  Tensor a2 = a.dim() == 1 ? a.unsqueeze(0) : a;
  Tensor b2 = b.dim() == 1 ? b.unsqueeze(1) : b;
  int64_t m = a2.size(-2), k = a2.size(-1), k2 = b2.size(-2), n = b2.size(-1);
  TG_CHECK(k == k2, "matmul: shapes {} and {} cannot be multiplied ({} columns vs {} rows)",
           a.shape(), b.shape(), k, k2);
  Shape batch_a(a2.shape().begin(), a2.shape().end() - 2);
  Shape batch_b(b2.shape().begin(), b2.shape().end() - 2);
  Shape batch = broadcast_shapes(batch_a, batch_b, "matmul");
  int64_t nb = 1;
  for (int64_t s : batch) nb *= s;
  DType dtype = promote_types(a.dtype(), b.dtype());
  TG_CHECK(dtype != kBool, "matmul: not defined for bool tensors");
  // Expand batch dims, then fold them into one (a view when the layout allows).
  auto fold = [&](const Tensor& t, int64_t rows, int64_t cols) {
    Shape full = batch;
    full.push_back(rows);
    full.push_back(cols);
    Tensor e = cast_if_needed(t, dtype).expand(full);
    if (batch.empty()) return e.unsqueeze(0);
    // Broadcast batch dims collapse to stride 0 only if all are broadcast; else reshape copies.
    return e.reshape({nb, rows, cols});
  };
  Tensor a3 = fold(a2, m, k), b3 = fold(b2, k, n);
  Tensor out = make_tensor({nb, m, n}, dtype, a.device());
  if (out.numel() > 0) backend_of(a).matmul(impl_of(out), impl_of(a3), impl_of(b3));
  Shape shape = batch;
  if (a.dim() > 1) shape.push_back(m);
  if (b.dim() > 1) shape.push_back(n);
  return rec.finish(OpKind::Matmul, out.reshape(shape));
}

// --- bprop ----------------------------------------------------------------------------------------
// With 1-D operands promoted to matrices as the forward does (a as a row, b as a column):
// dA = G·Bᵀ and dB = Aᵀ·G, summed over broadcast batch dims, then the added dims dropped.
namespace {
// Note [Gradients in their operand's layout]
// nn::Linear keeps its weight (out, in) and multiplies by weight.t(), a transposed view. Its
// gradient aᵀ·g comes out (in, out); transposed back onto the weight it is a strided view, and
// accumulating it into .grad was a strided copy of the whole weight every step (a fifth of an MLP
// step). For an operand that is a transposed matrix, the product is computed the other way round,
// (gᵀ·a)ᵀ: the same numbers, laid out like the weight itself, so no copy follows.
bool is_transposed_matrix(const Tensor& t) {
  return t.dim() == 2 && t.size(0) > 1 && t.size(1) > 1 && t.strides()[0] == 1 &&
         t.strides()[1] == t.size(0);
}

void matmul_bprop(BpropCtx& ctx) {
  Tensor a = ctx.input(0), b = ctx.input(1);
  Tensor a2 = a.dim() == 1 ? a.unsqueeze(0) : a;
  Tensor b2 = b.dim() == 1 ? b.unsqueeze(1) : b;
  Tensor g = ctx.grad;
  if (a.dim() == 1) g = g.unsqueeze(b.dim() == 1 ? 0 : -2);
  if (b.dim() == 1) g = g.unsqueeze(-1);
  // See Note [Gradients in their operand's layout].
  bool plain = a2.dim() == 2 && b2.dim() == 2 && g.dim() == 2;
  if (ctx.needs(0)) {
    Tensor ga = plain && is_transposed_matrix(a2) ? matmul(b2, g.t()).t()
                                                   : matmul(g, b2.transpose(-1, -2));
    ctx.set(0, sum_to(ga, a2.shape()).reshape(a.shape()));
  }
  if (ctx.needs(1)) {
    Tensor gb = plain && is_transposed_matrix(b2) ? matmul(g.t(), a2).t()
                                                   : matmul(a2.transpose(-1, -2), g);
    ctx.set(1, sum_to(gb, b2.shape()).reshape(b.shape()));
  }
}

const bool registered = register_bprop(OpKind::Matmul, matmul_bprop, kSaveIn0 | kSaveIn1);
}  // namespace

Tensor mm(const Tensor& a, const Tensor& b, Loc loc) {
  OpScope scope("mm", loc);
  check_defined(a, "mm", "first operand");
  check_defined(b, "mm", "second operand");
  TG_CHECK(a.dim() == 2 && b.dim() == 2, "mm: expects two matrices, got shapes {} and {}",
           a.shape(), b.shape());
  return matmul(a, b);
}

Tensor bmm(const Tensor& a, const Tensor& b, Loc loc) {
  OpScope scope("bmm", loc);
  check_defined(a, "bmm", "first operand");
  check_defined(b, "bmm", "second operand");
  TG_CHECK(a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0),
           "bmm: expects two 3-D tensors with the same batch size, got shapes {} and {}", a.shape(),
           b.shape());
  return matmul(a, b);
}

Tensor dot(const Tensor& a, const Tensor& b, Loc loc) {
  OpScope scope("dot", loc);
  check_defined(a, "dot", "first operand");
  check_defined(b, "dot", "second operand");
  TG_CHECK(a.dim() == 1 && b.dim() == 1 && a.numel() == b.numel(),
           "dot: expects two 1-D tensors of the same size, got shapes {} and {}", a.shape(),
           b.shape());
  return matmul(a, b);
}

Tensor outer(const Tensor& a, const Tensor& b, Loc loc) {
  OpScope scope("outer", loc);
  check_defined(a, "outer", "first operand");
  check_defined(b, "outer", "second operand");
  TG_CHECK(a.dim() == 1 && b.dim() == 1, "outer: expects two 1-D tensors, got shapes {} and {}",
           a.shape(), b.shape());
  return a.unsqueeze(1) * b.unsqueeze(0);
}

}  // namespace tg
