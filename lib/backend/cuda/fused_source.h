// Generated CUDA kernels for fused elementwise groups (Note [Generated fused kernels]): the
// source text of one group's kernel, and NVRTC, which compiles it at run time. Plain C++: no CUDA
// headers, so the generator is tested on machines without a GPU.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/reduce_plan.h"

namespace tg::cuda_detail {

inline constexpr const char* kFusedKernelName = "tg_fused";

// The CUDA C++ source of a kernel running `steps` once per element over operands merged into
// `ndim` dims (operand 0 the output, of `out`'s dtype; then the inputs), named kFusedKernelName,
// taking one parameter block laid out as FusedParams describes. Nothing when a step has no
// generated form; the backend then runs the reference.
std::optional<std::string> fused_source(const std::vector<FusedStep>& steps,
                                        std::span<const DType> inputs, DType out, int ndim);

// The generated kernel's parameter block: 8-byte words, in this order:
//   n (elements), sizes[ndim] (innermost first), strides[nops][ndim] (bytes), base[nops].
inline size_t fused_params_words(int nops, int ndim) {
  return 1 + static_cast<size_t>(ndim) + static_cast<size_t>(nops) * (static_cast<size_t>(ndim) + 1);
}

// The parameter block of out and the inputs at out's shape, dims merged where every operand
// allows (innermost first); ndim is set to the merged dims, at least 1.
std::vector<int64_t> fused_params(const TensorImpl& out, const TensorImpl* const* in, size_t nin,
                                  int& ndim);

// A fused sum (Note [Generated fused sums], fused_source.cpp): how many lanes share a row of
// `count` values, given `nout` rows (32: a warp, 256: a block; 0: the reference runs), the
// kernel's source over inputs merged into nkept kept and nred reduced dims (each at least 1),
// and its parameter block: 8-byte words
//   nout, count, lanes, kept_sizes[nkept], red_sizes[nred] (innermost first),
//   kept_strides[max(nin, 1)][nkept], red_strides[max(nin, 1)][nred] (bytes), base[nin + 1]
// (out, contiguous over the kept dims, first), with nkept and nred set to the merged dims.
int fused_sum_lanes(int64_t nout, int64_t count);
std::optional<std::string> fused_sum_source(const std::vector<FusedStep>& steps,
                                            std::span<const DType> inputs, DType out, int nkept,
                                            int nred);
std::vector<int64_t> fused_sum_params(const TensorImpl& out, const TensorImpl* const* in,
                                      size_t nin, int nreduced, int lanes, int& nkept, int& nred);

// NVRTC, opened on first use (Note [cuBLAS on demand] applies to it as well).
bool nvrtc_available();
// The library's version as major * 1000 + minor * 10 (13000 for 13.0); 0 when not available.
int nvrtc_version();
// Compiles `source` for sm_<arch> (90 for an H100) into a cubin; a compile error is a tg::Error
// with NVRTC's log. Cached by (source, arch) for the life of the process, and on disk (Note
// [Kernel cache], fused_source.cpp).
const std::string& nvrtc_compile(const std::string& source, int arch);

// The kernel cache on disk (Note [Kernel cache]): its directory as the environment says ("" for
// none), the file of one source, a file's cubin where it holds exactly that source and reads
// back whole, and writing one (false where it could not be written).
std::string kernel_cache_dir();
std::string kernel_cache_path(const std::string& dir, const std::string& source, int arch);
std::optional<std::string> load_cached_cubin(const std::string& path, const std::string& source);
bool store_cached_cubin(const std::string& path, const std::string& source,
                        const std::string& cubin);

}  // namespace tg::cuda_detail
