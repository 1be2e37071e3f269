// The host-side halves of CUDA kernels. Reductions (lib/backend/cuda/reduce_plan.h): merged dims
// reach the same elements in the same order, every plan's parts cover each row once, and shapes
// take the kernel Note [Reduction kernels] says.
// The steps of CUDA's scatter_add without atomics (lib/backend/cuda/index_runs.h, Note [Scatter
// without atomics]), run here one thread after another: keys, a stable sort standing in for
// CUB's, pieces, joins. Every destination must get exactly the CPU backend's sum, on shapes whose
// runs of equal destinations start, end and cross the chunks' borders in every way. The values
// are small integers, so any grouping of the sums is exact and a lost or doubled element shows.
// softmax, log_softmax and logsumexp in one kernel (lib/backend/cuda/softmax_rows.h, Note [Softmax
// rows]): the steps, run lane after lane, give the CPU's composite on rows of every plan that
// takes them, strided, with -inf, inf and NaN in them; the plans that split rows decline.
// Products on cuBLAS (lib/backend/cuda/gemm_plan.h, Note [Products on cuBLAS]): the arguments the
// backend gives cublas<t>gemmStridedBatched, run through that call's definition here, give the
// CPU's product for every layout of the operands.
// Plain C++: it runs on every machine, GPU or not.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <algorithm>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/gemm_plan.h"
#include "backend/cuda/index_runs.h"
#include "backend/cuda/reduce_plan.h"
#include "backend/cuda/softmax_rows.h"
#include "core/tensor_impl.h"

using namespace tg;
using namespace tg::cuda_detail;

namespace {

// out (a copy) after the GPU's steps, each "thread" run in turn.
template <class T>
Tensor emulate_scatter(const Tensor& out0, int dim, const Tensor& index, const Tensor& src) {
  Tensor out = out0.clone();
  // Keep out0's strides: the keys are element offsets into out's storage.
  if (!out0.is_contiguous()) out = out0.contiguous().t().contiguous().t();
  REQUIRE(out.strides() == out0.strides());
  IndexGeom g = make_index_geom(OpKind::ScatterAdd, *out.impl(), *src.impl(), dim, *index.impl());
  const int64_t n = src.numel();
  std::vector<uint64_t> keys(n), srcs(n);
  for (int64_t i = 0; i < n; ++i) {
    int64_t dst = 0, s = 0;
    scatter_offsets(g, index.data_ptr<int64_t>() , i, dst, s);
    CHECK(dst >= 0);
    CHECK(dst < g.out_extent);
    keys[i] = static_cast<uint64_t>(dst);
    srcs[i] = static_cast<uint64_t>(s);
  }
  // CUB's radix sort is stable: equal keys keep the order of i.
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return keys[a] < keys[b]; });
  std::vector<uint64_t> sorted_keys(n), sorted_srcs(n);
  for (int64_t k = 0; k < n; ++k) {
    sorted_keys[k] = keys[order[k]];
    sorted_srcs[k] = srcs[order[k]];
  }
  const int64_t nchunks = (n + kRunChunk - 1) / kRunChunk;
  // As on the GPU, the pieces overwrite the unsorted keys and sources.
  std::vector<uint64_t>& piece_keys = keys;
  std::vector<double> piece_sums(n, -1e300);
  std::vector<int32_t> counts(nchunks, -1);
  for (int64_t c = 0; c < nchunks; ++c)
    chunk_pieces(c, n, sorted_keys.data(), sorted_srcs.data(), src.data_ptr<T>(),
                 piece_keys.data(), piece_sums.data(), counts.data());
  T* o = out.data_ptr<T>();
  for (int64_t c = 0; c < nchunks; ++c)
    join_runs(c, nchunks, sorted_keys.data(), piece_keys.data(), piece_sums.data(), counts.data(), o);
  return out;
}

