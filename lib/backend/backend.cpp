// Backend lookup by device.
#include "backend/backend.h"

#include "core/check.h"

namespace tg {

thread_local TraceHook* t_trace_hook = nullptr;

Backend& device_backend(Device device) {
  if (device.is_cpu()) return cpu_backend();
  return cuda_backend();
}

Backend& backend_for(Device device) {
  if (t_trace_hook != nullptr) return t_trace_hook->backend(device);
  return device_backend(device);
}

}  // namespace tg
