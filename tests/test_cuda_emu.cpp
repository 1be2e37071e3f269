// The CUDA backend on the emulated GPU (Note [An emulated GPU], emu/runtime.cpp): checks of the
// emulator's own strictness, and of what only it can count (waits, graph launches).
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include "emu/emu.h"

using namespace tg;

TEST_CASE("the emulated GPU is the one in use") {
  CHECK(cuda::is_available());
  Tensor a = ones({2, 3}, {.device = cuda()});
  CHECK(a.sum().item<float>() == 6);
}
