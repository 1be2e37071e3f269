// The doctest runner. Generated CUDA kernels are compiled afresh in every run (no kernel cache
// on disk, Note [Kernel cache]), so the compile tests compile; the cache's own test sets a
// directory of its own.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdlib>

int main(int argc, char** argv) {
  setenv("TAPEGRAD_KERNEL_CACHE", "off", 1);
  return doctest::Context(argc, argv).run();
}
