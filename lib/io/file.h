// Whole-file reads and atomic writes for the weight-file formats.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace tg::io {

// The file's bytes; throws tg::Error naming the path when it cannot be read.
std::string read_file(const std::string& path, const char* op);
// Writes to "<path>.tmp-<pid>" and renames it over path, so a failure leaves path untouched.
void write_file_atomic(const std::string& path, std::string_view bytes, const char* op);

// Little-endian integers from raw bytes (the formats are little-endian whatever the host).
inline uint64_t read_le(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
inline void append_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out += static_cast<char>((v >> (8 * i)) & 0xFF);
}

}  // namespace tg::io
