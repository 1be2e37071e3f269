// The registry: one OpInfo per row of op_list.def.
#include "ops/op_registry.h"

#include <array>

namespace tg {
namespace {
// Constant-initialized, so the family files' registrations (dynamic initialization) find it ready.
constinit std::array<OpInfo, kNumOps> kOps{{
#define TG_OP(kind, name, family) {OpKind::kind, name, OpFamily::family, nullptr, kSaveNone},
#include "ops/op_list.def"
#undef TG_OP
}};
}  // namespace

bool register_bprop(OpKind kind, BpropFn bprop, uint8_t save) {
  kOps[static_cast<size_t>(kind)].bprop = bprop;
  kOps[static_cast<size_t>(kind)].save = save;
  return true;
}

const OpInfo& op_info(OpKind kind) { return kOps[static_cast<size_t>(kind)]; }
std::span<const OpInfo> all_ops() { return kOps; }

}  // namespace tg
