// Where a tensor lives: the CPU, or a CUDA device by index.
#pragma once

#include <cstdint>
#include <string>

namespace tg {

enum class DeviceKind : uint8_t { CPU, CUDA };

struct Device {
  DeviceKind kind = DeviceKind::CPU;
  int index = 0;
  bool is_cpu() const { return kind == DeviceKind::CPU; }
  bool is_cuda() const { return kind == DeviceKind::CUDA; }
  friend bool operator==(const Device&, const Device&) = default;
  std::string str() const;  // "cpu", "cuda:0"
};

inline constexpr Device kCPU{DeviceKind::CPU, 0};

// A CUDA device, `tg::cuda(i)` (it is a Device), and the CUDA runtime's controls as its static
// members: `tg::cuda::synchronize()`, `tg::cuda::empty_cache()`, `tg::cuda::memory_stats()`.
struct cuda : Device {
  cuda(int index = 0) : Device{DeviceKind::CUDA, index} {}  // NOLINT: a Device by design

  // Built with CUDA (TAPEGRAD_CUDA), whether or not a GPU is present.
  static bool is_built();
  // Built with CUDA and at least one GPU present.
  static bool is_available();
  static int device_count();
  // Waits for everything queued on the device (its one stream).
  static void synchronize(int index = 0);
  // Gives the device's cached free blocks back to the driver.
  static void empty_cache(int index = 0);
  // The caching allocator's bytes: in tensors now, held from the driver (in tensors or cached),
  // and the most in tensors at once since reset_peak.
  struct Memory {
    int64_t allocated = 0;
    int64_t reserved = 0;
    int64_t peak = 0;
  };
  static Memory memory_stats(int index = 0);
  static void reset_peak(int index = 0);
  // Whether freed blocks are cached: yes unless the environment says TAPEGRAD_CUDA_CACHING=0,
  // which makes each tensor a cudaMalloc of its exact size, freed with it (slow: for checking a
  // program's kernels under compute-sanitizer, which then sees each tensor's bounds).
  static bool caching();
  // f32 products on tensor cores in TF32 (10-bit mantissas): off unless the user opts in.
  static void set_allow_tf32(bool allow);
  static bool allow_tf32();
};

// True when tapegrad was built with CUDA and a GPU is present (also tg::cuda::is_available()).
bool cuda_is_available();
int cuda_device_count();

// Bytes of tensor storage alive on a device now, and the most alive at once since the last
// reset_peak_memory (caches inside backends not counted).
struct MemoryStats {
  int64_t allocated = 0;
  int64_t peak = 0;
};
MemoryStats memory_stats(Device device = Device{});
void reset_peak_memory(Device device = Device{});

}  // namespace tg
