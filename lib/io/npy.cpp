// NumPy .npy: "\x93NUMPY", major and minor version, the header length (2 bytes in 1.0, 4 in 2.0
// and 3.0), then a Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
// padded with spaces and a newline, then the data. Validated as safetensors is (Note [Validating
// weight files] in safetensors.cpp): nothing is read past what the header proves is there.
#include <algorithm>
#include <cstring>
#include <limits>

#include "core/check.h"
#include "core/tensor_impl.h"
#include "io/file.h"
#include "tapegrad/format.h"
#include "tapegrad/io.h"
#include "tapegrad/ops.h"

namespace tg {
namespace {

constexpr uint64_t kMaxHeader = 1'000'000;

struct Descr {
  char order;   // '<', '>' or '|'
  char kind;    // 'f', 'i', 'u', 'b'
  int size;     // bytes per element in the file
  DType dtype;  // what it loads as
};

// The header dict: only the three keys numpy writes, each once.
struct Header {
  std::string descr;
  bool fortran = false;
  Shape shape;
};

class HeaderParser {
 public:
  HeaderParser(std::string_view s, std::string what) : s_(s), what_(std::move(what)) {}

  Header parse() {
    Header h;
    bool seen[3] = {false, false, false};
    expect('{');
    while (peek() != '}') {
      std::string key = quoted();
      expect(':');
      int k = key == "descr" ? 0 : key == "fortran_order" ? 1 : key == "shape" ? 2 : -1;
      TG_CHECK(k >= 0, "{}: unknown header key '{}'", what_, key);
      TG_CHECK(!seen[k], "{}: header key '{}' appears twice", what_, key);
      seen[k] = true;
      if (k == 0) {
        TG_CHECK(peek() == '\'' || peek() == '"',
                 "{}: descr is not a simple dtype string (structured or object arrays are refused)",
                 what_);
        h.descr = quoted();
      } else if (k == 1) {
        h.fortran = boolean();
      } else {
        h.shape = tuple();
      }
      if (peek() == ',') ++pos_;
    }
    ++pos_;
    TG_CHECK(seen[0] && seen[1] && seen[2], "{}: the header needs descr, fortran_order and shape",
             what_);
    return h;
  }

 private:
  char peek() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\t')) ++pos_;
    TG_CHECK(pos_ < s_.size(), "{}: the header ends early", what_);
    return s_[pos_];
  }
  void expect(char c) {
    TG_CHECK(peek() == c, "{}: expected '{}' at byte {} of the header", what_, c, pos_);
    ++pos_;
  }
  std::string quoted() {
    char q = peek();
    TG_CHECK(q == '\'' || q == '"', "{}: expected a string at byte {} of the header", what_, pos_);
    size_t end = s_.find(q, pos_ + 1);
    TG_CHECK(end != std::string_view::npos, "{}: unterminated string in the header", what_);
    std::string out(s_.substr(pos_ + 1, end - pos_ - 1));
    pos_ = end + 1;
    return out;
  }
  bool boolean() {
    peek();
    if (s_.substr(pos_, 4) == "True") return pos_ += 4, true;
    if (s_.substr(pos_, 5) == "False") return pos_ += 5, false;
    throw_error(fmt::format("{}: fortran_order must be True or False", what_));
  }
  Shape tuple() {
    expect('(');
    Shape shape;
    uint64_t numel = 1;
    while (peek() != ')') {
      uint64_t v = 0;
      size_t start = pos_;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') {
        TG_CHECK(v <= (std::numeric_limits<int64_t>::max() - 9) / 10,
                 "{}: a dimension of the shape overflows int64", what_);
        v = v * 10 + static_cast<uint64_t>(s_[pos_++] - '0');
      }
      TG_CHECK(pos_ > start, "{}: the shape must hold non-negative integers", what_);
      TG_CHECK(shape.size() < Shape::kMaxDims, "{}: more than {} dims", what_, Shape::kMaxDims);
      TG_CHECK(v == 0 || numel <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / v,
               "{}: the shape has more elements than fit in int64", what_);
      numel *= v;
      shape.push_back(static_cast<int64_t>(v));
      if (peek() == 'L') ++pos_;  // Python 2 longs
      if (peek() == ',') ++pos_;
    }
    ++pos_;
    return shape;
  }

  std::string_view s_;
  std::string what_;
  size_t pos_ = 0;
};

Descr parse_descr(const std::string& d, const std::string& what) {
  TG_CHECK(d.size() < 2 || d[1] != 'O',
           "{}: object arrays are refused (they hold Python objects, not data)", what);
  TG_CHECK(d.size() >= 3, "{}: unsupported dtype '{}'", what, d);
  char order = d[0] == '=' ? '<' : d[0];
  char kind = d[1];
  std::string digits = d.substr(2);
  TG_CHECK((order == '<' || order == '>' || order == '|') &&
               std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }),
           "{}: unsupported dtype '{}'", what, d);
  int size = std::stoi(digits.substr(0, 3));
  auto is = [&](char k, int s) { return kind == k && size == s; };
  if (is('f', 4)) return {order, kind, size, kF32};
  if (is('f', 8)) return {order, kind, size, kF64};
  if (is('i', 4)) return {order, kind, size, kI32};
  if (is('i', 8)) return {order, kind, size, kI64};
  if (is('b', 1)) return {order, kind, size, kBool};
  if (is('i', 1) || is('u', 1) || is('i', 2) || is('u', 2)) return {order, kind, size, kI32};
  if (is('u', 4)) return {order, kind, size, kI64};
  throw_error(fmt::format("{}: dtype '{}' is not supported (f4, f8, i1-i8, u1-u4, b1)", what, d));
}

