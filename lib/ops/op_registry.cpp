// The registry: one OpInfo per row of op_list.def.
#include "ops/op_registry.h"

#include <array>

namespace tg {
namespace {
constexpr std::array<OpInfo, kNumOps> kOps{{
#define TG_OP(kind, name, family) {OpKind::kind, name, OpFamily::family, nullptr},
#include "ops/op_list.def"
#undef TG_OP
}};
}  // namespace

const OpInfo& op_info(OpKind kind) { return kOps[static_cast<size_t>(kind)]; }
std::span<const OpInfo> all_ops() { return kOps; }

}  // namespace tg
