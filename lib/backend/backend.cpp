// Backend lookup by device.
#include "backend/backend.h"

#include "core/check.h"

namespace tg {

Backend& backend_for(Device device) {
  if (device.is_cpu()) return cpu_backend();
  return cuda_backend();
}

}  // namespace tg
