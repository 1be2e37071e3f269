// Weight and array files: safetensors (the published format: an 8-byte little-endian header length,
// a JSON header, raw little-endian data) and NumPy's .npy (format versions 1-3). Loaders accept
// only data: every malformed, truncated or hostile file gets a tg::Error naming the file and the
// problem, never a crash or a read out of bounds. Savers write a temporary file and rename it, so
// a failed save leaves any existing file as it was.
#pragma once

#include <map>
#include <string>

#include "tapegrad/tensor.h"

namespace tg {

// Every tensor of a .safetensors file, by name, on the CPU. F32, F64, I32, I64 and BOOL load as
// themselves; other dtypes (F16, BF16, U8...) are refused by name.
std::map<std::string, Tensor> load_safetensors(const std::string& path, Loc loc = Loc::current());
// The `__metadata__` string map of a .safetensors file.
std::map<std::string, std::string> load_safetensors_metadata(const std::string& path,
                                                             Loc loc = Loc::current());
void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {},
                      Loc loc = Loc::current());

// One array of a .npy file, on the CPU. f4, f8, i4, i8 and b1 load as themselves; the narrower
// integers (i1, u1, i2, u2) as i32 and u4 as i64. Either byte order; Fortran order is transposed
// back. Object arrays and other dtypes are refused.
Tensor load_npy(const std::string& path, Loc loc = Loc::current());
void save_npy(const std::string& path, const Tensor& t, Loc loc = Loc::current());

}  // namespace tg
