// The CUDA backend: one stream and one caching allocator per device, cuBLAS for products, the
// kernels of kernels.cu for everything else. Host code only (the C++ compiler): device code
// lives in kernels.cu behind the plain interface of kernels.h.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <map>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/fused_source.h"
#include "backend/cuda/gemm_plan.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/softmax_rows.h"
#include "core/check.h"
#include "tapegrad/format.h"

namespace tg {
namespace cuda_detail {

Strided make_strided(std::initializer_list<const TensorImpl*> ops) {
  Strided s;
  s.nops = static_cast<int>(ops.size());
  const TensorImpl& out = **ops.begin();
  int k = 0;
  for (const TensorImpl* t : ops) {
    s.base[k] = t->data();
    s.dtype[k] = t->dtype;
    ++k;
  }
  for (; k < kOperands; ++k) {
    s.base[k] = nullptr;
    s.dtype[k] = DType::F32;
  }
  int nd = static_cast<int>(out.sizes.size());
  for (int d = nd - 1; d >= 0; --d) {
    if (out.sizes[d] == 1) continue;
    s.sizes[s.ndim] = out.sizes[d];
    k = 0;
    for (const TensorImpl* t : ops) {
      s.strides[k][s.ndim] = t->strides[d] * static_cast<int64_t>(element_size(t->dtype));
      ++k;
    }
    for (; k < kOperands; ++k) s.strides[k][s.ndim] = 0;
    ++s.ndim;
  }
  if (s.ndim == 0) {  // one element
    s.ndim = 1;
    s.sizes[0] = 1;
    for (k = 0; k < kOperands; ++k) s.strides[k][0] = 0;
    return s;
  }
  int w = 0;
  for (int d = 1; d < s.ndim; ++d) {
    bool merge = true;
    for (k = 0; k < s.nops; ++k) merge &= s.strides[k][d] == s.strides[k][w] * s.sizes[w];
    if (merge) {
      s.sizes[w] *= s.sizes[d];
    } else {
      ++w;
      s.sizes[w] = s.sizes[d];
      for (k = 0; k < kOperands; ++k) s.strides[k][w] = s.strides[k][d];
    }
  }
  s.ndim = w + 1;
  return s;
}

WindowGeom make_window_geom(OpKind kind, const TensorImpl& out, const TensorImpl& x,
                            const Window2d& w) {
  const TensorImpl& image = kind == OpKind::Col2im ? out : x;
  const TensorImpl* cols = kind == OpKind::Im2col ? &out : kind == OpKind::Col2im ? &x : nullptr;
  WindowGeom g{};
  g.N = image.sizes[0], g.C = image.sizes[1], g.H = image.sizes[2], g.W = image.sizes[3];
  g.OH = w.out_h(g.H), g.OW = w.out_w(g.W);
  g.kh = w.kh, g.kw = w.kw, g.sh = w.sh, g.sw = w.sw, g.ph = w.ph, g.pw = w.pw, g.dh = w.dh,
  g.dw = w.dw;
  if (cols != nullptr) {
    g.col_n_stride = cols->strides[0];
    g.col_row_stride = cols->strides[1];
  }
  return g;
}

namespace {

// Note [CUDA errors]
// Every runtime and cuBLAS call is checked; a failure becomes tg::Error naming the op, the call
// and the error's name and text. An out-of-memory from cudaMalloc first empties the cache and
// retries, then reports the sizes. A kernel's own failure (a launch error) is caught at its
// launch; one during execution surfaces at the next synchronizing call, which names itself.
[[noreturn]] void fail(std::string_view op, const char* call, cudaError_t e) {
  (void)cudaGetLastError();  // clear it, where it is not sticky
  throw_error(fmt::format("{}: CUDA error {} ({}) from {}", op, cudaGetErrorName(e),
                          cudaGetErrorString(e), call));
}
// Note [cuBLAS on demand]
// cuBLAS (with cuBLASLt, several hundred MB) is opened at the first product, not linked: linked,
// every program built with CUDA paid a third of a second at startup to map it, CPU-only ones
// and every test included. The few entry points used are looked up once.
struct Blas {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  decltype(&cublasSetMathMode) set_math_mode = nullptr;
  decltype(&cublasSgemmStridedBatched) sgemm = nullptr;
  decltype(&cublasDgemmStridedBatched) dgemm = nullptr;
  decltype(&cublasSetWorkspace_v2) set_workspace = nullptr;
  decltype(&cublasGetStatusName) status_name = nullptr;
  decltype(&cublasGetStatusString) status_string = nullptr;
};

const Blas& blas() {
  static const Blas b = [] {
    std::string name = fmt::format("libcublas.so.{}", CUBLAS_VER_MAJOR);
    void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
#ifdef TG_CUBLAS_DIR
    if (lib == nullptr) lib = dlopen((TG_CUBLAS_DIR "/" + name).c_str(), RTLD_NOW | RTLD_LOCAL);
#endif
    if (lib == nullptr) lib = dlopen("libcublas.so", RTLD_NOW | RTLD_LOCAL);
    TG_CHECK(lib != nullptr, "matmul: cuBLAS could not be loaded ({}): {}", name, dlerror());
    Blas r;
    auto sym = [&](auto& fn, const char* symbol) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, symbol));
      TG_CHECK(fn != nullptr, "matmul: {} has no {}", name, symbol);
    };
    sym(r.create, "cublasCreate_v2");
    sym(r.set_stream, "cublasSetStream_v2");
    sym(r.set_math_mode, "cublasSetMathMode");
    sym(r.sgemm, "cublasSgemmStridedBatched");
    sym(r.dgemm, "cublasDgemmStridedBatched");
    sym(r.set_workspace, "cublasSetWorkspace_v2");
    sym(r.status_name, "cublasGetStatusName");
    sym(r.status_string, "cublasGetStatusString");
    return r;
  }();
  return b;
}

