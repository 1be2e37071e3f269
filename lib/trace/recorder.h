// The recorder: the trace hook that turns the backend calls of one run of a function into a
// Program (see Note [Traced graph]).
#pragma once

#include <unordered_map>

#include "trace/program.h"

namespace tg::trace_detail {

class Recorder;

// Runs each call on the device's backend, then appends it to the recorder's program.
class RecordingBackend final : public Backend {
 public:
  RecordingBackend(Recorder& rec, Device device) : rec_(rec), device_(device) {}
  void* allocate(size_t nbytes) override { return real().allocate(nbytes); }
  void deallocate(void* ptr, size_t nbytes) override { real().deallocate(ptr, nbytes); }
  void synchronize() override { real().synchronize(); }
  void copy(const TensorImpl& dst, const TensorImpl& src) override;
  void copy_from_host(const TensorImpl& dst, const void* src) override;
  void copy_to_host(void* dst, const TensorImpl& src) override;
  void transfer(const TensorImpl& dst, const TensorImpl& src) override;
  void fill(const TensorImpl& dst, Scalar value) override;
  void iota(const TensorImpl& dst, double start, double step) override;
  void random(RandomKind kind, const TensorImpl& dst, uint64_t seed, uint64_t offset, double a,
              double b) override;
  void unary(OpKind kind, const TensorImpl& out, const TensorImpl& x,
             const OpAttrs& attrs) override;
  void binary(OpKind kind, const TensorImpl& out, const TensorImpl& a,
              const TensorImpl& b) override;
  void where(const TensorImpl& out, const TensorImpl& cond, const TensorImpl& a,
             const TensorImpl& b) override;
  void reduce(OpKind kind, const TensorImpl& out, const TensorImpl& x, int nreduced) override;
  void matmul(const TensorImpl& out, const TensorImpl& a, const TensorImpl& b) override;
  void index(OpKind kind, const TensorImpl& out, const TensorImpl& x, int dim,
             const TensorImpl& index) override;
  void window(OpKind kind, const TensorImpl& out, const TensorImpl& x, const Window2d& w,
              const TensorImpl* indices) override;

 private:
  Backend& real() { return device_backend(device_); }
  Recorder& rec_;
  Device device_;
};

class Recorder final : public TraceHook {
 public:
  explicit Recorder(const std::vector<Tensor>& args);
  Backend& backend(Device device) override;
  void on_allocate(const std::shared_ptr<Storage>& storage) override;

  Operand operand(const TensorImpl& t);
  void add(Node node);
  void add_replay_hook(std::function<void()> fn) { prog_.replay_hooks.push_back(std::move(fn)); }
  // After the function returned `outputs`: decides which temps escaped; the recorder is done.
  Program finish(const std::vector<Tensor>& outputs);

 private:
  struct Entry {
    std::weak_ptr<Storage> storage;
    int32_t buf = -1;
  };
  int32_t buffer_of(const std::shared_ptr<Storage>& s, bool allocated);
  std::unordered_map<const Storage*, Entry> map_;
  std::vector<std::weak_ptr<Storage>> weak_;  // per buffer
  Program prog_;
  RecordingBackend cpu_;
  std::vector<std::unique_ptr<RecordingBackend>> cuda_;
};

}  // namespace tg::trace_detail
