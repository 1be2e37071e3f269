// tg::Shape: a list of at most 16 int64 (sizes, strides, dims) stored inline, so that making a
// tensor or a view allocates no memory for its metadata (see Note [Per-op overhead]).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <vector>

namespace tg {

// Note [Per-op overhead]
// A small op's time is mostly bookkeeping: a std::vector for sizes and one for strides cost two
// heap allocations per tensor, and as much again to free. Shape keeps up to kMaxDims values inline
// (tensors have at most 16 dims, as checked where they are made), behaves like a vector for the
// code that uses it, and converts to and from std::vector<int64_t>.
class Shape {
 public:
  static constexpr size_t kMaxDims = 16;
  using value_type = int64_t;
  using iterator = int64_t*;
  using const_iterator = const int64_t*;

  Shape() = default;
  Shape(std::initializer_list<int64_t> values) { assign(values.begin(), values.end()); }
  explicit Shape(size_t n, int64_t value = 0) { assign(n, value); }
  template <class It>
    requires(!std::is_integral_v<It>)
  Shape(It first, It last) {
    assign(first, last);
  }
  Shape(const std::vector<int64_t>& v) { assign(v.begin(), v.end()); }  // NOLINT: implicit
  operator std::vector<int64_t>() const { return {begin(), end()}; }     // NOLINT: implicit

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  int64_t* data() { return data_; }
  const int64_t* data() const { return data_; }
  int64_t& operator[](size_t i) { return data_[i]; }
  int64_t operator[](size_t i) const { return data_[i]; }
  int64_t* begin() { return data_; }
  int64_t* end() { return data_ + size_; }
  const int64_t* begin() const { return data_; }
  const int64_t* end() const { return data_ + size_; }
  int64_t& back() { return data_[size_ - 1]; }
  int64_t back() const { return data_[size_ - 1]; }

  void push_back(int64_t v) {
    grow(1);
    data_[size_++] = v;
  }
  int64_t* insert(const int64_t* pos, int64_t v) {
    size_t i = static_cast<size_t>(pos - data_);
    grow(1);
    std::copy_backward(data_ + i, data_ + size_, data_ + size_ + 1);
    data_[i] = v;
    ++size_;
    return data_ + i;
  }
  template <class It>
    requires(!std::is_integral_v<It>)
  int64_t* insert(const int64_t* pos, It first, It last) {
    size_t i = static_cast<size_t>(pos - data_);
    size_t n = static_cast<size_t>(std::distance(first, last));
    grow(n);
    std::copy_backward(data_ + i, data_ + size_, data_ + size_ + n);
    std::copy(first, last, data_ + i);
    size_ += n;
    return data_ + i;
  }
  int64_t* erase(const int64_t* pos) {
    size_t i = static_cast<size_t>(pos - data_);
    std::copy(data_ + i + 1, data_ + size_, data_ + i);
    --size_;
    return data_ + i;
  }
  template <class It>
    requires(!std::is_integral_v<It>)
  void assign(It first, It last) {
    size_ = 0;
    grow(static_cast<size_t>(std::distance(first, last)));
    for (; first != last; ++first) data_[size_++] = static_cast<int64_t>(*first);
  }
  void assign(size_t n, int64_t value) {
    size_ = 0;
    grow(n);
    std::fill(data_, data_ + n, value);
    size_ = n;
  }
  void resize(size_t n, int64_t value = 0) {
    if (n > size_) {
      grow(n - size_);
      std::fill(data_ + size_, data_ + n, value);
    }
    size_ = n;
  }
  void clear() { size_ = 0; }

  friend bool operator==(const Shape& a, const Shape& b) {
    return a.size_ == b.size_ && std::equal(a.begin(), a.end(), b.begin());
  }

 private:
  void grow(size_t extra) const {
    if (size_ + extra > kMaxDims) too_long(size_ + extra);
  }
  [[noreturn]] static void too_long(size_t n);  // throws tg::Error

  int64_t data_[kMaxDims];
  size_t size_ = 0;
};

}  // namespace tg