template <class T>
void check_case(const Shape& space, int dim, int64_t dim_size, int64_t distinct, bool transposed,
                bool broadcast_index, std::mt19937& rng) {
  std::string space_s;
  for (int64_t d : space) space_s += std::to_string(d) + " ";
  CAPTURE(space_s);
  CAPTURE(dim);
  CAPTURE(dim_size);
  CAPTURE(distinct);
  CAPTURE(transposed);
  CAPTURE(broadcast_index);
  Shape out_shape = space;
  out_shape[dim] = dim_size;
  std::uniform_int_distribution<int> val(-8, 8);
  auto ints = [&](const Shape& s) {
    int64_t count = 1;
    for (int64_t d : s) count *= d;
    std::vector<T> v(static_cast<size_t>(count));
    for (auto& e : v) e = static_cast<T>(val(rng));
    return tensor(v, s);
  };
  Tensor src = ints(space);
  Tensor out0 = ints(out_shape);
  if (transposed && out_shape.size() == 2) out0 = ints({out_shape[1], out_shape[0]}).t();
  // Indices in [-dim_size, dim_size) drawn from `distinct` values: few values, long runs.
  std::uniform_int_distribution<int64_t> pick(0, distinct - 1);
  std::vector<int64_t> choices(distinct);
  std::uniform_int_distribution<int64_t> any(-dim_size, dim_size - 1);
  for (auto& c : choices) c = any(rng);
  Tensor index;
  if (broadcast_index) {  // one index per position along dim, the same for the other dims
    std::vector<int64_t> v(space[dim]);
    for (auto& e : v) e = choices[pick(rng)];
    Shape line(space.size(), 1);
    line[dim] = space[dim];
    index = tensor(v, Shape{space[dim]}).reshape(line).expand(space);
  } else {
    std::vector<int64_t> v(static_cast<size_t>(src.numel()));
    for (auto& e : v) e = choices[pick(rng)];
    index = tensor(v, space);
  }
  Tensor want = out0.clone();
  cpu_backend().index(OpKind::ScatterAdd, *want.impl(), *src.impl(), dim, *index.impl());
  Tensor got = emulate_scatter<T>(out0, dim, index, src);
  CHECK(got.to_vector<double>() == want.to_vector<double>());
}

}  // namespace

TEST_CASE("cuda scatter_add steps: sorted runs summed once each, into the CPU's values") {
  std::mt19937 rng(7);
  for (int rep = 0; rep < 3; ++rep) {
    // One destination for everything: a run across every chunk.
    check_case<float>({1000}, 0, 5, 1, false, false, rng);
    // Runs of every length around the chunk (64): 64·k elements, few and many destinations.
    for (int64_t n : {1, 63, 64, 65, 128, 129, 640})
      for (int64_t distinct : {1, 2, 3, 50, 1000}) check_case<double>({n}, 0, 97, distinct, false, false, rng);
    // 2-D along each dim, out transposed (strided keys), the index broadcast (an embedding's
    // gradient: rows of one token go to one row of out).
    for (int dim : {0, 1})
      for (bool transposed : {false, true})
        for (bool broadcast : {false, true}) {
          check_case<float>({37, 23}, dim, 11, 4, transposed, broadcast, rng);
          check_case<double>({300, 5}, dim, 300, 1000, transposed, broadcast, rng);
        }
    check_case<float>({4, 5, 6}, 1, 3, 2, false, false, rng);
    check_case<double>({4, 5, 6}, 2, 9, 9, false, true, rng);
  }
}

TEST_CASE("cuda scatter_add steps: a 0-d scatter and the largest offset bound the keys") {
  Tensor out = tensor(2.5f), src = tensor(1.25f), index = tensor(int64_t{0});
  Tensor got = emulate_scatter<float>(out, 0, index, src);
  CHECK(got.item<double>() == 3.75);
  // out: a (6, 4) view of a contiguous (4, 6) tensor; its last element is at 23.
  Tensor out2 = zeros({4, 6}).t(), src2 = zeros({2, 4}), index2 = zeros({2, 4}, {.dtype = kI64});
  IndexGeom g = make_index_geom(OpKind::ScatterAdd, *out2.impl(), *src2.impl(), 0, *index2.impl());
  CHECK(g.out_extent == 24);
}

