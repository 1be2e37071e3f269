// Machine code for fused f32 groups (Note [Compiled fused groups], jit.cpp).
#pragma once

#include <cstdint>
#include <vector>

#include "backend/backend.h"

namespace tg::cpu {

// `rows` rows of n values: out[i] for i < n from the group's inputs, where in[k] points at n
// floats when bit k of the mask the code was made for is set, else at one float that stands for
// all of them; then out and each in[k] move on by row_strides[0] and row_strides[1 + k] bytes
// (read only when rows > 1).
using JitFn = void (*)(float* out, const float* const* in, int64_t n, int64_t rows,
                       const int64_t* row_strides);

// The group as AVX-512 code for this machine, made at its first use and kept for the process;
// null when there is none: a step the compiler does not cover (it covers f32 add, sub, mul, div,
// maximum, minimum, neg, abs, relu, sqrt, rsqrt and gelu in registers, and calls the vector
// kernels' 16-lane exp, log, tanh, sigmoid, log1p, erf, softplus and log_sigmoid), more values
// alive at once than registers, no AVX-512 (or TAPEGRAD_ISA asking for another table), or
// TAPEGRAD_JIT=0.
// With `sum`, each row's values are summed instead (in sum_f32's order, vec_kernels.h) and
// out[0] of the row gets (float)(0.0 + the sum): a fused sum (Note [Fused sums]).
JitFn jit_fused(const std::vector<FusedStep>& steps, uint64_t vec_inputs, size_t ninputs,
                bool sum = false);

// Tests: turn the compiled code off and on (the interpreter's bits must not change).
void set_jit_enabled(bool on);
bool jit_enabled();

}  // namespace tg::cpu