[[noreturn]] void fail_blas(std::string_view op, const char* call, cublasStatus_t s) {
  throw_error(fmt::format("{}: cuBLAS error {} ({}) from {}", op, blas().status_name(s),
                          blas().status_string(s), call));
}
#define TG_CUDA(op, call)                            \
  do {                                               \
    cudaError_t tg_e_ = (call);                      \
    if (tg_e_ != cudaSuccess) fail(op, #call, tg_e_); \
  } while (0)
#define TG_CUBLAS(op, call)                                         \
  do {                                                              \
    cublasStatus_t tg_s_ = (call);                                  \
    if (tg_s_ != CUBLAS_STATUS_SUCCESS) fail_blas(op, #call, tg_s_); \
  } while (0)
// After a launch: a bad configuration or a missing kernel image shows here.
#define TG_LAUNCHED(op) TG_CUDA(op, cudaGetLastError())

std::atomic<bool> g_allow_tf32{false};

int device_count_or_zero() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

size_t nbytes_of(const TensorImpl& t) {
  return static_cast<size_t>(t.numel) * element_size(t.dtype);
}

// Note [Exact allocations]
// TAPEGRAD_CUDA_CACHING=0 in the environment (read once, when a device is first used) turns the
// caching off: each tensor is a cudaMalloc of its exact size, given back with cudaFree when the
// tensor dies. That is slow (cudaFree waits for the device) and it is for checking: under
// compute-sanitizer's memcheck, a kernel that reads or writes past a tensor's end is then past
// its allocation's end too, where with the cache it would be inside a rounded block and unseen.
// (PyTorch's PYTORCH_NO_CUDA_MEMORY_CACHING is the same switch.) `scripts/tg gpu` runs memcheck
// so, and the emulated GPU's suite runs both ways.
bool caching_on() {
  static const bool on = [] {
    const char* v = std::getenv("TAPEGRAD_CUDA_CACHING");
    return v == nullptr || std::string_view(v) != "0";
  }();
  return on;
}

// A block's size: rounded so that freed blocks are found again (512 bytes below 1 MiB, 2 MiB
// above), or the size asked for where the cache is off (Note [Exact allocations]).
size_t round_size(size_t n) {
  constexpr size_t kSmall = 512, kLarge = size_t{2} << 20;
  if (!caching_on()) return n;
  return n < (size_t{1} << 20) ? (n + kSmall - 1) / kSmall * kSmall
                               : (n + kLarge - 1) / kLarge * kLarge;
}

class CudaBackend;
CudaBackend& backend_of(int index);

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int index) : index_(index) {}

  // --- memory ----------------------------------------------------------------------------------

  void* allocate(size_t nbytes) override {
    const OnDevice on = enter("allocate");
    size_t size = round_size(nbytes);
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = cache_.find(size);
      if (it != cache_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        note_alloc(size);
        if (recording_here()) capture_live_.insert(p);
        return p;
      }
    }
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, size);
    if (e == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      empty_cache();
      e = cudaMalloc(&p, size);
    }
    if (e == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      size_t free = 0, total = 0;
      (void)cudaMemGetInfo(&free, &total);
      (void)cudaGetLastError();
      std::lock_guard<std::mutex> lock(mu_);
      throw_error(fmt::format(
          "CUDA out of memory on cuda:{}: tried to allocate {} bytes; {} bytes in tensors, {} "
          "held by tapegrad, {} free of {} on the device",
          index_, size, allocated_, reserved_, free, total));
    }
    TG_CUDA("allocate", e);
    std::lock_guard<std::mutex> lock(mu_);
    reserved_ += static_cast<int64_t>(size);
    note_alloc(size);
    if (recording_here()) capture_live_.insert(p);
    return p;
  }

  void deallocate(void* ptr, size_t nbytes) override {
    // Stream-ordered: work queued on the one stream that used the block runs before any later
    // use of it, so the block may be handed out again at once.
    size_t size = round_size(nbytes);
    std::lock_guard<std::mutex> lock(mu_);
    allocated_ -= static_cast<int64_t>(size);
    if (recording_here()) {
      // A block freed while a replay is recorded is the graph's until the graph is destroyed:
      // each launch writes it again (Note [Captured replays]).
      capture_live_.erase(ptr);
      capture_freed_.push_back({ptr, size});
      return;
    }
    release(ptr, size);
  }

  // A free block (under mu_): into the cache, or back to the driver where the cache is off
  // (Note [Exact allocations]; not while another thread records: cudaFree would wait).
  void release(void* ptr, size_t size) {
    if (caching_on() || capturing_) {
      cache_[size].push_back(ptr);
      return;
    }
    const OnDevice on = enter_quietly();
    (void)cudaFree(ptr);
    (void)cudaGetLastError();
    reserved_ -= static_cast<int64_t>(size);
  }

  void empty_cache() {
    refuse_while_capturing("empty_cache");
    if (stream_ != nullptr) (void)cudaStreamSynchronize(stream_);
    const OnDevice on = enter_quietly();
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [size, blocks] : cache_) {
      for (void* p : blocks) {
        (void)cudaFree(p);
        reserved_ -= static_cast<int64_t>(size);
      }
      blocks.clear();
    }
    (void)cudaGetLastError();
  }

  cuda::Memory memory() {
    std::lock_guard<std::mutex> lock(mu_);
    return {allocated_, reserved_, peak_};
  }
  void reset_peak() {
    std::lock_guard<std::mutex> lock(mu_);
    peak_ = allocated_;
  }

  void synchronize() override {
    refuse_while_capturing("synchronize");
    const OnDevice on = enter("synchronize");
    TG_CUDA("synchronize", cudaStreamSynchronize(stream_));
  }

  // --- copies ----------------------------------------------------------------------------------

  void copy(const TensorImpl& dst, const TensorImpl& src) override {
    const OnDevice on = enter("copy");
    launch_copy(make_strided({&dst, &src}), dst.numel, stream());
    TG_LAUNCHED("copy");
  }

  // Note [Copies between GPUs]
  // A tensor moved from one GPU to another goes straight there (cudaMemcpyPeerAsync: over NVLink
  // or PCIe, staged by the driver where the two cannot reach each other), with no wait on the
  // host. Two streams are involved, so it is ordered on both, on the devices: the copy, on the
  // destination's stream, waits for the source's stream to reach what wrote the tensor (an
  // event); and the source's stream waits for the copy (another event) before anything later on
  // it, so a source freed at once, its block handed out again on its device, is not overwritten
  // while the copy still reads it.
  void transfer(const TensorImpl& dst, const TensorImpl& src) override {
    const Device from = src.storage->device, to = dst.storage->device;
    if (!from.is_cuda() || !to.is_cuda() || from.index == to.index) {
      Backend::transfer(dst, src);
      return;
    }
    CudaBackend& source = backend_of(from.index);
    const std::string op = fmt::format("copy from {} to {}", from.str(), to.str());
    refuse_while_capturing(op);
    source.refuse_while_capturing(op);
    TG_CHECK(dst.is_contiguous() && src.is_contiguous() && dst.dtype == src.dtype &&
                 dst.numel == src.numel,
             "{}: expected two contiguous tensors of one dtype and size", op);
    const size_t bytes = nbytes_of(src);
    const OnDevice on_source = source.enter(op);
    cudaEvent_t written = nullptr, copied = nullptr;
    TG_CUDA(op, cudaEventCreateWithFlags(&written, cudaEventDisableTiming));
    TG_CUDA(op, cudaEventRecord(written, source.stream()));
    const OnDevice on = enter(op);
    TG_CUDA(op, cudaEventCreateWithFlags(&copied, cudaEventDisableTiming));
    TG_CUDA(op, cudaStreamWaitEvent(stream(), written, 0));
    TG_CUDA(op, cudaMemcpyPeerAsync(dst.data(), index_, src.data(), from.index, bytes, stream()));
    TG_CUDA(op, cudaEventRecord(copied, stream()));
    TG_CUDA(op, cudaStreamWaitEvent(source.stream(), copied, 0));
    // Destroyed with their records pending: CUDA frees them once they complete.
    (void)cudaEventDestroy(written);
    (void)cudaEventDestroy(copied);
  }

  // Note [Pinned staging]
  // Large copies go through pinned memory, so the transfer runs at the bus's speed; small ones
  // straight from pageable memory. The pinned memory is two halves used in turn: the host fills
  // (or empties) one while the GPU copies the other, so for a large tensor the host's memcpy and
  // the bus overlap instead of taking turns. An event per half says when the GPU is done with it.
  // A copy to the device does not wait for it: CUDA takes a small copy's bytes from pageable
  // memory before cudaMemcpyAsync returns (its staging), a large one's are in our halves, and
  // what reads the tensor runs after the copy on the stream. So `x.to(tg::cuda())` in a training
  // loop queues behind the previous step instead of waiting for it.
  void copy_from_host(const TensorImpl& dst, const void* src) override {
    refuse_while_capturing("copy to cuda");
    const OnDevice on = enter("copy to cuda");
    size_t n = nbytes_of(dst);
    auto* d = static_cast<char*>(dst.data());
    const auto* s = static_cast<const char*>(src);
    if (n < kPinnedFrom) {
      TG_CUDA("copy to cuda", cudaMemcpyAsync(d, s, n, cudaMemcpyHostToDevice, stream_));
      return;
    }
    std::lock_guard<std::mutex> lock(pinned_mu_);
    pinned("copy to cuda");
    for (size_t done = 0, k = 0; done < n; done += kPinnedBytes, ++k) {
      const size_t part = std::min(kPinnedBytes, n - done), h = k % 2;
      // The half's previous copy (two pieces ago, or an earlier call's) has left it.
      TG_CUDA("copy to cuda", cudaEventSynchronize(pinned_done_[h]));
      std::memcpy(pinned_half_[h], s + done, part);
      TG_CUDA("copy to cuda",
              cudaMemcpyAsync(d + done, pinned_half_[h], part, cudaMemcpyHostToDevice, stream_));
      TG_CUDA("copy to cuda", cudaEventRecord(pinned_done_[h], stream_));
    }
  }

  void copy_to_host(void* dst, const TensorImpl& src) override {
    refuse_while_capturing("copy to cpu");
    const OnDevice on = enter("copy to cpu");
    size_t n = nbytes_of(src);
    const char* s = src.data();
    auto* d = static_cast<char*>(dst);
    if (n < kPinnedFrom) {
      TG_CUDA("copy to cpu", cudaMemcpyAsync(d, s, n, cudaMemcpyDeviceToHost, stream_));
      TG_CUDA("copy to cpu", cudaStreamSynchronize(stream_));
      return;
    }
    std::lock_guard<std::mutex> lock(pinned_mu_);
    pinned("copy to cpu");
    // Piece k + 1 goes into one half while the host empties piece k out of the other.
    auto start = [&](size_t k) {
      const size_t done = k * kPinnedBytes, part = std::min(kPinnedBytes, n - done), h = k % 2;
      TG_CUDA("copy to cpu",
              cudaMemcpyAsync(pinned_half_[h], s + done, part, cudaMemcpyDeviceToHost, stream_));
      TG_CUDA("copy to cpu", cudaEventRecord(pinned_done_[h], stream_));
    };
    const size_t pieces = (n + kPinnedBytes - 1) / kPinnedBytes;
    start(0);
    for (size_t k = 0; k < pieces; ++k) {
      if (k + 1 < pieces) start(k + 1);
      const size_t done = k * kPinnedBytes, part = std::min(kPinnedBytes, n - done), h = k % 2;
      TG_CUDA("copy to cpu", cudaEventSynchronize(pinned_done_[h]));
      std::memcpy(d + done, pinned_half_[h], part);
    }
  }

  void fill(const TensorImpl& dst, Scalar value) override {
    const OnDevice on = enter("fill");
    launch_fill(make_strided({&dst}), dst.numel, value.to_double(), value.to_int(), stream());
    TG_LAUNCHED("fill");
  }

  void iota(const TensorImpl& dst, double start, double step) override {
    const OnDevice on = enter("arange");
    launch_iota(dst.data(), dst.dtype, dst.numel, start, step, stream());
    TG_LAUNCHED("arange");
  }

  void random(RandomKind kind, const TensorImpl& dst, uint64_t seed, uint64_t offset, double a,
              double b) override {
    const OnDevice on = enter("random");
    int k = kind == RandomKind::Uniform ? 0 : kind == RandomKind::Normal ? 1 : 2;
    launch_random(k, dst.data(), dst.dtype, dst.numel, seed, offset, nullptr, a, b, stream());
    TG_LAUNCHED("random");
  }

  // --- device-side arguments (Note [Device-side arguments], lib/trace/executor.cpp) -------------

  bool has_device_arguments() const override { return true; }

  void random_from(RandomKind kind, const TensorImpl& dst, const TensorImpl& slot, double a,
                   double b) override {
    const OnDevice on = enter("random");
    int k = kind == RandomKind::Uniform ? 0 : kind == RandomKind::Normal ? 1 : 2;
    launch_random(k, dst.data(), dst.dtype, dst.numel, 0, 0,
                  reinterpret_cast<const int64_t*>(slot.data()), a, b, stream());
    TG_LAUNCHED("random");
  }

  void write_words(const TensorImpl& dst, const std::vector<int64_t>& words) override {
    const OnDevice on = enter("replay");
    launch_words(reinterpret_cast<int64_t*>(dst.data()), words.data(),
                 static_cast<int64_t>(words.size()), stream());
    TG_LAUNCHED("replay");
  }

  void index_flagged(OpKind kind, const TensorImpl& out, const TensorImpl& x, int dim,
                     const TensorImpl& index, const TensorImpl& flag) override {
    const TensorImpl& target = kind == OpKind::ScatterAdd ? out : x;
    auto* f = reinterpret_cast<int64_t*>(flag.data());
    const OnDevice on = enter(op_name(kind));
    if (index.numel > 0) {
      launch_check_indices(make_strided({&index}), index.numel,
                           target.sizes.empty() ? 1 : target.sizes[dim], f, stream());
      TG_LAUNCHED(op_name(kind));
    }
    run_index(kind, out, x, dim, index, f);
  }

  // --- elementwise and reductions --------------------------------------------------------------

  void unary(OpKind kind, const TensorImpl& out, const TensorImpl& x,
             const OpAttrs& attrs) override {
    const OnDevice on = enter(op_name(kind));
    launch_unary(kind, attrs, make_strided({&out, &x}), out.numel, stream());
    TG_LAUNCHED(op_name(kind));
  }

  void binary(OpKind kind, const TensorImpl& out, const TensorImpl& a,
              const TensorImpl& b) override {
    const OnDevice on = enter(op_name(kind));
    launch_binary(kind, make_strided({&out, &a, &b}), out.numel, stream());
    TG_LAUNCHED(op_name(kind));
  }

  void where(const TensorImpl& out, const TensorImpl& cond, const TensorImpl& a,
             const TensorImpl& b) override {
    const OnDevice on = enter("where");
    launch_where(make_strided({&out, &cond, &a, &b}), out.numel, stream());
    TG_LAUNCHED("where");
  }

  void reduce(OpKind kind, const TensorImpl& out, const TensorImpl& x, int nreduced) override {
    const OnDevice on = enter(op_name(kind));
    ReduceGeom g = make_reduce_geom(out, x, nreduced);
    size_t ws = reduce_workspace_bytes(g);
    void* workspace = ws > 0 ? allocate(ws) : nullptr;
    launch_reduce(kind, x.dtype, x.data(), out.data(), g, workspace, stream());
    if (workspace != nullptr) deallocate(workspace, ws);  // stream-ordered: safe at once
    TG_LAUNCHED(op_name(kind));
  }

  // One kernel per call (Note [Softmax rows], softmax_rows.h), for the shapes it takes.
  bool softmax_rows() const override { return true; }
  bool softmax_rows(OpKind kind, const TensorImpl& out, const TensorImpl& x,
                    int nreduced) override {
    ReduceGeom g;
    if (!make_softmax_geom(kind, out, x, nreduced, g)) return false;
    const OnDevice on = enter(op_name(kind));
    launch_softmax_rows(kind, x.dtype, x.data(), out.data(), g, stream());
    TG_LAUNCHED(op_name(kind));
    return true;
  }

  // --- products --------------------------------------------------------------------------------

  // out (B×m×n, contiguous) = a (B×m×k) · b (B×k×n) through cuBLAS (Note [Products on cuBLAS]).
  void matmul(const TensorImpl& out, const TensorImpl& a, const TensorImpl& b) override {
    const OnDevice on = enter("matmul");
    const int64_t B = out.sizes[0], m = out.sizes[1], n = out.sizes[2], k = a.sizes[2];
    if (B == 0 || m == 0 || n == 0) return;
    if (k == 0) return fill(out, Scalar(0));
    TG_CHECK(m <= INT_MAX && n <= INT_MAX && k <= INT_MAX,
             "matmul: {}x{}x{} is too large for one cuBLAS call", m, k, n);
    cublasHandle_t handle = blas_handle();
    std::shared_ptr<Storage> keep_a, keep_b;
    TensorImpl ca = contiguous_if_needed(a, keep_a), cb = contiguous_if_needed(b, keep_b);
    const GemmPlan p = plan_gemm(out, ca, cb);  // Note [Products on cuBLAS], gemm_plan.h
    TG_CHECK(p.ld_first <= INT_MAX && p.ld_second <= INT_MAX && B <= INT_MAX,
             "matmul: operands with strides of {} and {} elements are too large for cuBLAS",
             p.ld_first, p.ld_second);
    const cublasOperation_t op_first = p.trans_first ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_second = p.trans_second ? CUBLAS_OP_T : CUBLAS_OP_N;
    auto i32 = [](int64_t v) { return static_cast<int>(v); };
    if (out.dtype == kF32) {
      TG_CUBLAS("matmul", blas().set_math_mode(handle, g_allow_tf32 ? CUBLAS_TF32_TENSOR_OP_MATH
                                                                     : CUBLAS_DEFAULT_MATH));
      const float one = 1, zero = 0;
      TG_CUBLAS("matmul", blas().sgemm(handle, op_first, op_second, i32(p.m), i32(p.n), i32(p.k),
                                       &one, reinterpret_cast<const float*>(cb.data()),
                                       i32(p.ld_first), p.stride_first,
                                       reinterpret_cast<const float*>(ca.data()), i32(p.ld_second),
                                       p.stride_second, &zero, reinterpret_cast<float*>(out.data()),
                                       i32(p.ld_out), p.stride_out, i32(p.batch)));
    } else {
      TG_CHECK(out.dtype == kF64, "matmul on CUDA takes f32 or f64, got {}", out.dtype);
      const double one = 1, zero = 0;
      TG_CUBLAS(
          "matmul",
          blas().dgemm(handle, op_first, op_second, i32(p.m), i32(p.n), i32(p.k), &one,
                       reinterpret_cast<const double*>(cb.data()), i32(p.ld_first), p.stride_first,
                       reinterpret_cast<const double*>(ca.data()), i32(p.ld_second),
                       p.stride_second, &zero, reinterpret_cast<double*>(out.data()), i32(p.ld_out),
                       p.stride_out, i32(p.batch)));
    }
  }

  // --- indexing and windows --------------------------------------------------------------------

  void index(OpKind kind, const TensorImpl& out, const TensorImpl& x, int dim,
             const TensorImpl& index) override {
    const OnDevice on = enter(op_name(kind));
    const TensorImpl& target = kind == OpKind::ScatterAdd ? out : x;
    const int64_t size = target.sizes.empty() ? 1 : target.sizes[dim];
    // Note [Indices checked once]: indices checked on the host already need no wait here.
    if (!indices_known_within(index, size)) check_indices(index, size, op_name(kind), dim);
    run_index(kind, out, x, dim, index, nullptr);
  }

  // The index kernels, once the indices are checked (or, with skip, checked into *skip).
  void run_index(OpKind kind, const TensorImpl& out, const TensorImpl& x, int dim,
                 const TensorImpl& index, const int64_t* skip) {
    const std::string_view op = op_name(kind);
    const TensorImpl& space = kind == OpKind::ScatterAdd ? x : out;
    IndexGeom g = make_index_geom(kind, out, x, dim, index);
    size_t ws = index_workspace_bytes(kind, out.dtype, g, space.numel);
    void* workspace = ws > 0 ? allocate(ws) : nullptr;
    cudaError_t e = launch_index(kind, out.dtype, out.data(), x.data(),
                                 reinterpret_cast<const int64_t*>(index.data()), g, space.numel,
                                 workspace, ws, skip, stream());
    if (workspace != nullptr) deallocate(workspace, ws);  // stream-ordered: safe at once
    TG_CUDA(op, e);
    TG_LAUNCHED(op);
  }

  void window(OpKind kind, const TensorImpl& out, const TensorImpl& x, const Window2d& w,
              const TensorImpl* indices) override {
    const std::string_view op = op_name(kind);
    const OnDevice on = enter(op);
    const WindowGeom g = make_window_geom(kind, out, x, w);
    launch_window(kind, out.dtype, out.data(), x.data(),
                  indices != nullptr ? reinterpret_cast<int64_t*>(indices->data()) : nullptr, g,
                  stream());
    TG_LAUNCHED(op);
  }

  // --- fused groups (Note [Generated fused kernels], fused_source.cpp) --------------------------

  void fused(const std::vector<FusedStep>& steps, const TensorImpl& out,
             const TensorImpl* const* inputs, size_t ninputs) override {
    const OnDevice on = enter("fused");
    if (out.numel == 0) return;
    int ndim = 0;
    std::vector<int64_t> words = fused_params(out, inputs, ninputs, ndim);
    // Kernel parameters are limited to 4 KB; the generator may decline a step; NVRTC may be
    // missing (a machine with the driver and runtime only). Then the reference runs the steps.
    cudaKernel_t kernel = nullptr;
    if (generated_fusion() && words.size() * sizeof(int64_t) <= 4000) {
      std::vector<DType> dtypes;
      for (size_t k = 0; k < ninputs; ++k) dtypes.push_back(inputs[k]->dtype);
      if (auto src = fused_source(steps, dtypes, out.dtype, ndim)) kernel = fused_kernel(*src);
    }
    if (kernel == nullptr) {
      Backend::fused(steps, out, inputs, ninputs);
      return;
    }
    constexpr int kThreads = 256;
    int64_t blocks = std::min<int64_t>((out.numel + kThreads - 1) / kThreads,
                                       int64_t{32} * std::max(sm_count_, 1));
    void* args[] = {words.data()};
    TG_CUDA("fused", cudaLaunchKernel(reinterpret_cast<const void*>(kernel),
                                      dim3(static_cast<unsigned>(blocks)), dim3(kThreads), args, 0,
                                      stream()));
    TG_LAUNCHED("fused");
  }

  // One kernel per fused sum (Note [Generated fused sums], fused_source.cpp) where the rows fit a
  // warp or a block; else, or without NVRTC, the reference (the group into a temporary, reduced).
  void fused_sum(const std::vector<FusedStep>& steps, const TensorImpl& out,
                 const TensorImpl* const* inputs, size_t ninputs, int nreduced) override {
    const OnDevice on = enter("fused");
    const int64_t count = out.numel > 0 ? inputs[0]->numel / out.numel : 0;
    const int lanes = out.numel > 0 ? fused_sum_lanes(out.numel, count) : 0;
    cudaKernel_t kernel = nullptr;
    std::vector<int64_t> words;
    if (lanes > 0 && generated_fusion()) {
      int nkept = 0, nred = 0;
      words = fused_sum_params(out, inputs, ninputs, nreduced, lanes, nkept, nred);
      std::vector<DType> dtypes;
      for (size_t k = 0; k < ninputs; ++k) dtypes.push_back(inputs[k]->dtype);
      if (words.size() * sizeof(int64_t) <= 4000)
        if (auto src = fused_sum_source(steps, dtypes, out.dtype, nkept, nred))
          kernel = fused_kernel(*src);
    }
    if (kernel == nullptr) {
      Backend::fused_sum(steps, out, inputs, ninputs, nreduced);
      return;
    }
    constexpr int kThreads = 256;
    const int64_t rows_per_block = kThreads / lanes;
    const int64_t blocks = std::min<int64_t>((out.numel + rows_per_block - 1) / rows_per_block,
                                             lanes == kThreads ? int64_t{1} << 20 : 65536);
    void* args[] = {words.data()};
    TG_CUDA("fused", cudaLaunchKernel(reinterpret_cast<const void*>(kernel),
                                      dim3(static_cast<unsigned>(blocks)), dim3(kThreads), args, 0,
                                      stream()));
    TG_LAUNCHED("fused");
  }

  // --- captured replays (Note [Captured replays], lib/trace/executor.cpp) ----------------------

  bool capturing_here() const override { return recording_here(); }

  std::string capture_refusal() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return refusal_;
  }

  std::unique_ptr<CapturedWork> capture(const std::function<void()>& work) override {
    const OnDevice on = enter("capture");
    std::lock_guard<std::mutex> one(capture_mu_);  // one recording at a time
    refusal_.clear();
    Recorded r = record(work);
    if (!r.ok) return nullptr;
    return instantiate(r.graph, std::move(r.freed));
  }

  // Note [Guarded updates] (lib/trace/executor.cpp): one graph, recorded as CUDA's own examples
  // of conditional nodes record one: `first` and guard_kernel, which sets the condition, captured
  // into the graph that made the handle; after them an if-node, its body `then` captured into
  // the graph CUDA made for it. The condition starts at 0 at each launch
  // (cudaGraphCondAssignDefault), so a launch whose guard did not run leaves the body out too.
  std::unique_ptr<CapturedWork> capture_guarded(const std::function<void()>& first,
                                                const TensorImpl& flags,
                                                const std::function<void()>& then) override {
    const OnDevice on = enter("capture");
    std::lock_guard<std::mutex> one(capture_mu_);
    refusal_.clear();
    cudaGraph_t graph = nullptr;
    cudaGraphConditionalHandle handle = 0;
    if (!tried("cudaGraphCreate", cudaGraphCreate(&graph, 0)) ||
        !tried("cudaGraphConditionalHandleCreate",
               cudaGraphConditionalHandleCreate(&handle, graph, 0, cudaGraphCondAssignDefault))) {
      if (graph != nullptr) (void)cudaGraphDestroy(graph);
      return nullptr;
    }
    const auto* words = reinterpret_cast<const int64_t*>(flags.data());
    const int64_t nflags = flags.numel / 2;
    // What the if-node follows: the guard, as the capture's dependencies after it.
    std::vector<cudaGraphNode_t> tail;
    std::vector<cudaGraphEdgeData> edges;
    Recorded a = record(
        [&] {
          first();
          launch_guard(handle, words, nflags, stream());
          TG_LAUNCHED("capture");
          cudaStreamCaptureStatus status{};
          const cudaGraphNode_t* deps = nullptr;
          const cudaGraphEdgeData* data = nullptr;
          size_t n = 0;
          TG_CUDA("capture",
                  cudaStreamGetCaptureInfo(stream(), &status, nullptr, nullptr, &deps, &data, &n));
          tail.assign(deps, deps + n);
          if (data != nullptr) edges.assign(data, data + n);
        },
        graph);
    bool ok = a.ok && !tail.empty();
    cudaGraphNode_t node = nullptr;
    cudaGraphNodeParams params{};
    params.type = cudaGraphNodeTypeConditional;
    params.conditional.handle = handle;
    params.conditional.type = cudaGraphCondTypeIf;
    params.conditional.size = 1;
    ok = ok && tried("cudaGraphAddNode", cudaGraphAddNode(&node, graph, tail.data(),
                                                          edges.empty() ? nullptr : edges.data(),
                                                          tail.size(), &params));
    ok = ok && params.conditional.phGraph_out != nullptr;
    Recorded b = ok ? record(then, params.conditional.phGraph_out[0]) : Recorded{};
    ok = ok && b.ok;
    std::vector<std::pair<void*, size_t>> freed = std::move(a.freed);
    freed.insert(freed.end(), b.freed.begin(), b.freed.end());
    if (!ok) {
      (void)cudaGraphDestroy(graph);
      (void)cudaGetLastError();
      give_back(freed);
      return nullptr;
    }
    return instantiate(graph, std::move(freed));
  }

 private:
  // A recording: whether `work` was recorded (nothing ran either way), its graph (one of its
  // own, or the one it was recorded into), and the blocks freed while it was made, which its
  // kernels may still use.
  struct Recorded {
    bool ok = false;
    cudaGraph_t graph = nullptr;
    std::vector<std::pair<void*, size_t>> freed;
  };

  // Records `work` into a graph of its own, or into `into` (which stays the caller's, whatever
  // happens); capture_mu_ is held.
  Recorded record(const std::function<void()>& work, cudaGraph_t into = nullptr) {
    if (capture_stream_ == nullptr)
      TG_CUDA("capture", cudaStreamCreateWithFlags(&capture_stream_, cudaStreamNonBlocking));
    {
      std::lock_guard<std::mutex> lock(mu_);
      capture_thread_ = std::this_thread::get_id();
      capture_live_.clear();
      capture_freed_.clear();
      capturing_ = true;
    }
    // The recording thread's calls go to a stream of their own (stream()), so that another
    // thread's work on this device is never recorded with them; cuBLAS follows. Relaxed:
    // allocations (cudaMalloc) are allowed while recording; what would wait for the device is
    // refused by refuse_while_capturing() before it is tried.
    cublasHandle_t h = blas_;
    if (h != nullptr) TG_CUBLAS("capture", blas_on(h, capture_stream_));
    bool ok = into == nullptr
                  ? tried("cudaStreamBeginCapture",
                          cudaStreamBeginCapture(capture_stream_, cudaStreamCaptureModeRelaxed))
                  : tried("cudaStreamBeginCaptureToGraph",
                          cudaStreamBeginCaptureToGraph(capture_stream_, into, nullptr, nullptr, 0,
                                                        cudaStreamCaptureModeRelaxed));
    if (ok) {
      try {
        work();
      } catch (const std::exception& e) {
        ok = false;  // the caller runs the work as it is instead
        const std::string what = e.what();
        refused(what.substr(0, what.find('\n')));
      }
    }
    cudaGraph_t graph = nullptr;
    // Ended whatever happened, so that the stream is usable again.
    const cudaError_t end = cudaStreamEndCapture(capture_stream_, &graph);
    if (ok) ok = tried("cudaStreamEndCapture", end) && graph != nullptr;
    if (h != nullptr) (void)blas_on(h, stream_);
    // A product recorded first made the handle inside the recording, on the capture stream.
    if (blas_ != nullptr && h == nullptr) {
      (void)blas_on(blas_, stream_);
      if (ok) refused("cuBLAS's handle was made inside the recording");
      ok = false;
    }
    Recorded r;
    {
      std::lock_guard<std::mutex> lock(mu_);
      capturing_ = false;
      r.freed.swap(capture_freed_);
      // Memory made while recording and still held would be written by every launch while its
      // holder uses it.
      if (ok && !capture_live_.empty())
        refusal_ = fmt::format("{} block(s) allocated while recording are still held",
                               capture_live_.size());
      ok = ok && capture_live_.empty();
      capture_live_.clear();
    }
    (void)cudaGetLastError();
    if (graph != nullptr && graph != into && (!ok || into != nullptr)) {
      (void)cudaGraphDestroy(graph);
      graph = nullptr;
    }
    if (!ok) {
      give_back(r.freed);
      return {};
    }
    r.ok = true;
    r.graph = into != nullptr ? into : graph;
    return r;
  }

  // The graph instantiated (and destroyed), holding `freed`; nullptr where CUDA refuses it.
  std::unique_ptr<CapturedWork> instantiate(cudaGraph_t graph,
                                            std::vector<std::pair<void*, size_t>> freed) {
    cudaGraphExec_t exec = nullptr;
    if (!tried("cudaGraphInstantiate", cudaGraphInstantiate(&exec, graph, 0))) exec = nullptr;
    (void)cudaGraphDestroy(graph);
    (void)cudaGetLastError();
    if (exec == nullptr) {
      give_back(freed);
      return nullptr;
    }
    return std::make_unique<Graph>(*this, exec, std::move(freed));
  }

  // A CUDA call of a recording: whether it succeeded; where not, why the recording is refused
  // (the first reason is kept; capture_refusal() says it).
  bool tried(const char* call, cudaError_t e) {
    if (e == cudaSuccess) return true;
    (void)cudaGetLastError();
    refused(fmt::format("{} returned {}", call, cudaGetErrorName(e)));
    return false;
  }
  void refused(const std::string& why) {
    std::lock_guard<std::mutex> lock(mu_);
    if (refusal_.empty()) refusal_ = why;
  }

  // Blocks freed while recording work that will never run: free again.
  void give_back(std::vector<std::pair<void*, size_t>>& freed) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [p, size] : freed) release(p, size);
    freed.clear();
  }

  // An instantiated CUDA graph, with the blocks its kernels use that no tensor holds.
  class Graph final : public CapturedWork {
   public:
    Graph(CudaBackend& be, cudaGraphExec_t exec, std::vector<std::pair<void*, size_t>> held)
        : be_(be), exec_(exec), held_(std::move(held)) {}
    ~Graph() override {
      (void)cudaStreamSynchronize(be_.stream_);  // a launch may still be running
      (void)cudaGraphExecDestroy(exec_);
      (void)cudaGetLastError();
      std::lock_guard<std::mutex> lock(be_.mu_);
      for (auto& [p, size] : held_) be_.release(p, size);
    }
    void launch() override {
      const OnDevice on = be_.enter("replay");
      TG_CUDA("replay", cudaGraphLaunch(exec_, be_.stream_));
    }

   private:
    CudaBackend& be_;
    cudaGraphExec_t exec_;
    std::vector<std::pair<void*, size_t>> held_;
  };

  // What waits for the device, or reads its memory on the host, cannot be recorded: refused
  // while recording, so that the recording is dropped and the work runs as it is.
  void refuse_while_capturing(std::string_view op) {
    TG_CHECK(!recording_here(), "{}: not allowed while a replay is being captured", op);
  }

  // Whether this thread is recording on this device (capture()).
  bool recording_here() const {
    return capturing_ && std::this_thread::get_id() == capture_thread_;
  }
  // The stream this thread's work goes to: the capture stream while it records.
  cudaStream_t stream() const { return recording_here() ? capture_stream_ : stream_.load(); }

  static constexpr size_t kBlasWorkspace = size_t{32} << 20;
  static constexpr size_t kPinnedFrom = size_t{1} << 20;   // bytes
  static constexpr size_t kPinnedBytes = size_t{8} << 20;  // each half of the staging memory

  // Note [Device guard]
  // Each op makes its tensors' device current for its CUDA calls (a kernel goes only to the
  // current device's streams, cuBLAS runs on the device current when its handle was made) and
  // puts the caller's device back when it returns or throws, as PyTorch's device guard does: a
  // program that mixes its own CUDA calls with tapegrad's, on several GPUs, finds its device as
  // it set it. With one GPU, or ops on the device already current, it costs one cudaGetDevice
  // (a thread-local read) and no cudaSetDevice. Blocks go back to the driver with their device
  // current too (enter_quietly(): a tensor freed on one device while another is current), as
  // PyTorch's allocator frees them.
  class [[nodiscard]] OnDevice {
   public:
    explicit OnDevice(int previous) : previous_(previous) {}
    OnDevice(const OnDevice&) = delete;
    OnDevice& operator=(const OnDevice&) = delete;
    ~OnDevice() {
      if (previous_ >= 0) (void)cudaSetDevice(previous_);
    }

   private:
    int previous_;  // the caller's device, or -1 where it was this one
  };

  // Makes this device current, its stream ready, until the returned guard goes; a missing GPU is
  // an error that says so.
  OnDevice enter(std::string_view op) {
    if (stream_ == nullptr) ready(op);
    int current = -1;
    TG_CUDA(op, cudaGetDevice(&current));
    if (current == index_) return OnDevice(-1);
    TG_CUDA(op, cudaSetDevice(index_));
    return OnDevice(current);
  }

  // This device current, for a call that must not throw (a free, from a tensor's destructor):
  // left as it is where it cannot be made current.
  OnDevice enter_quietly() noexcept {
    int current = -1;
    if (cudaGetDevice(&current) != cudaSuccess || current == index_ ||
        cudaSetDevice(index_) != cudaSuccess) {
      (void)cudaGetLastError();
      return OnDevice(-1);
    }
    return OnDevice(current);
  }

  // This device's stream and properties, at its first use.
  void ready(std::string_view op) {
    std::lock_guard<std::mutex> lock(init_mu_);
    if (stream_ != nullptr) return;
    int count = device_count_or_zero();
    TG_CHECK(count > 0,
             "{}: no CUDA GPU is present (cuda:{} was asked for); tapegrad was built with CUDA, "
             "and tg::cuda::is_available() says whether a GPU can be used",
             op, index_);
    TG_CHECK(index_ < count, "{}: cuda:{} was asked for, but this machine has {} CUDA GPU(s)", op,
             index_, count);
    int current = -1;
    TG_CUDA(op, cudaGetDevice(&current));
    TG_CUDA(op, cudaSetDevice(index_));
    OnDevice back(current == index_ ? -1 : current);
    cudaStream_t s = nullptr;
    TG_CUDA(op, cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    int major = 0, minor = 0, sms = 0;
    TG_CUDA(op, cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, index_));
    TG_CUDA(op, cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, index_));
    TG_CUDA(op, cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, index_));
    arch_ = major * 10 + minor;
    sm_count_ = sms;
    stream_ = s;
  }

  // Generated kernels for fused groups unless NVRTC is missing or TAPEGRAD_CUDA_FUSED=reference
  // asks for the reference (to tell a generated kernel's fault from the rest).
  static bool generated_fusion() {
    static const bool on = [] {
      const char* v = std::getenv("TAPEGRAD_CUDA_FUSED");
      return !(v != nullptr && std::string_view(v) == "reference") && nvrtc_available();
    }();
    return on;
  }

  // The kernel of one generated source for this device's architecture: compiled by NVRTC at its
  // first use and loaded once (a loaded library serves every device).
  cudaKernel_t fused_kernel(const std::string& source) {
    static std::mutex mu;
    static std::map<std::pair<std::string, int>, cudaKernel_t> loaded;
    std::lock_guard<std::mutex> lock(mu);
    auto key = std::pair{source, arch_};
    if (auto it = loaded.find(key); it != loaded.end()) return it->second;
    const std::string& cubin = nvrtc_compile(source, arch_);
    cudaLibrary_t lib = nullptr;
    TG_CUDA("fused", cudaLibraryLoadData(&lib, cubin.data(), nullptr, nullptr, 0, nullptr, nullptr, 0));
    cudaKernel_t k = nullptr;
    TG_CUDA("fused", cudaLibraryGetKernel(&k, lib, kFusedKernelName));
    loaded.emplace(std::move(key), k);
    return k;
  }

  // This device's cuBLAS handle on its stream, made at the first product.
  cublasHandle_t blas_handle() {
    std::lock_guard<std::mutex> lock(init_mu_);
    if (blas_ == nullptr) {
      cublasHandle_t h = nullptr;
      TG_CUBLAS("matmul", blas().create(&h));
      // A workspace of its own, so that cuBLAS never allocates inside a captured replay (32 MiB:
      // what NVIDIA suggests for Hopper).
      if (blas_ws_ == nullptr) TG_CUDA("matmul", cudaMalloc(&blas_ws_, kBlasWorkspace));
      TG_CUBLAS("matmul", blas_on(h, stream_));
      {
        std::lock_guard<std::mutex> lock(mu_);
        reserved_ += static_cast<int64_t>(kBlasWorkspace);
      }
      blas_ = h;
    }
    return blas_;
  }

  // The handle on stream s with this backend's workspace. cublasSetStream puts the handle back
  // on cuBLAS's own workspace pool, which would allocate inside a recording: ours is set again
  // after it, every time.
  cublasStatus_t blas_on(cublasHandle_t h, cudaStream_t s) {
    cublasStatus_t st = blas().set_stream(h, s);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    return blas().set_workspace(h, blas_ws_, kBlasWorkspace);
  }

  void note_alloc(size_t size) {
    allocated_ += static_cast<int64_t>(size);
    peak_ = std::max(peak_, allocated_);
  }

  // The two halves of the staging memory and their events, made at the first large copy.
  void pinned(std::string_view op) {
    if (pinned_ != nullptr) return;
    for (cudaEvent_t& e : pinned_done_)
      if (e == nullptr) TG_CUDA(op, cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    void* p = nullptr;
    TG_CUDA(op, cudaMallocHost(&p, 2 * kPinnedBytes));
    pinned_half_[0] = static_cast<char*>(p);
    pinned_half_[1] = static_cast<char*>(p) + kPinnedBytes;
    pinned_ = p;
  }

  // Every index checked before anything is written (as on the CPU): one flag read back.
  void check_indices(const TensorImpl& index, int64_t size, std::string_view op, int dim) {
    if (index.numel == 0) return;
    refuse_while_capturing(op);
    void* flag = allocate(2 * sizeof(int64_t));
    struct Free {
      CudaBackend* be;
      void* p;
      ~Free() { be->deallocate(p, 2 * sizeof(int64_t)); }
    } release{this, flag};
    auto* f = static_cast<int64_t*>(flag);
    TG_CUDA(op, cudaMemsetAsync(f, 0, 2 * sizeof(int64_t), stream_));
    launch_check_indices(make_strided({&index}), index.numel, size, f, stream_);
    TG_LAUNCHED(op);
    int64_t host[2] = {0, 0};
    TG_CUDA(op, cudaMemcpyAsync(host, f, sizeof host, cudaMemcpyDeviceToHost, stream_));
    TG_CUDA(op, cudaStreamSynchronize(stream_));
    if (host[0] != 0) throw_index_error(op, host[1], dim, size);
  }

  // `t`, or a contiguous copy of it (kept alive by `keep`) when no stride of its matrix is 1.
  TensorImpl contiguous_if_needed(const TensorImpl& t, std::shared_ptr<Storage>& keep) {
    TensorImpl v;
    v.storage = t.storage;
    v.sizes = t.sizes;
    v.strides = t.strides;
    v.offset = t.offset;
    v.numel = t.numel;
    v.dtype = t.dtype;
    if (blas_view(t.sizes[1], t.sizes[2], t.strides[1], t.strides[2]).ok) return v;
    keep = allocate_storage(nbytes_of(t), t.storage->device);
    v.storage = keep;
    v.offset = 0;
    v.strides = contiguous_strides(t.sizes);
    copy(v, t);
    return v;
  }

  int index_;
  int arch_ = 0;      // compute capability as major * 10 + minor
  int sm_count_ = 0;  // multiprocessors
  std::mutex init_mu_;
  std::atomic<cudaStream_t> stream_{nullptr};
  cublasHandle_t blas_ = nullptr;
  void* blas_ws_ = nullptr;  // cuBLAS's workspace (blas_on)
  mutable std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> cache_;
  int64_t allocated_ = 0, reserved_ = 0, peak_ = 0;
  // While capture() records (under mu_): blocks allocated and not yet freed, and blocks freed.
  std::atomic<bool> capturing_{false};
  std::thread::id capture_thread_;
  std::mutex capture_mu_;
  cudaStream_t capture_stream_ = nullptr;
  std::unordered_set<void*> capture_live_;
  std::string refusal_;  // why the last recording was refused (capture_refusal()), under mu_
  std::vector<std::pair<void*, size_t>> capture_freed_;
  std::mutex pinned_mu_;
  void* pinned_ = nullptr;  // Note [Pinned staging]
  char* pinned_half_[2] = {nullptr, nullptr};
  cudaEvent_t pinned_done_[2] = {nullptr, nullptr};
};

