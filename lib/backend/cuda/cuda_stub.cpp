// The CUDA backend of a build without CUDA: every call throws, naming the build option.
#include "backend/backend.h"
#include "core/check.h"

namespace tg {
namespace {

[[noreturn]] void no_cuda() {
  throw_error(
      "tapegrad was built without CUDA (configure with -DTAPEGRAD_CUDA=ON on a machine with the "
      "CUDA toolkit)");
}

class CudaStub final : public Backend {
 public:
  void* allocate(size_t) override { no_cuda(); }
  void deallocate(void*, size_t) override {}
  void synchronize() override { no_cuda(); }
  void copy(const TensorImpl&, const TensorImpl&) override { no_cuda(); }
  void copy_from_host(const TensorImpl&, const void*) override { no_cuda(); }
  void copy_to_host(void*, const TensorImpl&) override { no_cuda(); }
  void fill(const TensorImpl&, Scalar) override { no_cuda(); }
  void iota(const TensorImpl&, double, double) override { no_cuda(); }
  void random(RandomKind, const TensorImpl&, uint64_t, uint64_t, double, double) override {
    no_cuda();
  }
  void unary(OpKind, const TensorImpl&, const TensorImpl&, const OpAttrs&) override { no_cuda(); }
  void binary(OpKind, const TensorImpl&, const TensorImpl&, const TensorImpl&) override {
    no_cuda();
  }
  void where(const TensorImpl&, const TensorImpl&, const TensorImpl&, const TensorImpl&) override {
    no_cuda();
  }
  void reduce(OpKind, const TensorImpl&, const TensorImpl&, int) override { no_cuda(); }
  void matmul(const TensorImpl&, const TensorImpl&, const TensorImpl&) override { no_cuda(); }
  void index(OpKind, const TensorImpl&, const TensorImpl&, int, const TensorImpl&) override {
    no_cuda();
  }
  void window(OpKind, const TensorImpl&, const TensorImpl&, const Window2d&,
              const TensorImpl*) override {
    no_cuda();
  }
};

}  // namespace

Backend& cuda_backend(int) {
  static CudaStub stub;
  return stub;
}
bool cuda_is_available() { return false; }
int cuda_device_count() { return 0; }

bool cuda::is_built() { return false; }
bool cuda::is_available() { return false; }
int cuda::device_count() { return 0; }
void cuda::synchronize(int) { no_cuda(); }
void cuda::empty_cache(int) {}
cuda::Memory cuda::memory_stats(int) { return {}; }
void cuda::reset_peak(int) {}
bool cuda::caching() { return false; }
void cuda::set_allow_tf32(bool) {}
bool cuda::allow_tf32() { return false; }

}  // namespace tg