TEST_CASE("cuda index steps: gather and index_select read what the CPU backend reads") {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> val(-100, 100);
  auto values = [&](const Shape& s) {
    int64_t count = 1;
    for (int64_t d : s) count *= d;
    std::vector<double> v(static_cast<size_t>(count));
    for (auto& e : v) e = val(rng);
    return tensor(v, s);
  };
  for (int dim : {0, 1, 2}) {
    CAPTURE(dim);
    Tensor x = values({5, 6, 7}).transpose(0, 2);  // (7, 6, 5), strided
    const int64_t size = x.shape()[dim];
    for (OpKind kind : {OpKind::Gather, OpKind::IndexSelect}) {
      Shape out_shape = x.shape();
      out_shape[dim] = 9;
      std::uniform_int_distribution<int64_t> any(-size, size - 1);
      Tensor index;
      if (kind == OpKind::Gather) {
        int64_t count = 1;
        for (int64_t d : out_shape) count *= d;
        std::vector<int64_t> v(static_cast<size_t>(count));
        for (auto& e : v) e = any(rng);
        index = tensor(v, out_shape);
      } else {
        std::vector<int64_t> v(9);
        for (auto& e : v) e = any(rng);
        index = tensor(v, Shape{9});
      }
      Tensor want = zeros(out_shape, {.dtype = kF64}), got = zeros(out_shape, {.dtype = kF64});
      cpu_backend().index(kind, *want.impl(), *x.impl(), dim, *index.impl());
      IndexGeom g = make_index_geom(kind, *got.impl(), *x.impl(), dim, *index.impl());
      for (int64_t i = 0; i < got.numel(); ++i)
        gather_one(kind == OpKind::IndexSelect, g, index.data_ptr<int64_t>(), i,
                   got.data_ptr<double>(), x.data_ptr<double>());
      CHECK(got.to_vector<double>() == want.to_vector<double>());
    }
  }
}

namespace {

// The reduction reduce_op asks of the backend: x's dims in `mask` permuted last.
ReduceGeom reduction_geom(const Tensor& x, const std::vector<bool>& mask, bool merged) {
  Shape perm, out_shape;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (!mask[d]) perm.push_back(d), out_shape.push_back(x.shape()[d]);
  int nreduced = 0;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (mask[d]) perm.push_back(d), ++nreduced;
  Tensor xp = x.permute(perm), out = zeros(out_shape);
  if (merged) return make_reduce_geom(*out.impl(), *xp.impl(), nreduced);
  ReduceGeom g;  // the dims as they are
  g.nkept = static_cast<int>(out_shape.size());
  g.nred = nreduced;
  g.count = 1;
  for (int d = 0; d < xp.dim(); ++d) {
    if (d < g.nkept) {
      g.kept_sizes[d] = xp.shape()[d];
      g.kept_strides[d] = xp.strides()[d];
    } else {
      g.red_sizes[d - g.nkept] = xp.shape()[d];
      g.red_strides[d - g.nkept] = xp.strides()[d];
      g.count *= xp.shape()[d];
    }
  }
  g.nout = out.numel();
  return g;
}

ReduceGeom geom_of(const Shape& shape, const Shape& dims) {
  std::vector<bool> mask(shape.size(), dims.empty());
  for (int64_t d : dims) mask[d] = true;
  return reduction_geom(zeros(shape), mask, true);
}

}  // namespace

TEST_CASE("cuda reduction steps: merged dims reach the same elements in the same order") {
  std::mt19937 rng(9);
  std::uniform_int_distribution<int> size(1, 4), ndim(1, 5), coin(0, 1);
  int checked = 0;
  for (int rep = 0; rep < 300; ++rep) {
    Shape shape;
    const int nd = ndim(rng);
    for (int d = 0; d < nd; ++d) shape.push_back(size(rng));
    // Views: dims swapped, a narrowed last dim (a gap between rows), an expanded dim (stride 0).
    Shape alloc = shape;
    const bool swap = coin(rng) && nd >= 2, narrow = coin(rng), expand = coin(rng);
    if (swap) std::swap(alloc[0], alloc[nd - 1]);
    if (narrow) alloc[nd - 1] += 2;
    int64_t count = 1;
    for (int64_t v : alloc) count *= v;
    Tensor x = arange(count, {.dtype = kF64}).reshape(alloc);
    if (narrow) x = x.narrow(nd - 1, 1, alloc[nd - 1] - 2);
    if (swap) x = x.transpose(0, nd - 1);
    if (expand) {
      Shape wide = x.shape();
      wide.insert(wide.begin() + 1, 3);
      x = x.unsqueeze(1).expand(wide);
    }
    std::vector<bool> mask(x.dim());
    for (auto&& m : mask) m = coin(rng) != 0;
    ReduceGeom raw = reduction_geom(x, mask, false), g = reduction_geom(x, mask, true);
    CHECK(g.nout == raw.nout);
    CHECK(g.count == raw.count);
    CHECK(g.nkept <= raw.nkept);
    CHECK(g.nred <= raw.nred);
    for (int64_t o = 0; o < raw.nout; ++o)
      for (int64_t j = 0; j < raw.count; ++j) {
        REQUIRE(kept_offset(g, o) + red_offset(g, j) == kept_offset(raw, o) + red_offset(raw, j));
        ++checked;
      }
    // And the unmerged geometry is the reduction: out's row-major order, the CPU's sums.
    Shape dims;
    for (int64_t d = 0; d < x.dim(); ++d)
      if (mask[d]) dims.push_back(d);
    if (dims.empty() || raw.nout == 0) continue;
    std::vector<double> got(static_cast<size_t>(raw.nout), 0.0);
    const double* p = x.data_ptr<double>();
    for (int64_t o = 0; o < raw.nout; ++o)
      for (int64_t j = 0; j < raw.count; ++j) got[o] += p[kept_offset(g, o) + red_offset(g, j)];
    CHECK(got == sum(x, dims).to_vector<double>());
  }
  CHECK(checked > 1000);
}

