// tg::nn::init: fill a tensor in place (without recording) from PyTorch's initial distributions.
// Fans are PyTorch's: fan_in = size(1)·receptive field, fan_out = size(0)·receptive field.
#pragma once

#include <string>

#include "tapegrad/autograd.h"
#include "tapegrad/ops.h"

namespace tg::nn::init {

enum class FanMode { FanIn, FanOut };

// The recommended gain for a nonlinearity: "linear", "sigmoid", "tanh" (5/3), "relu" (√2),
// "leaky_relu" (√(2/(1+a²))), "selu" (3/4).
double calculate_gain(const std::string& nonlinearity, double param = 0.01);

Tensor& uniform_(Tensor& t, double a = 0, double b = 1, Loc loc = Loc::current());
Tensor& normal_(Tensor& t, double mean = 0, double std = 1, Loc loc = Loc::current());
Tensor& constant_(Tensor& t, double value, Loc loc = Loc::current());
Tensor& zeros_(Tensor& t, Loc loc = Loc::current());
Tensor& ones_(Tensor& t, Loc loc = Loc::current());
// U(-b, b) with b = gain·√(6/(fan_in + fan_out)).
Tensor& xavier_uniform_(Tensor& t, double gain = 1, Loc loc = Loc::current());
// N(0, gain·√(2/(fan_in + fan_out))).
Tensor& xavier_normal_(Tensor& t, double gain = 1, Loc loc = Loc::current());
// U(-b, b) with b = gain·√(3/fan), gain = calculate_gain(nonlinearity, a).
Tensor& kaiming_uniform_(Tensor& t, double a = 0, FanMode mode = FanMode::FanIn,
                         const std::string& nonlinearity = "leaky_relu", Loc loc = Loc::current());
Tensor& kaiming_normal_(Tensor& t, double a = 0, FanMode mode = FanMode::FanIn,
                        const std::string& nonlinearity = "leaky_relu", Loc loc = Loc::current());

}  // namespace tg::nn::init