// Element i of the file's data as the loaded dtype's bytes.
void convert(const char* src, char* dst, int64_t n, const Descr& d) {
  int out_size = static_cast<int>(element_size(d.dtype));
  bool swap = d.order == '>';
  for (int64_t i = 0; i < n; ++i) {
    unsigned char b[8];
    std::memcpy(b, src + i * d.size, static_cast<size_t>(d.size));
    if (swap) std::reverse(b, b + d.size);
    if (d.kind == 'b') {
      dst[i] = b[0] != 0;
      continue;
    }
    if (d.size == out_size) {
      std::memcpy(dst + i * out_size, b, static_cast<size_t>(out_size));
      continue;
    }
    uint64_t raw = io::read_le(reinterpret_cast<const char*>(b), d.size);
    int64_t v = static_cast<int64_t>(raw);
    if (d.kind == 'i' && (raw >> (8 * d.size - 1)) & 1) v = static_cast<int64_t>(raw | (~uint64_t{0} << (8 * d.size)));
    if (d.dtype == kI32) {
      int32_t w = static_cast<int32_t>(v);
      std::memcpy(dst + i * 4, &w, 4);
    } else {
      std::memcpy(dst + i * 8, &v, 8);
    }
  }
}

const char* npy_descr(DType d) {
  switch (d) {
    case kF32: return "<f4";
    case kF64: return "<f8";
    case kI32: return "<i4";
    case kI64: return "<i8";
    default: return "|b1";
  }
}

}  // namespace

Tensor load_npy(const std::string& path, Loc loc) {
  OpScope scope("load_npy", loc);
  std::string what = fmt::format("load_npy: '{}'", path);
  std::string bytes = io::read_file(path, "load_npy");
  TG_CHECK(bytes.size() >= 10 && bytes.compare(0, 6, "\x93NUMPY") == 0,
           "{}: not a .npy file (no \\x93NUMPY magic)", what);
  int major = static_cast<unsigned char>(bytes[6]);
  TG_CHECK(major >= 1 && major <= 3, "{}: format version {}.{} is not supported (1.0 to 3.0)",
           what, major, static_cast<unsigned char>(bytes[7]));
  size_t len_bytes = major == 1 ? 2 : 4;
  TG_CHECK(bytes.size() >= 8 + len_bytes, "{}: the file ends inside its header length", what);
  uint64_t n = io::read_le(bytes.data() + 8, static_cast<int>(len_bytes));
  size_t start = 8 + len_bytes;
  TG_CHECK(n <= kMaxHeader, "{}: the header length {} exceeds the {}-byte limit", what, n,
           kMaxHeader);
  TG_CHECK(n <= bytes.size() - start, "{}: the header claims {} bytes but only {} follow", what, n,
           bytes.size() - start);
  Header h = HeaderParser(std::string_view(bytes).substr(start, n), what).parse();
  Descr d = parse_descr(h.descr, what);
  int64_t numel = 1;
  for (int64_t s : h.shape) numel *= s;  // bounded by the header parser
  uint64_t data_at = start + n, have = bytes.size() - data_at;
  TG_CHECK(static_cast<uint64_t>(numel) <= have / static_cast<uint64_t>(d.size) &&
               static_cast<uint64_t>(numel) * static_cast<uint64_t>(d.size) == have,
           "{}: shape {} of {} needs {} bytes of data, the file has {}", what, h.shape, h.descr,
           static_cast<double>(numel) * d.size, have);
  Shape stored = h.shape;
  if (h.fortran) std::reverse(stored.begin(), stored.end());
  Tensor t = make_tensor(stored, d.dtype, kCPU);
  convert(bytes.data() + data_at, static_cast<char*>(t.raw_data_ptr()), numel, d);
  if (!h.fortran || t.dim() < 2) return t;
  Shape perm;
  for (int64_t i = t.dim() - 1; i >= 0; --i) perm.push_back(i);
  return t.permute(perm).contiguous();
}

void save_npy(const std::string& path, const Tensor& t, Loc loc) {
  OpScope scope("save_npy", loc);
  TG_CHECK(t.defined(), "save_npy: the tensor is undefined");
  Tensor c = t.detach().to(kCPU).contiguous();
  std::string shape;
  for (int64_t s : c.shape()) shape += std::to_string(s) + ", ";
  if (c.dim() > 1) shape.resize(shape.size() - 1), shape.pop_back();
  else if (c.dim() == 1) shape.pop_back();
  std::string dict = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': ({}), }}",
                                 npy_descr(c.dtype()), shape);
  // Version 1.0; the data starts 64-byte aligned, as numpy writes it.
  size_t total = 10 + dict.size() + 1;
  dict.append((64 - total % 64) % 64, ' ');
  dict += '\n';
  std::string file = "\x93NUMPY";
  file += '\x01';
  file += '\x00';
  io::append_le(file, dict.size(), 2);
  file += dict;
  file.append(static_cast<const char*>(c.raw_data_ptr()), static_cast<size_t>(c.numel()) * c.element_size());
  io::write_file_atomic(path, file, "save_npy");
}

}  // namespace tg