TEST_CASE("cuda reduction steps: each shape's kernel, and parts that cover a row once") {
  CHECK(plan_reduce(geom_of({1024, 500}, {0})).path == ReducePath::Columns);  // a bias's gradient
  CHECK(plan_reduce(geom_of({1024, 500}, {0})).parts == 4);
  CHECK(plan_reduce(geom_of({20, 300, 40}, {1})).path == ReducePath::Columns);
  CHECK(plan_reduce(geom_of({100, 4}, {0})).path != ReducePath::Columns);  // too few outputs
  CHECK(plan_reduce(geom_of({60, 10}, {1})).path == ReducePath::Warps);    // softmax's rows
  CHECK(plan_reduce(geom_of({3, 5000}, {1})).path == ReducePath::Block);
  CHECK(plan_reduce(geom_of({2, 70000}, {1})).path == ReducePath::Pieces);
  CHECK(plan_reduce(geom_of({70000}, {})).path == ReducePath::Pieces);
  CHECK(plan_reduce(geom_of({7, 1, 9}, {1, 2})).path == ReducePath::Warps);
  // Size-1 and contiguous dims merge: a contiguous (4, 5, 6) over its last two is one row of 30.
  ReduceGeom g = geom_of({4, 5, 6}, {1, 2});
  CHECK(g.nkept == 1);
  CHECK(g.nred == 1);
  CHECK(g.red_sizes[0] == 30);
  for (int64_t count : {1, 2, 7, 255, 256, 257, 100000})
    for (int64_t parts : {1, 2, 3, 8, 64, 1000}) {
      int64_t covered = 0, last_end = 0;
      for (int64_t part = 0; part < parts; ++part) {
        int64_t b = 0, e = 0;
        part_range(count, parts, part, b, e);
        CHECK(b <= e);
        if (b < e) CHECK(b == last_end);
        if (b < e) last_end = e;
        covered += e - b;
      }
      CHECK(covered == count);
      CHECK(last_end == count);
    }
}

