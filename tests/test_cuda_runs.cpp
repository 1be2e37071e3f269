// The host-side halves of CUDA kernels. Reductions (lib/backend/cuda/reduce_plan.h): merged dims
// reach the same elements in the same order, every plan's parts cover each row once, and shapes
// take the kernel Note [Reduction kernels] says.
// The steps of CUDA's scatter_add without atomics (lib/backend/cuda/index_runs.h, Note [Scatter
// without atomics]), run here one thread after another: keys, a stable sort standing in for
// CUB's, pieces, joins. Every destination must get exactly the CPU backend's sum, on shapes whose
// runs of equal destinations start, end and cross the chunks' borders in every way. The values
// are small integers, so any grouping of the sums is exact and a lost or doubled element shows.
// Plain C++: it runs on every machine, GPU or not.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/index_runs.h"
#include "backend/cuda/reduce_plan.h"
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