constexpr int kMaxCudaDevices = 16;

CudaBackend& backend_of(int index) {
  TG_CHECK(index >= 0 && index < kMaxCudaDevices, "cuda:{}: device indices run from 0 to {}",
           index, kMaxCudaDevices - 1);
  // Never destroyed, like the CPU backend: tensors in static storage may outlive any order.
  static std::array<std::atomic<CudaBackend*>, kMaxCudaDevices> backends{};
  static std::mutex mu;
  CudaBackend* b = backends[index].load();
  if (b == nullptr) {
    std::lock_guard<std::mutex> lock(mu);
    b = backends[index].load();
    if (b == nullptr) {
      b = new CudaBackend(index);
      backends[index] = b;
    }
  }
  return *b;
}

}  // namespace
}  // namespace cuda_detail

Backend& cuda_backend(int index) { return cuda_detail::backend_of(index); }

bool cuda_is_available() { return cuda_detail::device_count_or_zero() > 0; }
int cuda_device_count() { return cuda_detail::device_count_or_zero(); }

bool cuda::is_built() { return true; }
bool cuda::is_available() { return cuda_is_available(); }
int cuda::device_count() { return cuda_device_count(); }
void cuda::synchronize(int index) { cuda_detail::backend_of(index).synchronize(); }
void cuda::empty_cache(int index) { cuda_detail::backend_of(index).empty_cache(); }
cuda::Memory cuda::memory_stats(int index) { return cuda_detail::backend_of(index).memory(); }
void cuda::reset_peak(int index) { cuda_detail::backend_of(index).reset_peak(); }
bool cuda::caching() { return cuda_detail::caching_on(); }
void cuda::set_allow_tf32(bool allow) { cuda_detail::g_allow_tf32 = allow; }
bool cuda::allow_tf32() { return cuda_detail::g_allow_tf32; }

}  // namespace tg
