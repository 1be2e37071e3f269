// A character-level LSTM trained on the GPL-3 text every Debian machine has: the loss falls, then
// it samples a paragraph. Truncated backpropagation through time over random windows.
// Run: build/release/examples/char_rnn [steps] [text file]
#include <tapegrad/tapegrad.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>

using namespace tg;
namespace F = tg::nn::functional;

struct CharModel : nn::Module {
  nn::Embedding embed;
  nn::LSTM lstm;
  nn::Linear head;
  CharModel(int64_t vocab, int64_t hidden)
      : embed(vocab, 32), lstm(32, hidden), head(hidden, vocab) {
    register_module("embed", embed);
    register_module("lstm", lstm);
    register_module("head", head);
  }
  // indices (T, N) → logits (T, N, vocab), and the final (h, c).
  std::tuple<Tensor, std::tuple<Tensor, Tensor>> run(const Tensor& idx, std::tuple<Tensor, Tensor> hc) {
    auto [out, state] = lstm.forward(embed(idx), hc);
    return {head(out), state};
  }
};

int main(int argc, char** argv) try {
  int steps = argc > 1 ? std::atoi(argv[1]) : 300;
  std::string path = argc > 2 ? argv[2] : "/usr/share/common-licenses/GPL-3";
  std::ifstream in(path);
  if (!in) {
    std::printf("cannot read %s\n", path.c_str());
    return 3;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  std::map<char, int64_t> index;
  std::string chars;
  for (char c : text)
    if (!index.count(c)) index[c] = 0;
  for (auto& [c, i] : index) i = static_cast<int64_t>(chars.size()), chars += c;
  std::vector<int64_t> codes;
  for (char c : text) codes.push_back(index[c]);
  Tensor encoded = tensor(codes);
  int64_t vocab = static_cast<int64_t>(chars.size()), seq = 64, batch = 32;
  std::printf("%s: %zu characters, %lld distinct\n", path.c_str(), text.size(), static_cast<long long>(vocab));

  manual_seed(0);
  CharModel model(vocab, 128);
  optim::Adam opt(model.parameters(), {.lr = 3e-3});
  data::Metrics m;
  for (int step = 1; step <= steps; ++step) {
    // Random windows: inputs are characters t, targets t + 1.
    Tensor starts = randint(0, encoded.size(0) - seq - 1, {batch});
    Tensor offsets = arange(seq).unsqueeze(1) + starts.unsqueeze(0);  // (T, N)
    Tensor x = encoded.index_select(0, offsets.reshape({-1})).reshape({seq, batch});
    Tensor y = encoded.index_select(0, (offsets + 1).reshape({-1}));
    auto [logits, state] = model.run(x, {Tensor(), Tensor()});
    Tensor loss = F::cross_entropy(logits.reshape({-1, vocab}), y);
    opt.zero_grad();
    loss.backward();
    nn::utils::clip_grad_norm_(model.parameters(), 5.0);
    opt.step();
    m.add(loss);
    if (step % 50 == 0 || step == 1) {
      std::printf("step %4d  loss %.3f (%.2f bits/char)\n", step, m.loss(), m.loss() / std::log(2.0));
      m.reset();
    }
  }
  // Sample with temperature 0.8, starting from "This ".
  NoGradGuard no_grad;
  std::string out = "This ";
  std::tuple<Tensor, Tensor> state{Tensor(), Tensor()};
  Tensor logits;
  for (char c : out) std::tie(logits, state) = model.run(tensor<int64_t>({index[c]}).reshape({1, 1}), state);
  for (int i = 0; i < 400; ++i) {
    std::vector<double> p = softmax(logits.reshape({vocab}).to(kF64) / 0.8, 0).to_vector<double>();
    double u = rand({}, {.dtype = kF64}).item<double>(), acc = 0;
    int64_t next = vocab - 1;
    for (int64_t k = 0; k < vocab; ++k)
      if ((acc += p[static_cast<size_t>(k)]) > u) {
        next = k;
        break;
      }
    out += chars[static_cast<size_t>(next)];
    std::tie(logits, state) = model.run(tensor<int64_t>({next}).reshape({1, 1}), state);
  }
  std::printf("\n--- sample ---\n%s\n", out.c_str());
  return 0;
} catch (const tg::Error& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 2;
}
