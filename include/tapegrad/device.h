// Where a tensor lives: the CPU, or a CUDA device by index.
#pragma once

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
inline Device cuda(int index = 0) { return Device{DeviceKind::CUDA, index}; }

// True when tapegrad was built with CUDA and a GPU is present.
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
