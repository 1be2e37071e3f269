// Data: the loader's batching and seeded shuffling, the IDX and CSV readers (plain and gzipped,
// good and bad files), the vendored digits set, Fashion-MNIST when installed, metrics.
#include <doctest/doctest.h>
#include <tapegrad/tapegrad.h>
#include <zlib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

using namespace tg;

namespace {
std::string tmp(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / "tg_test_data";
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}
void write(const std::string& path, const std::string& bytes, bool gz = false) {
  if (gz) {
    gzFile f = gzopen(path.c_str(), "wb");
    gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
    gzclose(f);
  } else {
    std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
}
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}
// The vendored digits set; TAPEGRAD_TEST_DATA in the environment points a binary built elsewhere
// (scripts/tg gpu-pack) at its copy of tests/data.
std::string digits_path() {
  const char* dir = std::getenv("TAPEGRAD_TEST_DATA");
  return std::string(dir != nullptr && *dir ? dir : TAPEGRAD_TEST_DATA) + "/digits.csv.gz";
}
}  // namespace

TEST_CASE("DataLoader: batches, drop_last, seeded shuffling that covers every example once") {
  data::TensorDataset ds(arange(10).to(kF32).unsqueeze(1), arange(10));
  data::DataLoader plain(ds, {.batch_size = 4});
  CHECK(plain.size() == 3);
  std::vector<int64_t> sizes, seen;
  for (auto& [x, y] : plain) {
    sizes.push_back(x.size(0));
    for (auto v : y.to_vector<int64_t>()) seen.push_back(v);
    CHECK(x.shape() == Shape{x.size(0), 1});
  }
  CHECK(sizes == std::vector<int64_t>{4, 4, 2});
  CHECK(seen == arange(10).to_vector<int64_t>());
  data::DataLoader drop(ds, {.batch_size = 4, .drop_last = true});
  int n = 0;
  for (auto& b : drop) n += static_cast<int>(b.data.size(0));
  CHECK(n == 8);

  auto epoch = [](data::DataLoader& l) {
    std::vector<int64_t> order;
    for (auto& b : l)
      for (auto v : b.target.to_vector<int64_t>()) order.push_back(v);
    return order;
  };
  data::DataLoader a(ds, {.batch_size = 3, .shuffle = true, .seed = 7});
  data::DataLoader b(ds, {.batch_size = 3, .shuffle = true, .seed = 7});
  auto e1 = epoch(a), e2 = epoch(a);
  CHECK(e1 == epoch(b));  // same seed, same first epoch
  CHECK(e1 != e2);        // a new order every epoch
  CHECK(std::set<int64_t>(e1.begin(), e1.end()).size() == 10);
  CHECK(std::set<int64_t>(e2.begin(), e2.end()).size() == 10);
  CHECK_THROWS_WITH_AS(data::DataLoader(ds, {.batch_size = 0}), doctest::Contains("batch_size"), Error);
  CHECK_THROWS_WITH_AS(data::TensorDataset(zeros({3, 2}), zeros({4})), doctest::Contains("3 rows"), Error);
}

