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
static_assert(kNumOps == 63, "op_list.def changed: update this count and tests/op_table.cpp");

enum class OpFamily : uint8_t { Unary, Binary, Ternary, Reduce, Composite, Linalg, View, Index, Copy };

struct BpropArgs;  // defined with the autograd engine (next layer up)
using BpropFn = void (*)(const BpropArgs&);

struct OpInfo {
  OpKind kind;
  std::string_view name;
  OpFamily family;
  BpropFn bprop = nullptr;  // the slot the autograd layer fills, one rule per op
};

const OpInfo& op_info(OpKind kind);
std::span<const OpInfo> all_ops();
inline std::string_view op_name(OpKind kind) { return op_info(kind).name; }

}  // namespace tg