namespace {

template <class T>
void run_rows(OpKind kind, const ReduceGeom& g, const T* px, T* po, int64_t nlanes);

// What the one-kernel path computes for the op's call (x contiguous, the dims permuted last), its
// lanes run one after another and their parts combined in order; undefined where
// make_softmax_geom declines the call.
template <class T>
Tensor emulate_softmax_rows(OpKind kind, const Tensor& x0, const Shape& dims, int64_t nlanes) {
  const bool rows = kind == OpKind::Logsumexp;
  Tensor x = x0.contiguous();
  std::vector<bool> mask(static_cast<size_t>(x.dim()), false);
  for (int64_t d : dims) mask[static_cast<size_t>(d)] = true;
  Shape perm, kept;
  int nreduced = 0;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (!mask[d]) perm.push_back(d), kept.push_back(x.shape()[d]);
  for (int64_t d = 0; d < x.dim(); ++d)
    if (mask[d]) perm.push_back(d), ++nreduced;
  Tensor out = zeros(rows ? kept : x.shape(), {.dtype = x.dtype()});
  Tensor xp = x.permute(perm), op = rows ? out : out.permute(perm);
  ReduceGeom g;
  if (!make_softmax_geom(kind, *op.impl(), *xp.impl(), nreduced, g)) return {};
  run_rows(kind, g, xp.data_ptr<T>(), op.data_ptr<T>(), nlanes);
  return out;
}

template <class T>
void run_rows(OpKind kind, const ReduceGeom& g, const T* px, T* po, int64_t nlanes) {
  for (int64_t o = 0; o < g.nout; ++o) {
    const int64_t base = kept_offset(g, o);
    double m = -INFINITY, sum = 0;
    for (int64_t lane = 0; lane < nlanes; ++lane)
      m = max_fold(m, row_max_part(px, g, base, lane, nlanes));
    const T shift = row_shift<T>(m);
    for (int64_t lane = 0; lane < nlanes; ++lane)
      sum += row_sum_part(px, g, base, shift, lane, nlanes);
    for (int64_t lane = 0; lane < nlanes; ++lane)
      row_write(kind, px, po, g, o, base, shift, sum, lane, nlanes);
  }
}

// Equal within tol (relative, and absolute near 0), with NaN where want has NaN and the same
// infinities.
void check_close(const Tensor& got, const Tensor& want, double tol) {
  REQUIRE(got.shape() == want.shape());
  std::vector<double> a = got.to(kF64).to_vector<double>(), b = want.to(kF64).to_vector<double>();
  int bad = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(b[i]) || std::isinf(b[i])) {
      bad += std::isnan(b[i]) ? !std::isnan(a[i]) : a[i] != b[i];
      continue;
    }
    bad += !(std::abs(a[i] - b[i]) <= tol * std::max(1.0, std::abs(b[i])));
  }
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("cuda softmax rows: the steps give the CPU's softmax, log_softmax and logsumexp") {
  std::mt19937 rng(11);
  std::normal_distribution<double> normal(0.0, 3.0);
  auto values = [&](const Shape& s, DType dtype) {
    int64_t count = 1;
    for (int64_t d : s) count *= d;
    std::vector<double> v(static_cast<size_t>(count));
    for (auto& e : v) e = normal(rng);
    return tensor(v, s).to(dtype);
  };
  struct Case {
    Shape shape;
    int64_t dim;
    bool transpose;  // x is (shape with dims 0 and last swapped).transpose(0, -1): strided
  };
  const std::vector<Case> cases = {
      {{60, 10}, 1, false},                          // a classifier's rows: a warp each
      {{60, 10}, -1, true},                          // the same, from a transposed input
      {{3, 5000}, 1, false},                         // long rows: a block each
      {{4, 6, 5}, 1, false},                         // the middle dim: rows at stride 5
      {{4, 6, 5}, 0, true},  {{7, 1, 9}, 2, false},  // a size-1 dim among the kept ones
      {{1, 1}, 1, false},    {{33}, 0, false},
  };
  int compared = 0;
  for (DType dtype : {kF64, kF32}) {
    const double tol = dtype == kF64 ? 1e-12 : 2e-5;
    for (const Case& c : cases) {
      Tensor x = values(c.shape, dtype);
      if (c.transpose && x.dim() >= 2) {
        Shape swapped = c.shape;
        std::swap(swapped[0], swapped[swapped.size() - 1]);
        x = values(swapped, dtype).transpose(0, -1);
      }
      // Large values (a shift is needed), a row of -inf, an inf, a NaN.
      if (x.dim() == 2 && x.shape()[0] >= 4 && x.shape()[1] >= 2) {
        x = x.clone();
        x.select(0, 0).fill_(1000.0);
        x.select(0, 1).fill_(-INFINITY);
        x.select(0, 2).narrow(0, 1, 1).fill_(INFINITY);
        x.select(0, 3).narrow(0, 0, 1).fill_(NAN);
      }
      const int64_t d = c.dim < 0 ? c.dim + x.dim() : c.dim;
      for (int64_t nlanes : {1, 32, 256}) {
        CAPTURE(c.shape);
        CAPTURE(d);
        CAPTURE(nlanes);
        CAPTURE(dtype);
        auto run = [&](OpKind kind, const Shape& dims) {
          return dtype == kF64 ? emulate_softmax_rows<double>(kind, x, dims, nlanes)
                               : emulate_softmax_rows<float>(kind, x, dims, nlanes);
        };
        Tensor sm = run(OpKind::Softmax, {d}), lsm = run(OpKind::LogSoftmax, {d});
        Tensor lse = run(OpKind::Logsumexp, {d});
        const bool columns = plan_reduce(geom_of(x.shape(), {d})).path == ReducePath::Columns;
        if (columns) {  // declined: the composite runs
          CHECK_FALSE(sm.defined());
          continue;
        }
        REQUIRE(sm.defined());
        REQUIRE(lsm.defined());
        REQUIRE(lse.defined());
        check_close(sm, softmax(x, d), tol);
        check_close(lsm, log_softmax(x, d), tol);
        check_close(lse, logsumexp(x, d), tol);
        compared += 3;
      }
    }
    // logsumexp over two dims of a strided view.
    Tensor x = values({5, 4, 6}, dtype).transpose(0, 2);  // (6, 4, 5)
    for (const Shape& dims : {Shape{0, 2}, Shape{1, 2}, Shape{0, 1, 2}}) {
      CAPTURE(dims);
      Tensor got = dtype == kF64 ? emulate_softmax_rows<double>(OpKind::Logsumexp, x, dims, 32)
                                 : emulate_softmax_rows<float>(OpKind::Logsumexp, x, dims, 32);
      REQUIRE(got.defined());
      check_close(got, logsumexp(x, dims), tol);
      ++compared;
    }
  }
  CHECK(compared > 100);
}

