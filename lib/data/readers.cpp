// IDX and CSV readers. Both read through zlib's gz layer, which passes plain files through.
#include <zlib.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <limits>

#include "core/check.h"
#include "core/tensor_impl.h"
#include "tapegrad/data.h"
#include "tapegrad/format.h"
#include "tapegrad/ops.h"

namespace tg::data {
namespace {

// A gz (or plain) file opened for reading, closed on scope exit.
class GzFile {
 public:
  GzFile(const std::string& path, const char* op) : path_(path), op_(op) {
    f_ = gzopen(path.c_str(), "rb");
    TG_CHECK(f_ != nullptr, "{}: cannot open '{}': {}", op, path, std::strerror(errno));
  }
  ~GzFile() { gzclose(f_); }
  GzFile(const GzFile&) = delete;
  GzFile& operator=(const GzFile&) = delete;

  // Reads up to n bytes; returns how many were read.
  size_t read(char* dst, size_t n) {
    size_t done = 0;
    while (done < n) {
      unsigned chunk = static_cast<unsigned>(std::min<size_t>(n - done, 1u << 30));
      int got = gzread(f_, dst + done, chunk);
      if (got < 0) {
        int err = 0;
        const char* msg = gzerror(f_, &err);
        throw_error(fmt::format("{}: '{}' is corrupt: {}", op_, path_, msg ? msg : "read error"));
      }
      if (got == 0) break;
      done += static_cast<size_t>(got);
    }
    return done;
  }
  void read_exact(char* dst, size_t n, const char* what) {
    size_t got = read(dst, n);
    TG_CHECK(got == n, "{}: '{}' ends early: {} needs {} bytes, {} are there", op_, path_, what, n,
             got);
  }
  std::string read_all() {
    std::string out;
    char buf[1 << 16];
    while (size_t got = read(buf, sizeof buf)) out.append(buf, got);
    return out;
  }

 private:
  gzFile f_;
  std::string path_;
  const char* op_;
};

uint32_t be32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

}  // namespace

Tensor read_idx(const std::string& path, Loc loc) {
  OpScope scope("read_idx", loc);
  GzFile f(path, "read_idx");
  unsigned char magic[4];
  f.read_exact(reinterpret_cast<char*>(magic), 4, "the magic number");
  TG_CHECK(magic[0] == 0 && magic[1] == 0, "read_idx: '{}' is not an IDX file (bad magic)", path);
  int type = magic[2], ndims = magic[3];
  int elsize = type == 0x08 || type == 0x09 ? 1 : type == 0x0B ? 2 : type == 0x0C || type == 0x0D ? 4 : type == 0x0E ? 8 : 0;
  TG_CHECK(elsize > 0, "read_idx: '{}' has unknown element type 0x{:02x}", path, type);
  TG_CHECK(ndims >= 1 && ndims <= static_cast<int>(Shape::kMaxDims),
           "read_idx: '{}' has {} dims (1 to 16 supported)", path, ndims);
  std::vector<unsigned char> dims(static_cast<size_t>(4 * ndims));
  f.read_exact(reinterpret_cast<char*>(dims.data()), dims.size(), "the dims");
  Shape shape;
  uint64_t numel = 1;
  for (int d = 0; d < ndims; ++d) {
    uint32_t s = be32(&dims[static_cast<size_t>(4 * d)]);
    TG_CHECK(s == 0 || numel <= (uint64_t{1} << 40) / s, "read_idx: '{}' claims too many elements",
             path);
    numel *= s;
    shape.push_back(static_cast<int64_t>(s));
  }
  std::string raw(static_cast<size_t>(numel) * static_cast<size_t>(elsize), '\0');
  f.read_exact(raw.data(), raw.size(), "the data");
  char extra;
  TG_CHECK(f.read(&extra, 1) == 0, "read_idx: '{}' has bytes after its data", path);
  DType dt = type == 0x0D ? kF32 : type == 0x0E ? kF64 : kI32;
  Tensor t = make_tensor(shape, dt, kCPU);
  char* dst = static_cast<char*>(t.raw_data_ptr());
  auto* src = reinterpret_cast<const unsigned char*>(raw.data());
  for (uint64_t i = 0; i < numel; ++i) {
    const unsigned char* p = src + i * static_cast<uint64_t>(elsize);
    if (type == 0x08 || type == 0x09 || type == 0x0B) {
      int32_t v = type == 0x08 ? p[0] : type == 0x09 ? static_cast<int8_t>(p[0])
                                                      : static_cast<int16_t>((p[0] << 8) | p[1]);
      std::memcpy(dst + i * 4, &v, 4);
    } else {
      unsigned char b[8];
      for (int k = 0; k < elsize; ++k) b[k] = p[elsize - 1 - k];  // big-endian in the file
      std::memcpy(dst + i * static_cast<uint64_t>(elsize), b, static_cast<size_t>(elsize));
    }
  }
  return t;
}

Csv read_csv(const std::string& path, CsvOptions o, Loc loc) {
  OpScope scope("read_csv", loc);
  TG_CHECK(o.dtype != kBool, "read_csv: values load as a numeric dtype, not bool");
  std::string text = GzFile(path, "read_csv").read_all();
  Csv out;
  std::vector<double> values;
  int64_t cols = -1, rows = 0, line_no = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    std::vector<std::string_view> fields;
    size_t start = 0;
    while (true) {
      size_t d = line.find(o.delimiter, start);
      fields.push_back(line.substr(start, d == std::string_view::npos ? std::string_view::npos : d - start));
      if (d == std::string_view::npos) break;
      start = d + 1;
    }
    if (o.header && out.columns.empty() && cols < 0) {
      for (auto f : fields) out.columns.emplace_back(f);
      cols = static_cast<int64_t>(fields.size());
      continue;
    }
    if (cols < 0) cols = static_cast<int64_t>(fields.size());
    TG_CHECK(static_cast<int64_t>(fields.size()) == cols,
             "read_csv: '{}' line {} has {} fields, earlier lines have {}", path, line_no,
             fields.size(), cols);
    for (auto f : fields) {
      while (!f.empty() && f.front() == ' ') f.remove_prefix(1);
      while (!f.empty() && f.back() == ' ') f.remove_suffix(1);
      double v = 0;
      auto [p, ec] = std::from_chars(f.data(), f.data() + f.size(), v);
      TG_CHECK(ec == std::errc() && p == f.data() + f.size() && !f.empty(),
               "read_csv: '{}' line {}: '{}' is not a number", path, line_no, std::string(f));
      values.push_back(v);
    }
    ++rows;
  }
  out.values = tensor(values, {rows, std::max<int64_t>(cols, 0)}, {.dtype = kF64}).to(o.dtype);
  return out;
}

}  // namespace tg::data
