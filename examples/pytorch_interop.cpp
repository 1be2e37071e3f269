// Weights trained in PyTorch load here and the other way round. examples/pytorch_export.py builds
// a model in PyTorch (a conv net with batch norm, an LSTM and a 2-layer GRU) and writes its
// state_dict and its outputs on random inputs; this program builds the same model with the same
// names, loads the weights, checks the outputs agree, then writes its own weights and outputs and
// has PyTorch check them. The Python half runs only when python3 can import torch.
// Run: build/release/examples/pytorch_interop [work dir]
#include <fmt/ranges.h>
#include <tapegrad/tapegrad.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

using namespace tg;

#ifndef TAPEGRAD_EXAMPLES_DIR
#define TAPEGRAD_EXAMPLES_DIR "examples"
#endif

struct Net : nn::Module {
  nn::Sequential cnn{nn::Conv2d(1, 4, 3, {.padding = 1}), nn::BatchNorm2d(4), nn::ReLU(),
                     nn::MaxPool2d(2), nn::Flatten(), nn::Linear(4 * 4 * 4, 10)};
  nn::LSTM rnn{5, 7};
  nn::GRU gru{5, 3, {.num_layers = 2, .batch_first = true}};
  Net() {
    register_module("cnn", cnn);
    register_module("rnn", rnn);
    register_module("gru", gru);
  }
  std::map<std::string, Tensor> outputs(const Tensor& image, const Tensor& seq) {
    NoGradGuard no_grad;
    auto [out, hc] = rnn.forward(seq, {Tensor(), Tensor()});
    return {{"cnn_out", cnn(image)}, {"lstm_out", out}, {"lstm_c", std::get<1>(hc)},
            {"gru_out", gru(seq.transpose(0, 1))}};
  }
};

int main(int argc, char** argv) try {
  std::string dir = argc > 1 ? argv[1] : (std::filesystem::temp_directory_path() / "tg_interop").string();
  std::filesystem::create_directories(dir);
  std::string script = std::string(TAPEGRAD_EXAMPLES_DIR) + "/pytorch_export.py";
  // The first python3 that can import torch (Debian's is /usr/bin/python3).
  std::string python;
  for (std::string p : {"python3", "/usr/bin/python3"})
    if (std::system((p + " -c 'import torch' >/dev/null 2>&1").c_str()) == 0) {
      python = p;
      break;
    }
  if (python.empty()) {
    std::printf("pytorch_interop: skipped, python3 cannot import torch (apt-get install python3-torch)\n");
    return 0;
  }
  if (std::system((python + " " + script + " export " + dir).c_str()) != 0) return 1;

  Net net;
  net.eval();
  net.load(dir + "/weights.safetensors");  // every name, shape and dtype checked
  auto io = load_safetensors(dir + "/io.safetensors");
  auto got = net.outputs(io["image"], io["seq"]);
  double worst = 0;
  for (auto& [name, t] : got) {
    double d = (t - io[name]).abs().amax().item<float>();
    std::printf("  %-9s %-12s largest difference from PyTorch %.2e\n", name.c_str(),
                fmt::format("{}", t.shape()).c_str(), d);
    worst = std::max(worst, d);
  }
  std::printf("tapegrad on PyTorch's weights: largest difference %.2e\n", worst);
  if (worst > 1e-5) return 1;

  // The other way round: new weights from tapegrad, checked by PyTorch.
  manual_seed(1);
  Net mine;
  mine.eval();
  Tensor image = randn({2, 1, 8, 8}), seq = randn({6, 2, 5});
  mine.save(dir + "/tapegrad_weights.safetensors");
  auto out = mine.outputs(image, seq);
  out["image"] = image;
  out["seq"] = seq;
  save_safetensors(dir + "/tapegrad_io.safetensors", out);
  std::fflush(stdout);
  return std::system((python + " " + script + " check " + dir).c_str()) == 0 ? 0 : 1;
} catch (const tg::Error& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 2;
}
