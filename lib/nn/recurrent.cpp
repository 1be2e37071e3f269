// Recurrent layers: the RNN, LSTM and GRU cells and the stacked sequence layers over them, with
// PyTorch's equations, gate order and parameter names.
#include <fmt/format.h>

#include <cmath>

#include "core/check.h"
#include "tapegrad/nn.h"

namespace tg::nn {

namespace F = functional;

namespace {

enum Kind { kRnnTanh, kRnnRelu, kLstm, kGru };

Tensor hidden_uniform(const Shape& shape, int64_t hidden) {
  double bound = 1.0 / std::sqrt(static_cast<double>(hidden));
  return rand(shape) * (2 * bound) - bound;
}

// One step from the projected input xi = x·W_ihᵀ + b_ih. h (and c) are replaced by the new state.
void step(int kind, const Tensor& xi, Tensor& h, Tensor& c, const Tensor& w_hh,
          const Tensor& b_hh) {
  Tensor hh = F::linear(h, w_hh, b_hh);
  switch (kind) {
    case kRnnTanh: h = tanh(xi + hh); return;
    case kRnnRelu: h = relu(xi + hh); return;
    case kLstm: {
      auto g = (xi + hh).chunk(4, 1);
      c = sigmoid(g[1]) * c + sigmoid(g[0]) * tanh(g[2]);
      h = sigmoid(g[3]) * tanh(c);
      return;
    }
    default: {
      auto x3 = xi.chunk(3, 1), h3 = hh.chunk(3, 1);
      Tensor r = sigmoid(x3[0] + h3[0]), z = sigmoid(x3[1] + h3[1]);
      Tensor n = tanh(x3[2] + r * h3[2]);
      h = n + z * (h - n);  // (1 - z)·n + z·h
    }
  }
}

void check_input(const Tensor& x, int64_t input_size, int64_t want_dim, const char* layer) {
  TG_CHECK(x.defined(), "{}: the input is undefined", layer);
  TG_CHECK(x.dim() == want_dim || x.dim() == want_dim - 1,
           "{}: expected a {}-D (batched) or {}-D input, got shape {}", layer, want_dim,
           want_dim - 1, x.shape());
  TG_CHECK(x.size(-1) == input_size, "{}: input of shape {} has {} features, the layer expects {}",
           layer, x.shape(), x.size(-1), input_size);
}

Tensor zeros_state(const Tensor& x, int64_t n, int64_t hidden) {
  return zeros({n, hidden}, {.dtype = x.dtype(), .device = x.device()});
}

void check_state(const Tensor& s, const Shape& want, const char* layer, const char* what) {
  TG_CHECK(!s.defined() || s.shape() == want, "{}: {} must have shape {}, got {}", layer, what,
           want, s.shape());
}

}  // namespace

// --- cells -----------------------------------------------------------------------------------------

RNNCellBase::RNNCellBase(int64_t in, int64_t hidden, bool bias, int64_t gates)
    : input_size(in), hidden_size(hidden) {
  TG_CHECK(in > 0 && hidden > 0, "{}: sizes must be positive, got {} and {}", type_name(), in,
           hidden);
  NoGradGuard no_grad;
  weight_ih = register_parameter("weight_ih", hidden_uniform({gates * hidden, in}, hidden));
  weight_hh = register_parameter("weight_hh", hidden_uniform({gates * hidden, hidden}, hidden));
  if (bias) {
    bias_ih = register_parameter("bias_ih", hidden_uniform({gates * hidden}, hidden));
    bias_hh = register_parameter("bias_hh", hidden_uniform({gates * hidden}, hidden));
  }
}
std::string RNNCellBase::extra_repr() const {
  return fmt::format("{}, {}, bias={}", input_size, hidden_size, bias_ih.defined());
}

namespace {
// One step of a cell on a batch (N, input) or on one input (input): shape checks, zero initial
// states, batching; returns (h', c') (c' undefined but for the LSTM).
std::tuple<Tensor, Tensor> cell_forward(const RNNCellBase& cell, int kind, const char* name,
                                        const Tensor& x, Tensor h, Tensor c) {
  check_input(x, cell.input_size, 2, name);
  bool one = x.dim() == 1;
  Tensor xb = one ? x.unsqueeze(0) : x;
  int64_t n = xb.size(0);
  auto prepare = [&](Tensor& s, const char* what) {
    if (s.defined() && s.dim() == 1) s = s.unsqueeze(0);
    check_state(s, {n, cell.hidden_size}, name, what);
    if (!s.defined()) s = zeros_state(xb, n, cell.hidden_size);
  };
  prepare(h, "h");
  if (kind == kLstm) prepare(c, "c");
  step(kind, F::linear(xb, cell.weight_ih, cell.bias_ih), h, c, cell.weight_hh, cell.bias_hh);
  if (one) return {h.squeeze(0), c.defined() ? c.squeeze(0) : c};
  return {h, c};
}
}  // namespace

RNNCell::RNNCell(int64_t in, int64_t hidden, bool bias, std::string nl)
    : RNNCellBase(in, hidden, bias, 1), nonlinearity(std::move(nl)) {
  TG_CHECK(nonlinearity == "tanh" || nonlinearity == "relu",
           "RNNCell: nonlinearity must be \"tanh\" or \"relu\", got \"{}\"", nonlinearity);
}
Tensor RNNCell::forward(const Tensor& x) { return forward(x, Tensor()); }
Tensor RNNCell::forward(const Tensor& x, const Tensor& h0) {
  int kind = nonlinearity == "relu" ? kRnnRelu : kRnnTanh;
  return std::get<0>(cell_forward(*this, kind, "RNNCell", x, h0, Tensor()));
}

LSTMCell::LSTMCell(int64_t in, int64_t hidden, bool bias) : RNNCellBase(in, hidden, bias, 4) {}
Tensor LSTMCell::forward(const Tensor& x) { return std::get<0>(forward(x, {Tensor(), Tensor()})); }
std::tuple<Tensor, Tensor> LSTMCell::forward(const Tensor& x, const std::tuple<Tensor, Tensor>& hc) {
  return cell_forward(*this, kLstm, "LSTMCell", x, std::get<0>(hc), std::get<1>(hc));
}

GRUCell::GRUCell(int64_t in, int64_t hidden, bool bias) : RNNCellBase(in, hidden, bias, 3) {}
Tensor GRUCell::forward(const Tensor& x) { return forward(x, Tensor()); }
Tensor GRUCell::forward(const Tensor& x, const Tensor& h0) {
  return std::get<0>(cell_forward(*this, kGru, "GRUCell", x, h0, Tensor()));
}

// --- sequence layers -------------------------------------------------------------------------------

RecurrentBase::RecurrentBase(int64_t in, int64_t hidden, RNNOptions opts, int64_t gates)
    : input_size(in), hidden_size(hidden), options(std::move(opts)) {
  TG_CHECK(in > 0 && hidden > 0 && options.num_layers > 0,
           "{}: sizes and num_layers must be positive, got {}, {}, {}", type_name(), in, hidden,
           options.num_layers);
  TG_CHECK(options.dropout >= 0 && options.dropout <= 1, "{}: dropout must be in [0, 1], got {}",
           type_name(), options.dropout);
  NoGradGuard no_grad;
  for (int64_t l = 0; l < options.num_layers; ++l) {
    int64_t layer_in = l == 0 ? in : hidden;
    LayerWeights w;
    w.weight_ih = register_parameter(fmt::format("weight_ih_l{}", l),
                                     hidden_uniform({gates * hidden, layer_in}, hidden));
    w.weight_hh = register_parameter(fmt::format("weight_hh_l{}", l),
                                     hidden_uniform({gates * hidden, hidden}, hidden));
    if (options.bias) {
      w.bias_ih = register_parameter(fmt::format("bias_ih_l{}", l), hidden_uniform({gates * hidden}, hidden));
      w.bias_hh = register_parameter(fmt::format("bias_hh_l{}", l), hidden_uniform({gates * hidden}, hidden));
    }
    layers.push_back(w);
  }
}

std::string RecurrentBase::extra_repr() const {
  std::string s = fmt::format("{}, {}", input_size, hidden_size);
  if (options.num_layers != 1) s += fmt::format(", num_layers={}", options.num_layers);
  if (!options.bias) s += ", bias=false";
  if (options.batch_first) s += ", batch_first=true";
  if (options.dropout > 0) s += fmt::format(", dropout={}", options.dropout);
  return s;
}

Tensor RecurrentBase::run(const Tensor& x_in, std::vector<Tensor>& state, int kind) {
  std::string name = type_name();
  check_input(x_in, input_size, 3, name.c_str());
  bool unbatched = x_in.dim() == 2;
  Tensor x = unbatched ? x_in.unsqueeze(1) : (options.batch_first ? x_in.transpose(0, 1) : x_in);
  int64_t steps = x.size(0), n = x.size(1), layers_n = options.num_layers;
  for (auto& s : state) {
    if (s.defined() && unbatched) s = s.unsqueeze(1);
    check_state(s, {layers_n, n, hidden_size}, name.c_str(), "the initial state");
  }
  std::vector<std::vector<Tensor>> finals(state.size());
  // Steps pass between layers as separate tensors, stacked once at the end: selecting steps of a
  // stacked tensor would give every step's backward a gradient of the whole sequence's size.
  std::vector<Tensor> inputs;
  for (int64_t t = 0; t < steps; ++t) inputs.push_back(x.select(0, t));
  for (int64_t l = 0; l < layers_n; ++l) {
    const LayerWeights& w = layers[static_cast<size_t>(l)];
    Tensor h = state[0].defined() ? state[0].select(0, l) : zeros_state(x, n, hidden_size);
    Tensor c;
    if (kind == kLstm) c = state[1].defined() ? state[1].select(0, l) : zeros_state(x, n, hidden_size);
    bool drop = options.dropout > 0 && l + 1 < layers_n && is_training();
    for (int64_t t = 0; t < steps; ++t) {
      step(kind, F::linear(inputs[static_cast<size_t>(t)], w.weight_ih, w.bias_ih), h, c, w.weight_hh, w.bias_hh);
      inputs[static_cast<size_t>(t)] = drop ? F::dropout(h, options.dropout, true) : h;
    }
    finals[0].push_back(h);
    if (kind == kLstm) finals[1].push_back(c);
  }
  x = steps > 0 ? stack(inputs, 0) : zeros({0, n, hidden_size}, {.dtype = x.dtype(), .device = x.device()});
  for (size_t i = 0; i < state.size(); ++i) {
    state[i] = stack(finals[i], 0);
    if (unbatched) state[i] = state[i].squeeze(1);
  }
  if (unbatched) return x.squeeze(1);
  return options.batch_first ? x.transpose(0, 1) : x;
}

RNN::RNN(int64_t in, int64_t hidden, RNNOptions opts) : RecurrentBase(in, hidden, opts, 1) {
  TG_CHECK(options.nonlinearity == "tanh" || options.nonlinearity == "relu",
           "RNN: nonlinearity must be \"tanh\" or \"relu\", got \"{}\"", options.nonlinearity);
}
Tensor RNN::forward(const Tensor& x) { return std::get<0>(forward(x, Tensor())); }
std::tuple<Tensor, Tensor> RNN::forward(const Tensor& x, const Tensor& h0) {
  std::vector<Tensor> state{h0};
  Tensor out = run(x, state, options.nonlinearity == "relu" ? kRnnRelu : kRnnTanh);
  return {out, state[0]};
}

GRU::GRU(int64_t in, int64_t hidden, RNNOptions opts) : RecurrentBase(in, hidden, opts, 3) {}
Tensor GRU::forward(const Tensor& x) { return std::get<0>(forward(x, Tensor())); }
std::tuple<Tensor, Tensor> GRU::forward(const Tensor& x, const Tensor& h0) {
  std::vector<Tensor> state{h0};
  Tensor out = run(x, state, kGru);
  return {out, state[0]};
}

LSTM::LSTM(int64_t in, int64_t hidden, RNNOptions opts) : RecurrentBase(in, hidden, opts, 4) {}
Tensor LSTM::forward(const Tensor& x) { return std::get<0>(forward(x, {Tensor(), Tensor()})); }
std::tuple<Tensor, std::tuple<Tensor, Tensor>> LSTM::forward(const Tensor& x,
                                                             const std::tuple<Tensor, Tensor>& hc0) {
  std::vector<Tensor> state{std::get<0>(hc0), std::get<1>(hc0)};
  Tensor out = run(x, state, kLstm);
  return {out, {state[0], state[1]}};
}

}  // namespace tg::nn