TEST_CASE("cuda softmax rows: shapes that split a row, and integer inputs, keep the composite") {
  // Few very long rows (Pieces) and columns decline; so do dtypes other than f32 and f64.
  CHECK_FALSE(
      emulate_softmax_rows<double>(OpKind::Softmax, zeros({2, 70000}, {.dtype = kF64}), {1}, 32)
          .defined());
  CHECK_FALSE(
      emulate_softmax_rows<double>(OpKind::Logsumexp, zeros({70000}, {.dtype = kF64}), {0}, 32)
          .defined());
  CHECK_FALSE(
      emulate_softmax_rows<double>(OpKind::Softmax, zeros({1024, 500}, {.dtype = kF64}), {0}, 32)
          .defined());
  Tensor ints = zeros({4, 8}, {.dtype = kI64}), out = zeros({4, 8}, {.dtype = kI64});
  ReduceGeom g;
  CHECK_FALSE(make_softmax_geom(OpKind::Softmax, *out.impl(), *ints.impl(), 1, g));
  // softmax's out must share x's offsets.
  Tensor x = zeros({4, 8}, {.dtype = kF32}), other = zeros({8, 4}, {.dtype = kF32}).t();
  CHECK_FALSE(make_softmax_geom(OpKind::Softmax, *other.impl(), *x.impl(), 1, g));
  CHECK(make_softmax_geom(OpKind::Softmax, *zeros({4, 8}).impl(), *x.impl(), 1, g));
  CHECK(g.nout == 4);
  CHECK(g.count == 8);
  // And where the CPU runs the op, it has no such kernel: the composite runs.
  CHECK_FALSE(cpu_backend().softmax_rows());
}

namespace {

// The CPU backend with the one-kernel path's steps as its softmax_rows (lanes in turn), handed
// out through the trace hook so that the ops take that path on the host. Counts its calls.
class RowsOnCpu final : public Backend {
 public:
  Backend& cpu = cpu_backend();
  int calls = 0;
  void* allocate(size_t n) override { return cpu.allocate(n); }
  void deallocate(void* p, size_t n) override { cpu.deallocate(p, n); }
  void synchronize() override { cpu.synchronize(); }
  void copy(const TensorImpl& d, const TensorImpl& s) override { cpu.copy(d, s); }
  void copy_from_host(const TensorImpl& d, const void* s) override { cpu.copy_from_host(d, s); }
  void copy_to_host(void* d, const TensorImpl& s) override { cpu.copy_to_host(d, s); }
  void fill(const TensorImpl& d, Scalar v) override { cpu.fill(d, v); }
  void iota(const TensorImpl& d, double a, double b) override { cpu.iota(d, a, b); }
  void random(RandomKind k, const TensorImpl& d, uint64_t seed, uint64_t off, double a,
              double b) override {
    cpu.random(k, d, seed, off, a, b);
  }
  void unary(OpKind k, const TensorImpl& o, const TensorImpl& x, const OpAttrs& a) override {
    cpu.unary(k, o, x, a);
  }
  void binary(OpKind k, const TensorImpl& o, const TensorImpl& a, const TensorImpl& b) override {
    cpu.binary(k, o, a, b);
  }
  void where(const TensorImpl& o, const TensorImpl& c, const TensorImpl& a,
             const TensorImpl& b) override {
    cpu.where(o, c, a, b);
  }
  void reduce(OpKind k, const TensorImpl& o, const TensorImpl& x, int n) override {
    cpu.reduce(k, o, x, n);
  }
  void matmul(const TensorImpl& o, const TensorImpl& a, const TensorImpl& b) override {
    cpu.matmul(o, a, b);
  }
  void index(OpKind k, const TensorImpl& o, const TensorImpl& x, int dim,
             const TensorImpl& i) override {
    cpu.index(k, o, x, dim, i);
  }
  void window(OpKind k, const TensorImpl& o, const TensorImpl& x, const Window2d& w,
              const TensorImpl* i) override {
    cpu.window(k, o, x, w, i);
  }
  bool softmax_rows() const override { return true; }
  bool softmax_rows(OpKind kind, const TensorImpl& out, const TensorImpl& x,
                    int nreduced) override {
    ReduceGeom g;
    if (!make_softmax_geom(kind, out, x, nreduced, g)) return false;
    ++calls;
    if (x.dtype == kF64)
      run_rows(kind, g, reinterpret_cast<const double*>(x.data()),
               reinterpret_cast<double*>(out.data()), 32);
    else
      run_rows(kind, g, reinterpret_cast<const float*>(x.data()),
               reinterpret_cast<float*>(out.data()), 32);
    return true;
  }
};

struct RowsHook final : TraceHook {
  RowsOnCpu rows;
  Backend& backend(Device) override { return rows; }
  void on_allocate(const std::shared_ptr<Storage>&) override {}
};

}  // namespace

