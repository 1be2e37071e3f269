#include "io/file.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "core/check.h"

namespace tg::io {

std::string read_file(const std::string& path, const char* op) {
  std::ifstream in(path, std::ios::binary);
  TG_CHECK(in.good(), "{}: cannot open '{}': {}", op, path, std::strerror(errno));
  in.seekg(0, std::ios::end);
  std::streamoff size = in.tellg();
  TG_CHECK(size >= 0, "{}: cannot read '{}' (not a regular file?)", op, path);
  in.seekg(0, std::ios::beg);
  std::string bytes(static_cast<size_t>(size), '\0');
  in.read(bytes.data(), size);
  TG_CHECK(in.gcount() == size, "{}: could read only {} of {} bytes of '{}'", op, in.gcount(), size,
           path);
  return bytes;
}

void write_file_atomic(const std::string& path, std::string_view bytes, const char* op) {
  std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    TG_CHECK(out.good(), "{}: cannot write '{}': {}", op, tmp, std::strerror(errno));
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out.good()) {
      std::remove(tmp.c_str());
      throw_error(fmt::format("{}: writing '{}' failed (disk full?)", op, tmp));
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    std::remove(tmp.c_str());
    throw_error(fmt::format("{}: cannot replace '{}': {}", op, path, std::strerror(err)));
  }
}

}  // namespace tg::io
