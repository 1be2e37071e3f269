// OpKind and the op registry, generated from op_list.def.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

namespace tg {

enum class OpKind : uint16_t {
#define TG_OP(kind, name, family) kind,
#include "ops/op_list.def"
#undef TG_OP
};

inline constexpr int kNumOps = 0
#define TG_OP(kind, name, family) +1
#include "ops/op_list.def"
#undef TG_OP
    ;
static_assert(kNumOps == 69, "op_list.def changed: update this count and tests/op_table.cpp");

enum class OpFamily : uint8_t { Unary, Binary, Ternary, Reduce, Composite, Linalg, View, Index, Window, Copy };

class BpropCtx;  // lib/autograd/node.h: the node, its saved tensors, the incoming gradient
using BpropFn = void (*)(BpropCtx& ctx);

// What a node keeps for its bprop: bit i for input i (i < 7), kSaveResult for the output.
enum SaveMask : uint8_t {
  kSaveNone = 0,
  kSaveIn0 = 1,
  kSaveIn1 = 2,
  kSaveIn2 = 4,
  kSaveInputs = 0x7f,
  kSaveResult = 0x80,
};

struct OpInfo {
  OpKind kind;
  std::string_view name;
  OpFamily family;
  BpropFn bprop = nullptr;  // filled by the op's family file; null: not differentiable
  uint8_t save = kSaveNone;
};

// Called once per op by its family file (see the registrations at the end of unary.cpp ...).
bool register_bprop(OpKind kind, BpropFn bprop, uint8_t save);

const OpInfo& op_info(OpKind kind);
std::span<const OpInfo> all_ops();
inline std::string_view op_name(OpKind kind) { return op_info(kind).name; }

}  // namespace tg
