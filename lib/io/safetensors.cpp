// safetensors: an 8-byte little-endian header length N, N bytes of JSON
// {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//  "__metadata__": {"key": "value"}}, then the data, little-endian, offsets relative to its start.
// Note [Validating weight files]
// The loader trusts nothing: the header length is bounded by the file and by 100 MB; every entry
// must have exactly its three fields, a known dtype, at most 16 non-negative dims whose product
// does not overflow, and offsets whose span equals the tensor's bytes; sorted by offset, the
// entries must tile the data exactly (no overlap, no gap, nothing past the end). Only then is any
// tensor made, so an error leaves nothing half-loaded.
#include <algorithm>
#include <cstring>
#include <limits>

#include "core/check.h"
#include "core/tensor_impl.h"
#include "io/file.h"
#include "io/json.h"
#include "tapegrad/format.h"
#include "tapegrad/io.h"
#include "tapegrad/ops.h"

namespace tg {
namespace {

constexpr uint64_t kMaxHeader = 100'000'000;

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

const char* st_name(DType d) {
  switch (d) {
    case kF32: return "F32";
    case kF64: return "F64";
    case kI32: return "I32";
    case kI64: return "I64";
    default: return "BOOL";
  }
}

struct Parsed {
  std::vector<Entry> entries;
  std::map<std::string, std::string> metadata;
  size_t data_start = 0;
};

Parsed parse(const std::string& bytes, const std::string& path) {
  const char* op = "load_safetensors";
  std::string what = fmt::format("{}: '{}'", op, path);
  TG_CHECK(bytes.size() >= 8, "{}: the file has {} bytes, fewer than the 8-byte header length",
           what, bytes.size());
  uint64_t n = io::read_le(bytes.data(), 8);
  TG_CHECK(n <= kMaxHeader, "{}: the header length {} exceeds the {}-byte limit", what, n,
           kMaxHeader);
  TG_CHECK(n <= bytes.size() - 8, "{}: the header claims {} bytes but only {} follow", what, n,
           bytes.size() - 8);
  std::string_view header(bytes.data() + 8, n);
  TG_CHECK(!header.empty() && header[0] == '{', "{}: the header is not a JSON object", what);
  json::Value root = json::parse(header, what);
  TG_CHECK(root.kind == json::Value::Object, "{}: the header is not a JSON object", what);
  Parsed out;
  out.data_start = 8 + n;
  uint64_t data_size = bytes.size() - out.data_start;
  for (auto& [name, v] : root.object) {
    if (name == "__metadata__") {
      TG_CHECK(v.kind == json::Value::Object, "{}: __metadata__ must be an object", what);
      for (auto& [k, s] : v.object) {
        TG_CHECK(s.kind == json::Value::String, "{}: metadata value of '{}' is not a string", what, k);
        out.metadata[k] = s.string;
      }
      continue;
    }
    TG_CHECK(v.kind == json::Value::Object, "{}: entry '{}' is not an object", what, name);
    const json::Value *dtype = nullptr, *shape = nullptr, *offsets = nullptr;
    for (auto& [k, f] : v.object) {
      if (k == "dtype") dtype = &f;
      else if (k == "shape") shape = &f;
      else if (k == "data_offsets") offsets = &f;
      else throw_error(fmt::format("{}: entry '{}' has an unknown field '{}'", what, name, k));
    }
    TG_CHECK(dtype && shape && offsets,
             "{}: entry '{}' needs dtype, shape and data_offsets", what, name);
    TG_CHECK(dtype->kind == json::Value::String, "{}: dtype of '{}' is not a string", what, name);
    Entry e{name, kF32, {}, 0, 0};
    const std::string& d = dtype->string;
    if (d == "F32") e.dtype = kF32;
    else if (d == "F64") e.dtype = kF64;
    else if (d == "I32") e.dtype = kI32;
    else if (d == "I64") e.dtype = kI64;
    else if (d == "BOOL") e.dtype = kBool;
    else
      throw_error(fmt::format("{}: '{}' has dtype {}, which tapegrad does not support (F32, F64, "
                              "I32, I64, BOOL)", what, name, d));
    TG_CHECK(shape->kind == json::Value::Array, "{}: shape of '{}' is not a list", what, name);
    TG_CHECK(shape->array.size() <= Shape::kMaxDims, "{}: '{}' has {} dims, more than {}", what,
             name, shape->array.size(), Shape::kMaxDims);
    uint64_t numel = 1;
    for (auto& s : shape->array) {
      TG_CHECK(s.kind == json::Value::Number && s.is_integer && s.integer >= 0,
               "{}: shape of '{}' must hold non-negative integers", what, name);
      e.shape.push_back(s.integer);
      TG_CHECK(s.integer == 0 || numel <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) /
                                               static_cast<uint64_t>(s.integer),
               "{}: the shape of '{}' has more elements than fit in int64", what, name);
      numel *= static_cast<uint64_t>(s.integer);
    }
    TG_CHECK(offsets->kind == json::Value::Array && offsets->array.size() == 2,
             "{}: data_offsets of '{}' must be [begin, end]", what, name);
    for (auto& o : offsets->array)
      TG_CHECK(o.kind == json::Value::Number && o.is_integer && o.integer >= 0,
               "{}: data_offsets of '{}' must be non-negative integers", what, name);
    e.begin = static_cast<uint64_t>(offsets->array[0].integer);
    e.end = static_cast<uint64_t>(offsets->array[1].integer);
    TG_CHECK(e.begin <= e.end, "{}: data_offsets of '{}' run backwards ({} > {})", what, name,
             e.begin, e.end);
    uint64_t elsize = element_size(e.dtype);
    TG_CHECK(numel <= std::numeric_limits<uint64_t>::max() / elsize && e.end - e.begin == numel * elsize,
             "{}: '{}' ({} {}) needs {} bytes but its offsets span {}", what, name, d, e.shape,
             numel * elsize, e.end - e.begin);
    TG_CHECK(e.end <= data_size, "{}: '{}' ends at byte {} of the data, which has only {}", what,
             name, e.end, data_size);
    out.entries.push_back(std::move(e));
  }
  // The entries must tile the data exactly.
  std::vector<const Entry*> order;
  for (auto& e : out.entries) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t at = 0;
  for (const Entry* e : order) {
    TG_CHECK(e->begin >= at, "{}: the data of '{}' overlaps another tensor's (bytes {}..{})", what,
             e->name, e->begin, e->end);
    TG_CHECK(e->begin == at, "{}: {} unused bytes before '{}'", what, e->begin - at, e->name);
    at = e->end;
  }
  TG_CHECK(at == data_size, "{}: {} bytes after the last tensor belong to none", what,
           data_size - at);
  return out;
}

}  // namespace

