// The narrow interface every device implements (CPU now, CUDA later). Ops compute shapes, dtypes
// and broadcasting, then call one of these with ready operands; the op kind is a parameter.
// Knows nothing of autograd.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/tensor_impl.h"
#include "backend/op_attrs.h"
#include "ops/op_registry.h"

namespace tg {


// A 2-D sliding window: kernel, stride, zero padding, dilation (height then width).
struct Window2d {
  int64_t kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1;
  int64_t out_h(int64_t h) const { return (h + 2 * ph - dh * (kh - 1) - 1) / sh + 1; }
  int64_t out_w(int64_t w) const { return (w + 2 * pw - dw * (kw - 1) - 1) / sw + 1; }
};

enum class RandomKind : uint8_t { Uniform, Normal, Int };

// One step of a fused elementwise group (Note [Elementwise fusion], lib/trace/pass_fuse.cpp).
// Step i computes value i; its operands name earlier values (r >= 0) or the group's inputs
// (r < 0: input -r-1). The last step's value is the group's output.
struct FusedStep {
  enum class Kind : uint8_t { Unary, Binary, Where, Convert };
  Kind kind = Kind::Unary;
  OpKind op = OpKind::Neg;  // Unary, Binary (a comparison gives bool)
  OpAttrs attrs;            // Unary
  DType dtype = kF32;       // of the value
  int32_t a = 0, b = 0, c = 0;
  bool operator==(const FusedStep& o) const {
    return kind == o.kind && op == o.op && attrs.a == o.attrs.a && attrs.b == o.attrs.b &&
           dtype == o.dtype && a == o.a && b == o.b && c == o.c;
  }
};

// Work a backend recorded once and runs again on each launch() (Note [Captured replays],
// lib/trace/executor.cpp): on CUDA, an instantiated CUDA graph.
class CapturedWork {
 public:
  virtual ~CapturedWork() = default;
  virtual void launch() = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual void* allocate(size_t nbytes) = 0;
  virtual void deallocate(void* ptr, size_t nbytes) = 0;
  virtual void synchronize() = 0;

  // dst = src elementwise, same shape, any strides, converting dtype.
  virtual void copy(const TensorImpl& dst, const TensorImpl& src) = 0;
  // Between this device and host memory; the device tensor is contiguous.
  virtual void copy_from_host(const TensorImpl& dst, const void* src) = 0;
  virtual void copy_to_host(void* dst, const TensorImpl& src) = 0;
  // Between the CPU and this device, either way, both contiguous and of one dtype (called on the
  // device's backend): copy_from_host or copy_to_host with the CPU side's elements. A recording
  // (tg::trace) keeps it as a node, so the replay copies the CPU side as it is then.
  virtual void transfer(const TensorImpl& dst, const TensorImpl& src);
  virtual void fill(const TensorImpl& dst, Scalar value) = 0;
  // dst[i] = start + i * step over the contiguous dst.
  virtual void iota(const TensorImpl& dst, double start, double step) = 0;
  // Element i of a contiguous dst from Philox(seed, offset + i / 4) lane i % 4: the same numbers
  // on every device and thread count. Uniform in [a, b), Normal(a, b), Int in [a, b).
  virtual void random(RandomKind kind, const TensorImpl& dst, uint64_t seed, uint64_t offset,
                      double a, double b) = 0;

  // Elementwise. Inputs are views already expanded to out's shape (stride 0 where broadcast).
  // Unary and binary inputs have out's dtype, except comparisons (out is bool).
  virtual void unary(OpKind kind, const TensorImpl& out, const TensorImpl& x,
                     const OpAttrs& attrs) = 0;
  virtual void binary(OpKind kind, const TensorImpl& out, const TensorImpl& a,
                      const TensorImpl& b) = 0;
  virtual void where(const TensorImpl& out, const TensorImpl& cond, const TensorImpl& a,
                     const TensorImpl& b) = 0;

  // out (contiguous, x's leading dims) = reduction of x over its last `nreduced` dims.
  // Argmax/Argmin give the row-major index within the reduced dims, as i64.
  virtual void reduce(OpKind kind, const TensorImpl& out, const TensorImpl& x, int nreduced) = 0;

  // Softmax, LogSoftmax or Logsumexp of floating x over its last `nreduced` dims in one pass
  // (Note [Softmax rows], lib/backend/cuda/softmax_rows.h), where softmax_rows() says the
  // backend has such a kernel. Softmax and LogSoftmax: nreduced 1, out has x's sizes and
  // strides; Logsumexp: out is contiguous over x's leading dims, as in reduce(). Returns false
  // where this shape is not one the kernel takes: nothing is written, and the op runs its
  // composite. The default (the CPU's, a recording's) has none, so a traced graph holds the
  // composite's calls, which its passes fuse.
  virtual bool softmax_rows() const { return false; }
  virtual bool softmax_rows(OpKind kind, const TensorImpl& out, const TensorImpl& x, int nreduced);

  // out[b] = a[b] · b[b] for 3-D operands (batch strides may be 0); out is contiguous.
  virtual void matmul(const TensorImpl& out, const TensorImpl& a, const TensorImpl& b) = 0;
  // out = alpha·s·(a · b) + beta·out for one product (3-D operands of batch 1, floating; out's
  // columns contiguous, its rows at any stride), s the value of `scale` (one element) or 1 where
  // it is null; beta 0 only writes out. A traced graph runs `w -= lr·(xᵀ·g)` as one such call
  // (Note [Matmul updates], lib/trace/pass_matmul_update.cpp). The default computes the product
  // into a temporary and combines it elementwise.
  virtual void matmul_update(const TensorImpl& out, const TensorImpl& a, const TensorImpl& b,
                             double alpha, double beta, const TensorImpl* scale);

