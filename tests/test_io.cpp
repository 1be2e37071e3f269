// safetensors and .npy: round trips of every dtype, PyTorch-written layouts, and crafted bad files,
// each of which must give a tg::Error with a clear message, never a crash or an out-of-bounds read.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>

#include <filesystem>
#include <fstream>

using namespace tg;

namespace {

std::string tmp(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / "tg_test_io";
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

void write(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string le64(uint64_t v) {
  std::string s;
  for (int i = 0; i < 8; ++i) s += static_cast<char>((v >> (8 * i)) & 0xFF);
  return s;
}

// A safetensors file from a header and a data section.
std::string st(const std::string& header, const std::string& data = "") {
  return le64(header.size()) + header + data;
}

// A version-1 .npy file from a header dict and data.
std::string npy(const std::string& dict, const std::string& data = "", char major = 1) {
  std::string s = "\x93NUMPY";
  s += major;
  s += '\0';
  std::string h = dict + "\n";
  s += static_cast<char>(h.size() & 0xFF);
  s += static_cast<char>(h.size() >> 8);
  if (major > 1) s += std::string(2, '\0');
  return s + h + data;
}

std::string error_loading(const std::string& bytes, bool is_npy) {
  std::string path = tmp(is_npy ? "bad.npy" : "bad.safetensors");
  write(path, bytes);
  try {
    if (is_npy) load_npy(path);
    else load_safetensors(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("safetensors: every dtype round-trips, with metadata, 0-d and empty tensors") {
  std::map<std::string, Tensor> m{
      {"f32", tensor({{1.5f, -2.0f}, {3.0f, 4.25f}})}, {"f64", tensor({1e-300, 2.0})},
      {"i32", tensor<int32_t>({-7, 8, 9})}, {"i64", tensor<int64_t>({1LL << 40})},
      {"bool", tensor<bool>({true, false, true})}, {"scalar", tensor(3.0f)},
      {"empty", zeros({0, 3})}, {"view", arange(12).reshape({3, 4}).t()}};
  std::string path = tmp("ok.safetensors");
  save_safetensors(path, m, {{"format", "pt"}});
  auto back = load_safetensors(path);
  REQUIRE(back.size() == m.size());
  for (auto& [k, v] : m) {
    CAPTURE(k);
    CHECK(back[k].dtype() == v.dtype());
    CHECK(back[k].shape() == v.shape());
    CHECK(back[k].to(kF64).to_vector<double>() == v.to(kF64).to_vector<double>());
  }
  CHECK(load_safetensors_metadata(path).at("format") == "pt");
  // The layout PyTorch's safetensors writes: sorted names, padded header.
  std::string header = R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I64","shape":[],"data_offsets":[8,16]}}    )";
  float fa[2] = {1.0f, -1.0f};
  int64_t ib = 42;
  std::string data(reinterpret_cast<char*>(fa), 8);
  data += std::string(reinterpret_cast<char*>(&ib), 8);
  write(path, st(header, data));
  auto t = load_safetensors(path);
  CHECK(t["a"].to_vector<float>() == std::vector<float>{1.0f, -1.0f});
  CHECK(t["b"].item<int64_t>() == 42);
}

TEST_CASE("safetensors: crafted bad files each give a clear error") {
  std::string f8(8, '\0');
  std::vector<std::pair<std::string, std::string>> cases = {
      {"", "fewer than the 8-byte header length"},
      {"\x05\x00\x00", "fewer than the 8-byte header length"},
      {le64(1000) + "{}", "the header claims 1000 bytes"},
      {le64(1ull << 40) + "{}", "exceeds the 100000000-byte limit"},
      {st("hello"), "not a JSON object"},
      {st("[]"), "not a JSON object"},
      {st(R"({"a":{"dtype":"F32")"), "invalid JSON"},
      {st(R"({"a":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}})", "xx"), "dtype F16, which tapegrad does not support"},
      {st(R"({"a":{"dtype":"XYZ","shape":[1],"data_offsets":[0,4]}})", "xxxx"), "dtype XYZ"},
      {st(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "xxxx"), "non-negative integers"},
      {st(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,4]}})", "xxxx"), "non-negative integers"},
      {st(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}})", "xxxx"), "more elements than fit in int64"},
      {st(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", "xxxx"), "needs 8 bytes but its offsets span 4"},
      {st(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "xxxx"), "ends at byte 8 of the data, which has only 4"},
      {st(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", f8), "overlaps"},
      {st(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", f8), "4 unused bytes before 'a'"},
      {st(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", f8), "4 bytes after the last tensor"},
      {st(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", f8), "duplicate key \"a\""},
      {st(R"({"a":{"dtype":"F32","shape":[1]}})", "xxxx"), "needs dtype, shape and data_offsets"},
      {st(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"extra":1}})", "xxxx"), "unknown field 'extra'"},
      {st(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", f8), "run backwards"},
      {st(R"({"__metadata__":)" + std::string(1000, '[') + std::string(1000, ']') + "}"), "nesting deeper than 32"},
      {st(R"({"a":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}})", "xxxx"), "17 dims, more than 16"},
      {st(R"({"__metadata__":{"k":1}})"), "metadata value of 'k' is not a string"},
      {st(R"({"a":[1,2]})"), "entry 'a' is not an object"},
      {st("{\"a\x01\":{}}"), "control character"},
      {st(R"({"a\q":{}})"), "unknown escape"},
      {st(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}} trailing)", "xxxx"), "unexpected text after the value"},
  };
  for (auto& [bytes, want] : cases) {
    std::string msg = error_loading(bytes, false);
    CAPTURE(want);
    CHECK_MESSAGE(msg.find(want) != std::string::npos, msg);
    CHECK(msg.find("bad.safetensors") != std::string::npos);
  }
  CHECK(cases.size() >= 20);
  CHECK_THROWS_WITH_AS(load_safetensors(tmp("does-not-exist")), doctest::Contains("cannot open"), Error);
}

TEST_CASE(".npy: every dtype round-trips; Fortran order, big-endian and narrow integers load") {
  std::string path = tmp("ok.npy");
  for (Tensor t : {tensor({{1.5f, 2.0f, -3.0f}, {4.0f, 5.0f, 6.0f}}), tensor({1.0, 2.0}),
                   tensor<int32_t>({-1, 2}), tensor<int64_t>({1LL << 50}), tensor<bool>({true, false}),
                   tensor(7.0), zeros({0, 2})}) {
    save_npy(path, t);
    Tensor back = load_npy(path);
    CHECK(back.dtype() == t.dtype());
    CHECK(back.shape() == t.shape());
    CHECK(back.to(kF64).to_vector<double>() == t.to(kF64).to_vector<double>());
  }
  // (2, 3) in Fortran order: column-major data 1 4 2 5 3 6.
  float col[6] = {1, 4, 2, 5, 3, 6};
  write(path, npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }",
                  std::string(reinterpret_cast<char*>(col), 24)));
  CHECK(load_npy(path).to_vector<float>() == std::vector<float>{1, 2, 3, 4, 5, 6});
  write(path, npy("{'descr': '>i4', 'fortran_order': False, 'shape': (2,), }", std::string("\0\0\1\0\xff\xff\xff\xfe", 8)));
  CHECK(load_npy(path).to_vector<int32_t>() == std::vector<int32_t>{256, -2});
  write(path, npy("{'descr': '|u1', 'fortran_order': False, 'shape': (3,), }", "\x01\xff\x10"));
  Tensor u = load_npy(path);
  CHECK(u.dtype() == kI32);
  CHECK(u.to_vector<int32_t>() == std::vector<int32_t>{1, 255, 16});
  write(path, npy("{'descr': '<i2', 'fortran_order': False, 'shape': (1,), }", "\xfe\xff", 2));
  CHECK(load_npy(path).item<int32_t>() == -2);
}

TEST_CASE(".npy: crafted bad files each give a clear error") {
  std::string d4 = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
  std::vector<std::pair<std::string, std::string>> cases = {
      {"", "no \\x93NUMPY magic"},
      {"\x93NUMPX\x01\x00\x10\x00", "no \\x93NUMPY magic"},
      {std::string("\x93NUMPY\x04\x00\x10\x00", 10), "format version 4.0"},
      {std::string("\x93NUMPY\x02\x00\x10\x00", 10), "ends inside its header length"},
      {std::string("\x93NUMPY\x01\x00\xff\x7f", 10) + "{}", "claims 32767 bytes"},
      {npy("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", std::string(8, 'x')), "object arrays are refused"},
      {npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }", "xxxx"), "structured or object arrays"},
      {npy("{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }", std::string(8, 'x')), "dtype '<c8' is not supported"},
      {npy(d4, "xxxx"), "needs 8 bytes of data, the file has 4"},
      {npy(d4, std::string(12, 'x')), "the file has 12"},
      {npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 16), }"), "more elements than fit in int64"},
      {npy("{'descr': '<f4', 'shape': (1,), }", "xxxx"), "needs descr, fortran_order and shape"},
      {npy("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", "xxxx"), "appears twice"},
      {npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}", "xxxx"), "unknown header key 'x'"},
      {npy("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (1,), }", "xxxx"), "True or False"},
      {npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1), }", "xxxx"), "more than 16 dims"},
      {npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", "xxxx"), "non-negative integers"},
      {npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)", "xxxx"), "ends early"},
      {npy("{'descr': '<f4, 'fortran_order': False, 'shape': (1,), }", "xxxx"), "expected a string"},
      {npy("{'descr': '<f99999999999', 'fortran_order': False, 'shape': (1,), }", "xxxx"), "not supported"},
  };
  for (auto& [bytes, want] : cases) {
    std::string msg = error_loading(bytes, true);
    CAPTURE(want);
    CHECK_MESSAGE(msg.find(want) != std::string::npos, msg);
  }
  CHECK(cases.size() >= 20);
}

TEST_CASE("a failed save leaves the existing file as it was") {
  std::string path = tmp("keep.safetensors");
  save_safetensors(path, {{"a", tensor({1.0f})}});
  std::map<std::string, Tensor> bad{{"b", tensor({2.0f})}, {"c", Tensor()}};
  CHECK_THROWS_WITH_AS(save_safetensors(path, bad), doctest::Contains("'c' is undefined"), Error);
  CHECK(load_safetensors(path).count("a") == 1);
  CHECK_THROWS_WITH_AS(save_npy(tmp("no-such-dir/x.npy"), tensor({1.0f})), doctest::Contains("cannot write"), Error);
  // Only its own file: the other cases' processes (ctest -j) may be writing beside it.
  std::error_code ec;
  std::filesystem::remove(path, ec);
}