std::map<std::string, Tensor> load_safetensors(const std::string& path, Loc loc) {
  OpScope scope("load_safetensors", loc);
  std::string bytes = io::read_file(path, "load_safetensors");
  Parsed p = parse(bytes, path);
  std::map<std::string, Tensor> out;
  for (auto& e : p.entries) {
    const char* data = bytes.data() + p.data_start + e.begin;
    size_t n = static_cast<size_t>(e.end - e.begin);
    Tensor t = make_tensor(e.shape, e.dtype, kCPU);
    if (e.dtype == kBool) {  // any non-zero byte is true; never read a byte as bool unchecked
      char* dst = static_cast<char*>(t.raw_data_ptr());
      for (size_t i = 0; i < n; ++i) dst[i] = data[i] != 0;
    } else if (n > 0) {
      std::memcpy(t.raw_data_ptr(), data, n);
    }
    out.emplace(e.name, t);
  }
  return out;
}

std::map<std::string, std::string> load_safetensors_metadata(const std::string& path, Loc loc) {
  OpScope scope("load_safetensors_metadata", loc);
  return parse(io::read_file(path, "load_safetensors"), path).metadata;
}

void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata, Loc loc) {
  OpScope scope("save_safetensors", loc);
  // Widest dtypes first, then by name: every tensor starts aligned to its element size.
  std::vector<std::pair<std::string, Tensor>> order;
  for (auto& [name, t] : tensors) {
    TG_CHECK(t.defined(), "save_safetensors: '{}' is undefined", name);
    TG_CHECK(name != "__metadata__", "save_safetensors: '__metadata__' is reserved");
    order.emplace_back(name, t.detach().to(kCPU).contiguous());
  }
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return a.second.element_size() > b.second.element_size();
  });
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (auto& [k, v] : metadata) {
      header += (first ? "" : ",") + json::quote(k) + ":" + json::quote(v);
      first = false;
    }
    header += "}";
  }
  uint64_t at = 0;
  for (auto& [name, t] : order) {
    uint64_t n = static_cast<uint64_t>(t.numel()) * t.element_size();
    if (header.size() > 1) header += ",";
    header += fmt::format("{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
                          json::quote(name), st_name(t.dtype()), fmt::join(t.shape(), ","), at,
                          at + n);
    at += n;
  }
  header += "}";
  while ((8 + header.size()) % 8) header += ' ';  // the data starts 8-byte aligned
  std::string file;
  file.reserve(8 + header.size() + at);
  io::append_le(file, header.size(), 8);
  file += header;
  for (auto& [name, t] : order)
    file.append(static_cast<const char*>(t.raw_data_ptr()),
                static_cast<size_t>(t.numel()) * t.element_size());
  io::write_file_atomic(path, file, "save_safetensors");
}

}  // namespace tg