  // IndexSelect: out = x.index_select(dim, index); Gather: out = x.gather(dim, index);
  // ScatterAdd: out[... index ...] += x (out already holds the base). index is i64, checked here.
  virtual void index(OpKind kind, const TensorImpl& out, const TensorImpl& x, int dim,
                     const TensorImpl& index) = 0;

  // Sliding windows over contiguous (N, C, H, W) images (floating dtypes); the columns of
  // im2col/col2im may be any (N, C*kh*kw, L) view whose rows are contiguous:
  // Im2col: out (N, C*kh*kw, OH*OW) from x (N, C, H, W), zeros where the window is in the padding.
  // Col2im: its adjoint: out (N, C, H, W) = the sum of x (N, C*kh*kw, OH*OW) over the windows.
  // MaxPool2d: out (N, C, OH, OW), the padding never wins; `indices` (i64, same shape, may be null)
  //   gets the flat position h*W + w of each maximum (the first one; NaN wins).
  // AvgPool2d: out (N, C, OH, OW), the window's sum over kh*kw (padding counts as zeros).
  virtual void window(OpKind kind, const TensorImpl& out, const TensorImpl& x, const Window2d& w,
                      const TensorImpl* indices) = 0;

  // A fused elementwise group: inputs are views expanded to out's shape (any dtypes, as the
  // steps expect); out may be one of them exactly (same view), never a partial overlap. The
  // default runs the steps one by one through unary/binary/where/copy into temporaries; a
  // backend overrides it to run them in one pass over memory.
  virtual void fused(const std::vector<FusedStep>& steps, const TensorImpl& out,
                     const TensorImpl* const* inputs, size_t ninputs);
  // A fused group whose value is summed over its trailing `nreduced` dims into out (Note [Fused
  // sums] in pass_fuse.cpp): the inputs are views expanded to the value's shape, out holds the
  // leading dims. The same bits as the group into a temporary, then reduce(Sum), which is what
  // the default does; a backend overrides it to keep the value out of memory.
  virtual void fused_sum(const std::vector<FusedStep>& steps, const TensorImpl& out,
                         const TensorImpl* const* inputs, size_t ninputs, int nreduced);

  // Records what `work` asks of this device (every call it makes on this backend) without
  // running it, into work that launch() runs as often as wanted on the same memory. Nothing
  // (nullptr) where the backend cannot (the default, the CPU's) or where the work did what a
  // recording cannot hold: a wait for the device, a read of device memory by the host, memory
  // allocated in it and still held at its end. Nothing has run either way.
  virtual std::unique_ptr<CapturedWork> capture(const std::function<void()>& work);
  // Records `first` and `then` as capture() does, into one piece of work whose launch runs
  // `first`, then `then` only where the first word of every flag pair in `flags` (contiguous
  // i64, as index_flagged writes them) is zero when `first` has run: the decision is the
  // device's, so the host neither waits nor launches twice (Note [Guarded updates],
  // lib/trace/executor.cpp). Nothing (nullptr) where the backend cannot, the default.
  virtual std::unique_ptr<CapturedWork> capture_guarded(const std::function<void()>& first,
                                                        const TensorImpl& flags,
                                                        const std::function<void()>& then);
  // Why the last capture() or capture_guarded() on this backend gave nothing, in words ("" where
  // it gave work, or cannot say): for pass summaries, so that a refusal on a device is diagnosed
  // from its log.
  virtual std::string capture_refusal() const { return {}; }
  // Whether the calling thread is inside capture() on this backend (its calls are recorded).
  virtual bool capturing_here() const { return false; }

  // What lets a recording hold index ops and random draws (Note [Device-side arguments],
  // lib/trace/executor.cpp): calls that read what changes from call to call out of device memory
  // when they run, and never wait for the device. has_device_arguments() says whether the
  // backend has index_flagged and random_from (the defaults throw).
  virtual bool has_device_arguments() const { return false; }
  // index() with its bounds checked on the device: an index out of bounds sets flag[0] to 1 and
  // flag[1] to the index (flag: two contiguous i64, zero before the call), and nothing is
  // written. The host reads the flag later.
  virtual void index_flagged(OpKind kind, const TensorImpl& out, const TensorImpl& x, int dim,
                             const TensorImpl& index, const TensorImpl& flag);
  // random() with its seed and offset read from `slot` (two contiguous i64) when it runs.
  virtual void random_from(RandomKind kind, const TensorImpl& dst, const TensorImpl& slot, double a,
                           double b);
  // Writes `words` into dst (contiguous i64, as many elements) in the device's order of work:
  // the values travel with the call, so the host's copy may change at once. The default fills
  // one element at a time.
  virtual void write_words(const TensorImpl& dst, const std::vector<int64_t>& words);
};

// Note [Trace hooks]
// While tg::trace records a function (lib/trace/), the thread's hook is set: backend_for() hands
// out the recorder's backend, which runs each call on the real one and appends it to the graph,
// and allocate_storage() reports every storage made, so the recorder can tell the function's own
// values from the state it reads. NoTraceGuard clears the hook for a scope.
class TraceHook {
 public:
  virtual ~TraceHook() = default;
  virtual Backend& backend(Device device) = 0;
  virtual void on_allocate(const std::shared_ptr<Storage>& storage) = 0;
};
extern thread_local TraceHook* t_trace_hook;

Backend& backend_for(Device device);
// The device's own backend, never the recorder's.
Backend& device_backend(Device device);
Backend& cpu_backend();
// The backend of cuda:index when built with CUDA (lib/backend/cuda/), else a stub that throws.
Backend& cuda_backend(int index);

}  // namespace tg