TEST_CASE("cuda softmax rows: the ops' path through a backend's kernel, forward and backward") {
  // What the ops hand the backend (x contiguous or not, dims permuted last, out's shape, keepdim)
  // and the gradient through the result the kernel wrote, against the CPU's composite.
  std::mt19937 rng(3);
  std::normal_distribution<double> normal(0.0, 2.0);
  auto values = [&](const Shape& s) {
    int64_t count = 1;
    for (int64_t d : s) count *= d;
    std::vector<double> v(static_cast<size_t>(count));
    for (auto& e : v) e = normal(rng);
    return tensor(v, s);
  };
  Tensor x = values({5, 4, 6}).transpose(0, 1);  // (4, 5, 6), not contiguous
  auto run = [&](const std::function<Tensor(const Tensor&)>& f, bool kernel, int* calls) {
    Tensor leaf = x.detach().requires_grad_(true);
    RowsHook hook;
    Tensor y;
    if (kernel) t_trace_hook = &hook;
    try {
      y = f(leaf);
    } catch (...) {
      t_trace_hook = nullptr;
      throw;
    }
    t_trace_hook = nullptr;
    if (calls != nullptr) *calls = hook.rows.calls;
    Tensor w = sin(arange(y.numel(), {.dtype = kF64})).reshape(y.shape());
    (y * w).sum().backward();
    return std::pair{y.detach(), leaf.grad()};
  };
  // With the number of kernel calls: softmax over a dim that is not x's last reads columns
  // (the contiguous x's kept dims are innermost), which the kernel declines.
  const std::vector<std::pair<std::function<Tensor(const Tensor&)>, int>> fns = {
      {[](const Tensor& t) { return softmax(t, 2); }, 1},
      {[](const Tensor& t) { return softmax(t, 1); }, 0},
      {[](const Tensor& t) { return log_softmax(t, -1); }, 1},
      {[](const Tensor& t) { return log_softmax(t, 0); }, 0},
      {[](const Tensor& t) { return log_softmax(t.select(2, 0), 0); }, 1},  // rows at stride 5
      {[](const Tensor& t) { return logsumexp(t, {2}, true); }, 1},
      {[](const Tensor& t) {
         return logsumexp(t, {0, 2}, false);
       },
       1},
      {[](const Tensor& t) {
         return logsumexp(t, {0, 1, 2}, false);
       },
       1},
      {[](const Tensor& t) { return softmax(t.select(0, 0).select(0, 0).select(0, 1), 0); },
       0},  // 0-d
  };
  for (size_t i = 0; i < fns.size(); ++i) {
    CAPTURE(i);
    int calls = 0;
    auto [y, g] = run(fns[i].first, true, &calls);
    auto [y_ref, g_ref] = run(fns[i].first, false, nullptr);
    CHECK(calls == fns[i].second);
    check_close(y, y_ref, 1e-12);
    check_close(g, g_ref, 1e-12);
  }
}