TEST_CASE("read_idx: plain and gzipped files, every element type, bad files") {
  std::string bytes("\0\0\x08\x02\0\0\0\x02\0\0\0\x03\x01\x02\x03\xfd\xfe\xff", 18);
  for (bool gz : {false, true}) {
    std::string path = tmp(gz ? "a.idx.gz" : "a.idx");
    write(path, bytes, gz);
    Tensor t = data::read_idx(path);
    CHECK(t.shape() == Shape{2, 3});
    CHECK(t.to_vector<int32_t>() == std::vector<int32_t>{1, 2, 3, 253, 254, 255});
  }
  std::string f = tmp("f.idx");
  write(f, std::string("\0\0\x0d\x01\0\0\0\x01\x3f\x80\0\0", 12));  // one big-endian 1.0f
  CHECK(data::read_idx(f).to_vector<float>() == std::vector<float>{1.0f});
  write(f, std::string("\0\0\x0b\x01\0\0\0\x01\xff\xfe", 10));  // i16 -2
  CHECK(data::read_idx(f).to_vector<int32_t>() == std::vector<int32_t>{-2});
  write(f, std::string("\x01\0\x08\x01\0\0\0\x01\x05", 9));
  CHECK(error_of([&] { data::read_idx(f); }).find("bad magic") != std::string::npos);
  write(f, std::string("\0\0\x07\x01\0\0\0\x01\x05", 9));
  CHECK(error_of([&] { data::read_idx(f); }).find("unknown element type 0x07") != std::string::npos);
  write(f, std::string("\0\0\x08\x01\0\0\0\x05\x05", 9));
  CHECK(error_of([&] { data::read_idx(f); }).find("ends early: the data needs 5 bytes, 1 are there") != std::string::npos);
  write(f, std::string("\0\0\x08\x01\0\0\0\x01\x05\x06", 10));
  CHECK(error_of([&] { data::read_idx(f); }).find("bytes after its data") != std::string::npos);
  write(f, std::string("\0\0\x08\x03\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 16));
  CHECK(error_of([&] { data::read_idx(f); }).find("too many elements") != std::string::npos);
  write(f, std::string("\x1f\x8b\x08\0garbage-after-a-gzip-magic", 31));
  CHECK(error_of([&] { data::read_idx(f); }).find("read_idx") != std::string::npos);
}

TEST_CASE("read_csv: header, gzip, errors with line numbers, the vendored digits set") {
  std::string p = tmp("a.csv");
  write(p, "x,y\n1, 2.5\n-3,4e2\n\n", true);
  auto csv = data::read_csv(p, {.header = true, .dtype = kF64});
  CHECK(csv.columns == std::vector<std::string>{"x", "y"});
  CHECK(csv.values.to_vector<double>() == std::vector<double>{1, 2.5, -3, 400});
  write(p, "1,2\n3\n");
  CHECK(error_of([&] { data::read_csv(p); }).find("line 2 has 1 fields, earlier lines have 2") != std::string::npos);
  write(p, "1,2\n3,abc\n");
  CHECK(error_of([&] { data::read_csv(p); }).find("line 2: 'abc' is not a number") != std::string::npos);
  auto digits = data::read_csv(digits_path());
  CHECK(digits.values.shape() == Shape{1797, 65});
  Tensor labels = digits.values.select(1, 64);
  CHECK(labels.amin().item<float>() == 0);
  CHECK(labels.amax().item<float>() == 9);
  CHECK(digits.values.slice(1, 0, 64).amax().item<float>() == 16);
}

TEST_CASE("Fashion-MNIST from Debian's dataset-fashion-mnist, when installed") {
  std::string root = "/usr/share/datasets/fashion-mnist";
  if (!std::filesystem::exists(root + "/t10k-images-idx3-ubyte.gz")) {
    MESSAGE("skipped: " << root << " is not installed (apt-get install dataset-fashion-mnist)");
    return;
  }
  auto test = data::FashionMNIST(root, data::Split::Test);
  CHECK(test.size() == 10000);
  CHECK(test.data.shape() == Shape{10000, 1, 28, 28});
  CHECK(test.data.amax().item<float>() == 1.0f);
  CHECK(test.targets.dtype() == kI64);
  CHECK(test.targets.amax().item<int64_t>() == 9);
  CHECK(error_of([] { data::FashionMNIST("/nonexistent"); }).find("cannot open") != std::string::npos);
}

TEST_CASE("metrics: running loss and accuracy") {
  data::Metrics m;
  Tensor logits = tensor({{2.0f, 1.0f}, {0.0f, 3.0f}, {5.0f, 1.0f}});
  m.add(tensor(0.5f), logits, tensor<int64_t>({0, 1, 1}));
  m.add(tensor(1.0f), logits.slice(0, 0, 1), tensor<int64_t>({1}));
  CHECK(m.loss() == doctest::Approx((0.5 * 3 + 1.0) / 4));
  CHECK(m.accuracy() == doctest::Approx(0.5));
  CHECK(m.str() == "loss 0.6250  acc 50.00%");
  CHECK(data::count_correct(logits, tensor<int64_t>({0, 1, 0})) == 3);
}
