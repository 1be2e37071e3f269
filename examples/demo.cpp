// The main demo: build tensors, run ops, print the results.
#include <tapegrad/tapegrad.h>

#include <iostream>

int main() {
  using namespace tg;
  manual_seed(0);
  auto x = randn({3, 4});
  auto w = tensor({{1.0f, 2.0f}, {3.0f, 4.0f}, {5.0f, 6.0f}, {7.0f, 8.0f}});
  auto y = relu(x.matmul(w) + 1);
  std::cout << "x =\n" << x << "\n\ny = relu(x @ w + 1) =\n" << y << "\n\n";
  std::cout << "row sums: " << y.sum({1}) << "\n";
  std::cout << "softmax over rows:\n" << softmax(y, 1) << "\n";
}
