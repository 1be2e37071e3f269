// tapegrad: differentiable tensor programs in C++20, in the PyTorch style.
//
// A first program:
//
//   #include <tapegrad/tapegrad.h>
//   #include <iostream>
//
//   int main() {
//     tg::manual_seed(0);
//     auto x = tg::randn({3, 4});                  // f32 on the CPU
//     auto w = tg::tensor({{1.0f, 2.0f}, {3.0f, 4.0f}, {5.0f, 6.0f}, {7.0f, 8.0f}});
//     auto y = tg::relu(x.matmul(w) + 1);          // broadcasting, operators, matmul
//     std::cout << y.sum({1}) << "\n";             // reductions over a list of dims
//   }
//
// Tensors are handles: copying one aliases it, and views (reshape, permute, slice, expand...)
// share storage. Ops take a defaulted source location, so every tg::Error names the caller's line.
// dtypes: kF32, kF64, kI32, kI64, kBool, promoted as in PyTorch. Devices: kCPU and cuda(i).
#pragma once

#include "tapegrad/autograd.h"
#include "tapegrad/data.h"
#include "tapegrad/device.h"
#include "tapegrad/dtype.h"
#include "tapegrad/error.h"
#include "tapegrad/format.h"
#include "tapegrad/io.h"
#include "tapegrad/nn.h"
#include "tapegrad/ops.h"
#include "tapegrad/optim.h"
#include "tapegrad/shape.h"
#include "tapegrad/tensor.h"
#include "tapegrad/trace.h"
