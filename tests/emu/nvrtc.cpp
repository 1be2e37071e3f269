// NVRTC for the emulated GPU (Note [An emulated GPU], runtime.cpp): built as libnvrtc.so.13 beside
// the emulated cuBLAS. A program is "compiled" by the host's compiler into a shared library that
// runs the kernel on the host (Note [CUDA code on the host]); the "cubin" handed back is
// "tgemu-so:" and that library's path, which the emulated runtime's cudaLibraryLoadData loads.
// Libraries are kept in the temporary directory under a hash of what made them.
#include <nvrtc.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>

#include "../host_cuda_source.h"

struct _nvrtcProgram {
  std::string source;
  std::string log;
  std::string cubin;
};

namespace {

// The name of the one `extern "C" __global__` kernel of src (empty where there is none).
std::string kernel_name(const std::string& src) {
  const size_t at = src.find("extern \"C\" __global__");
  if (at == std::string::npos) return {};
  size_t open = src.find("(const", at);
  if (open == std::string::npos) return {};
  size_t end = open;
  while (end > at && src[end - 1] == ' ') --end;
  size_t start = end;
  while (start > at && (std::isalnum(static_cast<unsigned char>(src[start - 1])) ||
                        src[start - 1] == '_'))
    --start;
  return src.substr(start, end - start);
}

// The host's library for the program, built if not kept yet; false with the log on failure.
bool build(_nvrtcProgram& prog, std::string& path) {
  const std::string name = kernel_name(prog.source);
  if (name.empty()) {
    prog.log = "emulated NVRTC: no extern \"C\" __global__ kernel taking (const ...) found";
    return false;
  }
  std::string src = prog.source;
  src.replace(src.find("extern \"C\" __global__"), 21, "__global__");
  std::string unit =
      std::string(tghost::kRuntime) + "#line 1 \"tg_fused.cu\"\n" + tghost::host_shared(src) + "\n";
  unit += "extern \"C\" __attribute__((visibility(\"default\"))) void tgemu_run_" + name +
          "(const void* p, unsigned grid, unsigned block) {\n  tg_host_launch(dim3(grid), "
          "dim3(block), [&] { " +
          name +
          "(*static_cast<const tg_params*>(p)); });\n}\n"
          "extern \"C\" __attribute__((visibility(\"default\"))) unsigned long "
          "tgemu_params_size() { return sizeof(tg_params); }\n";
  // Checked as the emulator's other kernels are (Note [Checked device memory], runtime.cpp).
#if defined(__SANITIZE_ADDRESS__)
  const char* checked =
      "-fsanitize=address,alignment -fno-sanitize-recover=alignment -fno-omit-frame-pointer ";
#else
  const char* checked = "";
#endif
  const std::string flags =
      std::string("-O0 -ffp-contract=off ") + checked + "-isystem " + TGEMU_CUDA_INCLUDE;
  std::string log;
  path = tghost::compile_cached(unit, flags, TGEMU_CXX, "tgemu_kernel_", log);
  if (path.empty()) prog.log = "emulated NVRTC (the host's compiler):\n" + log;
  return !path.empty();
}

}  // namespace

extern "C" {

const char* nvrtcGetErrorString(nvrtcResult r) {
  switch (r) {
    case NVRTC_SUCCESS: return "NVRTC_SUCCESS";
    case NVRTC_ERROR_INVALID_INPUT: return "NVRTC_ERROR_INVALID_INPUT";
    case NVRTC_ERROR_INVALID_PROGRAM: return "NVRTC_ERROR_INVALID_PROGRAM";
    case NVRTC_ERROR_COMPILATION: return "NVRTC_ERROR_COMPILATION";
    default: return "NVRTC_ERROR_INTERNAL_ERROR";
  }
}

nvrtcResult nvrtcVersion(int* major, int* minor) {
  *major = 13;
  *minor = 0;
  return NVRTC_SUCCESS;
}

nvrtcResult nvrtcCreateProgram(nvrtcProgram* prog, const char* src, const char*, int,
                               const char* const*, const char* const*) {
  if (prog == nullptr || src == nullptr) return NVRTC_ERROR_INVALID_INPUT;
  *prog = new _nvrtcProgram{src, {}, {}};
  return NVRTC_SUCCESS;
}

nvrtcResult nvrtcDestroyProgram(nvrtcProgram* prog) {
  if (prog == nullptr || *prog == nullptr) return NVRTC_ERROR_INVALID_PROGRAM;
  delete *prog;
  *prog = nullptr;
  return NVRTC_SUCCESS;
}

nvrtcResult nvrtcCompileProgram(nvrtcProgram prog, int, const char* const*) {
  if (prog == nullptr) return NVRTC_ERROR_INVALID_PROGRAM;
  std::string path;
  if (!build(*prog, path)) return NVRTC_ERROR_COMPILATION;
  prog->cubin = "tgemu-so:" + path;
  return NVRTC_SUCCESS;
}

nvrtcResult nvrtcGetProgramLogSize(nvrtcProgram prog, size_t* size) {
  if (prog == nullptr) return NVRTC_ERROR_INVALID_PROGRAM;
  *size = prog->log.size() + 1;
  return NVRTC_SUCCESS;
}

nvrtcResult nvrtcGetProgramLog(nvrtcProgram prog, char* log) {
  if (prog == nullptr) return NVRTC_ERROR_INVALID_PROGRAM;
  std::memcpy(log, prog->log.c_str(), prog->log.size() + 1);
  return NVRTC_SUCCESS;
}

nvrtcResult nvrtcGetCUBINSize(nvrtcProgram prog, size_t* size) {
  if (prog == nullptr || prog->cubin.empty()) return NVRTC_ERROR_INVALID_PROGRAM;
  *size = prog->cubin.size() + 1;
  return NVRTC_SUCCESS;
}

nvrtcResult nvrtcGetCUBIN(nvrtcProgram prog, char* cubin) {
  if (prog == nullptr || prog->cubin.empty()) return NVRTC_ERROR_INVALID_PROGRAM;
  std::memcpy(cubin, prog->cubin.c_str(), prog->cubin.size() + 1);
  return NVRTC_SUCCESS;
}

}  // extern "C"
