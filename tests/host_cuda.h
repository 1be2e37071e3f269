// Building and loading CUDA device code for the host, in the tests (Note [CUDA code on the host],
// host_cuda_source.h).
#pragma once

#include <dlfcn.h>
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "host_cuda_source.h"

namespace tghost {


// A library built from one translation unit: lookup by name; unloaded at the end.
struct Library {
  void* handle = nullptr;
  ~Library() {
    if (handle != nullptr) dlclose(handle);
  }
  template <class Fn>
  Fn get(const std::string& name) const {
    void* p = dlsym(handle, name.c_str());
    REQUIRE_MESSAGE(p != nullptr, name);
    return reinterpret_cast<Fn>(p);
  }
  // Whether a wait was given up (see the Note): the test has failed then.
  bool stuck() const { return get<bool (*)()>("tg_host_stuck")(); }
};

// The source tree and CUDA's headers, as built, or where the environment says
// (TAPEGRAD_SOURCE_DIR, TAPEGRAD_CUDA_INCLUDE: the binaries carried to another machine).
inline std::string source_dir() {
  const char* v = std::getenv("TAPEGRAD_SOURCE_DIR");
  return v != nullptr && *v != 0 ? v : TG_TEST_SOURCE_DIR;
}
inline std::string cuda_include() {
  const char* v = std::getenv("TAPEGRAD_CUDA_INCLUDE");
  return v != nullptr && *v != 0 ? v : TG_TEST_CUDA_INCLUDE;
}

// Whether this machine can build host libraries: the compiler runs and CUDA's headers are there.
// Where not, says why (the case is then skipped).
inline bool can_build() {
  const std::string cxx = TG_TEST_CXX;
  if (std::system((cxx + " --version > /dev/null 2>&1").c_str()) != 0) {
    MESSAGE("the host's C++ compiler (" << cxx << ") could not be run: case skipped");
    return false;
  }
  if (!std::filesystem::exists(cuda_include() + "/cuda_runtime_api.h")) {
    MESSAGE("CUDA's headers are not in " << cuda_include()
                                         << " (TAPEGRAD_CUDA_INCLUDE): case skipped");
    return false;
  }
  return true;
}

// `unit` compiled with the host's compiler (TG_TEST_CXX) and `flags`, and loaded; false where
// that cannot be done here (can_build(): a GPU machine with the runtime only), and the caller
// skips. A compile error fails the test, with the compiler's first lines. The library is kept
// in the temporary directory under a hash of what made it, so that the test processes ctest
// starts build it once; written under another name and renamed into place.
// `headers`: directories whose files the unit includes, which the hash covers too.
inline bool build(const std::string& unit, const std::string& flags, Library& lib,
                  const std::vector<std::string>& headers = {}) {
  if (!can_build()) return false;
  std::string log;
  const std::string path =
      compile_cached(host_shared(unit), flags, TG_TEST_CXX, "tg_host_cuda_", log, headers);
  if (path.empty()) MESSAGE("host compile failed: " << log.substr(0, 4000));
  REQUIRE(!path.empty());
  lib.handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  REQUIRE_MESSAGE(lib.handle != nullptr, dlerror());
  return true;
}

// Generated kernels (each `extern "C" __global__ void <name>(const tg_params p)`), each in a
// namespace of its own, launched on the host through tg_run_<k>(params, grid, block).
inline bool build_generated(const std::vector<std::string>& sources, const std::string& name,
                            Library& lib) {
  std::string unit = kRuntime;
  for (size_t k = 0; k < sources.size(); ++k) {
    std::string src = sources[k];
    const std::string c_linkage = "extern \"C\" __global__";
    const size_t at = src.find(c_linkage);
    REQUIRE(at != std::string::npos);
    src.replace(at, c_linkage.size(), "__global__");
    const std::string g = "g" + std::to_string(k);
    unit += "namespace " + g + " {\n" + src + "}\n";
    unit += "extern \"C\" __attribute__((visibility(\"default\"))) void tg_run_" +
            std::to_string(k) + "(const void* p, unsigned grid, unsigned block) {\n" +
            "  tg_host_launch(dim3(grid), dim3(block), [&] { " + g + "::" + name +
            "(*static_cast<const " + g + "::tg_params*>(p)); });\n}\n";
  }
  return build(unit, "-O0 -ffp-contract=off -isystem " + cuda_include(), lib);
}

using GeneratedRun = void (*)(const void* params, unsigned grid, unsigned block);

}  // namespace tghost