namespace {

// cublas<t>gemmStridedBatched as its documentation defines it: column-major, per batch p,
// C[p] (m × n, ldc) = op(A[p]) (m × k) · op(B[p]) (k × n), op(X) = X or Xᵀ; element (i, j) of a
// column-major matrix with leading dimension ld at i + j·ld.
void reference_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const double* A, int64_t lda,
                    int64_t sa, const double* B, int64_t ldb, int64_t sb, double* C, int64_t ldc,
                    int64_t sc, int64_t batch) {
  for (int64_t p = 0; p < batch; ++p)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0;
        for (int64_t l = 0; l < k; ++l) {
          const double a = ta ? A[p * sa + l + i * lda] : A[p * sa + i + l * lda];
          const double b = tb ? B[p * sb + j + l * ldb] : B[p * sb + l + j * ldb];
          acc += a * b;
        }
        C[p * sc + i + j * ldc] = acc;
      }
}

// A 3-D operand (batch × r × c) in one of the layouts products meet.
Tensor product_operand(int64_t batch, int64_t r, int64_t c, int layout) {
  switch (layout) {
    case 0:
      return randn({batch, r, c}, {.dtype = kF64});  // contiguous
    case 1:
      return randn({batch, c, r}, {.dtype = kF64}).transpose(1, 2);  // transposed
    case 2:
      return randn({batch, r, c + 3}, {.dtype = kF64}).slice(2, 1, c + 1);  // row stride > c
    case 3:
      return randn({1, r, c}, {.dtype = kF64}).expand({batch, r, c});  // shared batch
    case 4:
      return randn({c, batch, r}, {.dtype = kF64}).permute({1, 2, 0});  // batch inside
    case 5:
      return randn({batch, r, 1}, {.dtype = kF64}).expand({batch, r, c});  // no unit stride
    case 6:
      return randn({batch, r, 2 * c}, {.dtype = kF64}).slice(2, 0, 2 * c, 2);  // stride 2
    default:
      return randn({1, r, c}, {.dtype = kF64});  // a batch of one for all of out's
  }
}

}  // namespace

TEST_CASE("cuda products: cuBLAS's arguments give the CPU's product for every operand layout") {
  std::mt19937 rng(41);
  manual_seed(41);
  int copied = 0, direct = 0;
  for (int trial = 0; trial < 300; ++trial) {
    const int64_t batch = 1 + rng() % 3, m = 1 + rng() % 5, k = 1 + rng() % 5, n = 1 + rng() % 5;
    const int la = static_cast<int>(rng() % 8), lb = static_cast<int>(rng() % 8);
    CAPTURE(trial);
    CAPTURE(la);
    CAPTURE(lb);
    Tensor a = product_operand(batch, m, k, la), b = product_operand(batch, k, n, lb);
    // As the backend does: an operand blas_view cannot take is copied contiguous.
    auto usable = [](const Tensor& t) {
      if (blas_view(t.size(1), t.size(2), t.stride(1), t.stride(2)).ok) return t;
      return t.contiguous();
    };
    Tensor ua = usable(a), ub = usable(b);
    (ua.is_alias_of(a) ? direct : copied) += 1;
    Tensor got = zeros({std::max(a.size(0), b.size(0)), m, n}, {.dtype = kF64});
    const GemmPlan p = plan_gemm(*got.impl(), *ua.impl(), *ub.impl());
    CHECK(p.ld_out >= std::max<int64_t>(p.m, 1));
    CHECK(p.ld_first >= std::max<int64_t>(p.trans_first ? p.k : p.m, 1));  // cuBLAS's bounds
    CHECK(p.ld_second >= std::max<int64_t>(p.trans_second ? p.n : p.k, 1));
    auto base = [](const Tensor& t) { return reinterpret_cast<const double*>(t.impl()->data()); };
    reference_gemm(p.trans_first, p.trans_second, p.m, p.n, p.k, base(ub), p.ld_first,
                   p.stride_first, base(ua), p.ld_second, p.stride_second,
                   reinterpret_cast<double*>(got.impl()->data()), p.ld_out, p.stride_out, p.batch);
    Tensor want = a.matmul(b);
    auto x = got.to_vector<double>(), y = want.to_vector<double>();
    REQUIRE(x.size() == y.size());
    for (size_t i = 0; i < x.size(); ++i)
      CHECK(std::abs(x[i] - y[i]) <= 1e-12 * (1 + std::abs(y[i])));
  }
  CHECK(direct > 100);  // most layouts go to cuBLAS as they are
  CHECK(copied > 20);
}
