// Note [Compiled fused groups]
// The blocked kernel (fused.cpp) runs a group step by step over a block, each step a vector loop
// that loads its operands from L1 and stores its value there. A cheap step is then bound by
// its stores (one 64-byte store takes two cycles on this machine's Zen 4 core), so LayerNorm's
// (x - mean)·rstd·γ + β costs four such passes where one would do. Here a group of f32 steps
// becomes machine code (Xbyak, AVX-512) that walks the block 16 lanes at a time with every value
// in a register: inputs broadcast over the block are loaded once, the others where they are
// read, and only the group's value is stored. The tail is the same code under a lane mask.
// The same bits as the interpreter: each step is the instruction its vector kernel uses
// (vec_kernels.cpp): vaddps, vsubps, vmulps, vdivps, vsqrtps; sqrt then a division for rsqrt;
// a sign flip or clear for neg and abs; max and min as vmaxps / vminps with NaN lanes replaced
// by x + y; relu keeping x where x > 0 or x is NaN; and gelu by calling the vector kernel's
// own 16-lane function, every live register saved around the call. No product and sum are
// joined into one fused multiply-add.
// Code is made once per (steps, which inputs are broadcast, summed or not) and kept for the
// process, in a buffer sized for the group (a few KB); W^X: the buffer is made executable only
// when the code is complete.
#include "backend/cpu/jit.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include "backend/cpu/vec_kernels.h"

#if defined(__x86_64__) && defined(TG_HAVE_XBYAK)
#define XBYAK_NO_OP_NAMES
#include <xbyak/xbyak.h>
#endif

namespace tg::cpu {
namespace {

std::atomic<bool> g_enabled{[] {
  const char* v = std::getenv("TAPEGRAD_JIT");
  return !(v != nullptr && std::string_view(v) == "0");
}()};

bool covered(const FusedStep& s, const VecKernels& vk) {
  if (s.dtype != kF32) return false;
  if (s.kind == FusedStep::Kind::Binary) {
    switch (s.op) {
      case OpKind::Add:
      case OpKind::Sub:
      case OpKind::Mul:
      case OpKind::Div:
      case OpKind::Maximum:
      case OpKind::Minimum:
        return true;
      default:
        return false;
    }
  }
  if (s.kind == FusedStep::Kind::Unary) {
    switch (s.op) {
      case OpKind::Neg:
      case OpKind::Abs:
      case OpKind::Relu:
      case OpKind::Sqrt:
      case OpKind::Rsqrt:
      case OpKind::Gelu:
        return true;
      default:
        return vk.lanes16(s.op) != nullptr;  // called
    }
  }
  return false;
}

#if defined(__x86_64__) && defined(TG_HAVE_XBYAK)

using namespace Xbyak;
using namespace Xbyak::util;

// gelu16's constants (vec_kernels.cpp, Note [Vectorized erf]), in the order inline_gelu reads them.
enum GeluConstant {
  kAbs, k30, kOne, k03, kMinusHalf, kK, kLog2e = kK + 11, kLn2Hi, kLn2Lo, kP, kHalf = kP + 6,
  kGeluConstants
};
const float kGelu[kGeluConstants] = {
    std::bit_cast<float>(0x7fffffffu), 30.0f, 1.0f, 0.3f, -0.5f,
    // K, highest degree first
    -9.328864515e-03f, 3.188470751e-02f, -1.604540832e-02f, -4.890748486e-02f, 3.437221795e-02f,
    1.101758610e-02f, 6.186449900e-02f, 8.683051914e-02f, 1.089477837e-01f, 1.196817458e-01f,
    1.196826920e-01f,
    1.44269504088896341f, 0.693359375f, -2.12194440e-4f,
    // the exponential's polynomial, highest degree first
    1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f,
    5.0000001201e-1f,
    0.5f};

class Compiler : public CodeGenerator {
 public:
  Compiler(const std::vector<FusedStep>& steps, uint64_t vec, size_t nin, bool sum,
           const VecKernels& vk, size_t bytes)
      : CodeGenerator(bytes, DontSetProtectRWE), steps_(steps), vec_(vec), nin_(nin),
        sum_(sum), gelu_(vk.gelu16), vk_(vk) {
    last_use_.assign(steps.size(), -1);
    for (size_t i = 0; i < steps.size(); ++i) {
      const FusedStep& s = steps[i];
      for (int32_t r : {s.a, s.kind == FusedStep::Kind::Binary ? s.b : s.a})
        if (r >= 0) last_use_[static_cast<size_t>(r)] = static_cast<int>(i);
    }
    emit();
  }
  bool ok() const { return ok_; }
  JitFn fn() const { return reinterpret_cast<JitFn>(const_cast<uint8_t*>(getCode())); }

 private:
  static constexpr int kTempA = 30, kTempB = 0, kResult = 31;  // zmm0 also carries calls
  static constexpr int kSpill = 64 * 32;                        // a slot per register

  bool vec_input(size_t k) const { return (vec_ >> k) & 1; }

  // Registers 1..29 for broadcast inputs and step values.
  int take() {
    for (int r = 1; r < 30; ++r)
      if (!used_[r]) {
        used_[r] = true;
        return r;
      }
    ok_ = false;
    return 1;
  }

  // The frame: spill slots, then the inputs' pointers (advanced row by row), the rows left and
  // the row strides' address.
  static constexpr int kPtrs = kSpill, kRows = kSpill + 8 * 64, kStrides = kRows + 8;

  void emit() {
    push(rbx);
    push(rbp);
    push(r12);
    push(r13);
    push(r14);
    push(r15);
    mov(rbp, rsp);
    sub(rsp, kStrides + 8 + 64);
    and_(rsp, -64);
    mov(r12, rdi);  // out
    mov(r14, rdx);  // n
    mov(ptr[rsp + kRows], rcx);
    mov(ptr[rsp + kStrides], r8);
    for (size_t k = 0; k < nin_; ++k) {
      mov(rax, ptr[rsi + 8 * k]);
      mov(ptr[rsp + kPtrs + 8 * k], rax);
    }
    bcast_.assign(nin_, -1);
    for (size_t k = 0; k < nin_; ++k)
      if (!vec_input(k)) bcast_[k] = take();
    if (sum_)
      for (int r : {kAcc0, kAcc0 + 1, kAcc0 + 2, kAcc0 + 3, kPair0, kPair1}) used_[r] = true;
    std::copy(std::begin(used_), std::end(used_), std::begin(reserved_));
    Label row, loop, tail, row_end, done;
    L(row);
    for (size_t k = 0; k < nin_; ++k) {
      if (vec_input(k)) continue;
      mov(rax, ptr[rsp + kPtrs + 8 * k]);
      vbroadcastss(Zmm(bcast_[k]), dword[rax]);
    }
    xor_(r15, r15);  // i
    if (sum_) {
      row_sum();
    } else {
      L(loop);
      mov(rax, r14);
      sub(rax, r15);
      cmp(rax, 16);
      jl(tail, T_NEAR);
      store(value(false, 0), false);
      add(r15, 16);
      jmp(loop, T_NEAR);
      L(tail);
      cmp(r15, r14);
      jge(row_end, T_NEAR);
      set_mask(r14);
      store(value(true, 0), true);
    }
    L(row_end);
    dec(qword[rsp + kRows]);
    jz(done, T_NEAR);
    mov(rax, ptr[rsp + kStrides]);
    add(r12, ptr[rax]);
    for (size_t k = 0; k < nin_; ++k) {
      mov(rcx, ptr[rax + 8 * (k + 1)]);
      add(ptr[rsp + kPtrs + 8 * k], rcx);
    }
    jmp(row, T_NEAR);
    L(done);
    mov(rsp, rbp);
    pop(r15);
    pop(r14);
    pop(r13);
    pop(r12);
    pop(rbp);
    pop(rbx);
    vzeroupper();
    ret();
  }

  // The register holding operand r for this step: a value, a broadcast input, or a vector
  // input loaded into `temp`.
  Zmm operand(int32_t r, int temp, bool masked) {
    if (r >= 0) return Zmm(reg_[static_cast<size_t>(r)]);
    auto k = static_cast<size_t>(-r - 1);
    if (!vec_input(k)) return Zmm(bcast_[k]);
    mov(rax, ptr[rsp + kPtrs + 8 * k]);
    if (masked)
      vmovups(Zmm(temp) | k1 | T_z, ptr[rax + r15 * 4 + 4 * offset_]);
    else
      vmovups(Zmm(temp), ptr[rax + r15 * 4 + 4 * offset_]);
    return Zmm(temp);
  }

  // k1 (and ebx, which outlives calls) = the lanes below `end` - r15 (less than 16).
  void set_mask(const Reg64& end) {
    mov(rcx, end);
    sub(rcx, r15);
    mov(eax, 1);
    shl(eax, cl);
    sub(eax, 1);
    mov(ebx, eax);
    kmovw(k1, eax);
  }

  void store(const Zmm& v, bool masked) {
    if (masked)
      vmovups(ptr[r12 + r15 * 4] | k1, v);
    else
      vmovups(ptr[r12 + r15 * 4], v);
  }

  // Note [Compiled fused groups]: a fused sum adds the row's values in sum_f32's order
  // (vec_kernels.cpp): 32 f64 sums (four registers of 8), fed by f32 pairwise quads per 128
  // values, then singles per 32, then the rest (lanes past the end zeroed, which adds +0); then
  // the tree; then (float)(0.0 + sum) into the row's out element.
  static constexpr int kAcc0 = 26, kPair0 = 24, kPair1 = 25;

  // acc[lo..lo+15] += v: its low 8 lanes into register kAcc0 + lo / 8, the high 8 into the next.
  void accumulate(const Zmm& v, int lo) {
    const Zmm a(kAcc0 + lo / 8), b(kAcc0 + lo / 8 + 1);
    vcvtps2pd(Zmm(kTempB), Ymm(v.getIdx()));
    vaddpd(a, a, Zmm(kTempB));
    vextractf64x4(Ymm(kTempA), v, 1);
    vcvtps2pd(Zmm(kTempB), Ymm(kTempA));
    vaddpd(b, b, Zmm(kTempB));
  }

  void row_sum() {
    for (int r = 0; r < 4; ++r) vpxord(Zmm(kAcc0 + r), Zmm(kAcc0 + r), Zmm(kAcc0 + r));
    Label by128, by32, rest, low_only, reduce;
    const Zmm p0(kPair0), p1(kPair1);
    L(by128);
    mov(rax, r14);
    sub(rax, r15);
    cmp(rax, 128);
    jl(by32, T_NEAR);
    for (int half = 0; half < 2; ++half) {  // lanes 0-15, then 16-31
      int o = 16 * half;
      vmovaps(p0, value(false, o));
      vaddps(p0, p0, value(false, o + 32));
      vmovaps(p1, value(false, o + 64));
      vaddps(p1, p1, value(false, o + 96));
      vaddps(p0, p0, p1);
      accumulate(p0, o);
    }
    add(r15, 128);
    jmp(by128, T_NEAR);
    L(by32);
    mov(rax, r14);
    sub(rax, r15);
    cmp(rax, 32);
    jl(rest, T_NEAR);
    vmovaps(p0, value(false, 0));
    accumulate(p0, 0);
    vmovaps(p0, value(false, 16));
    accumulate(p0, 16);
    add(r15, 32);
    jmp(by32, T_NEAR);
    L(rest);
    mov(rax, r14);
    sub(rax, r15);
    jz(reduce, T_NEAR);
    cmp(rax, 16);
    jl(low_only, T_NEAR);
    vmovaps(p0, value(false, 0));
    accumulate(p0, 0);
    add(r15, 16);  // the lanes 16..31 of acc from here on
    mov(rax, r14);
    sub(rax, r15);
    jz(reduce, T_NEAR);
    set_mask(r14);
    vmovaps(p0 | k1 | T_z, value(true, 0));
    accumulate(p0, 16);
    jmp(reduce, T_NEAR);
    L(low_only);
    set_mask(r14);
    vmovaps(p0 | k1 | T_z, value(true, 0));
    accumulate(p0, 0);
    L(reduce);
    const Zmm a0(kAcc0), a1(kAcc0 + 1), a2(kAcc0 + 2), a3(kAcc0 + 3);
    vaddpd(a0, a0, a2);
    vaddpd(a1, a1, a3);
    vaddpd(a0, a0, a1);
    vextractf64x4(Ymm(kTempA), a0, 1);
    vaddpd(Ymm(kTempB), Ymm(kAcc0), Ymm(kTempA));  // acc[k] += acc[k + 4]
    vextractf64x2(Xmm(kTempA), Ymm(kTempB), 1);
    vaddpd(Xmm(kTempB), Xmm(kTempB), Xmm(kTempA));  // acc[k] += acc[k + 2]
    vpermilpd(Xmm(kTempA), Xmm(kTempB), 1);
    vaddsd(Xmm(kTempB), Xmm(kTempB), Xmm(kTempA));  // acc[0] += acc[1]
    vpxord(Xmm(kTempA), Xmm(kTempA), Xmm(kTempA));
    vaddsd(Xmm(kTempB), Xmm(kTempA), Xmm(kTempB));  // 0.0 + sum, as reduce() folds it
    vcvtsd2ss(Xmm(kTempB), Xmm(kTempB), Xmm(kTempB));
    vmovss(ptr[r12], Xmm(kTempB));
  }

  // The group's value for the 16 elements at r15 + offset, in kResult (lanes outside k1 hold
  // anything when masked).
  Zmm value(bool masked, int offset) {
    offset_ = offset;
    body(masked);
    return Zmm(kResult);
  }

  void body(bool masked) {
    std::copy(std::begin(reserved_), std::end(reserved_), std::begin(used_));
    reg_.assign(steps_.size(), -1);
    const Zmm out(kResult);
    for (size_t i = 0; i < steps_.size() && ok_; ++i) {
      const FusedStep& s = steps_[i];
      const bool binary = s.kind == FusedStep::Kind::Binary;
      const Zmm a = operand(s.a, kTempA, masked);
      const Zmm b = binary ? (s.b == s.a ? a : operand(s.b, kTempB, masked)) : a;
      if (binary) {
        switch (s.op) {
          case OpKind::Add: vaddps(out, a, b); break;
          case OpKind::Sub: vsubps(out, a, b); break;
          case OpKind::Mul: vmulps(out, a, b); break;
          case OpKind::Div: vdivps(out, a, b); break;
          case OpKind::Maximum:
          case OpKind::Minimum:
            if (s.op == OpKind::Maximum)
              vmaxps(out, a, b);  // a > b ? a : b
            else
              vminps(out, a, b);  // a < b ? a : b
            vcmpps(k2, a, b, 3);  // unordered: either is NaN
            vaddps(out | k2, a, b);
            break;
          default: ok_ = false; break;
        }
      } else {
        switch (s.op) {
          case OpKind::Neg:
            mov(eax, 0x80000000u);
            vpbroadcastd(out, eax);
            vpxord(out, out, a);
            break;
          case OpKind::Abs:
            mov(eax, 0x7fffffffu);
            vpbroadcastd(out, eax);
            vpandd(out, out, a);
            break;
          case OpKind::Relu:
            vpxord(out, out, out);
            vcmpps(k2, a, out, 30);  // a > 0, ordered
            vcmpps(k3, a, a, 3);     // a is NaN
            korw(k2, k2, k3);
            vmovaps(out | k2, a);
            break;
          case OpKind::Sqrt: vsqrtps(out, a); break;
          case OpKind::Rsqrt:
            vsqrtps(out, a);
            mov(eax, 0x3f800000u);  // 1.0f
            vpbroadcastd(Zmm(kTempB), eax);
            vdivps(out, Zmm(kTempB), out);
            break;
          case OpKind::Gelu:
            if (!inline_gelu(a)) call_lanes16(gelu_, a, masked);
            break;
          default:
            if (const void* f = vk_.lanes16(s.op))
              call_lanes16(f, a, masked);
            else
              ok_ = false;
            break;
        }
      }
      // Operands read for the last time give their registers back; the value takes one.
      for (int32_t r : {s.a, binary ? s.b : s.a}) {
        if (r < 0) continue;
        auto v = static_cast<size_t>(r);
        if (last_use_[v] == static_cast<int>(i) && reg_[v] >= 0) {
          used_[reg_[v]] = false;
          reg_[v] = -1;
        }
      }
      if (i + 1 < steps_.size()) {
        if (last_use_[i] < 0) continue;  // never read (dead code the passes left): dropped
        reg_[i] = take();
        vmovaps(Zmm(reg_[i]), out);
      }
    }
  }

  // gelu16's instructions (vec_kernels.cpp, as the compiler emits them: checked bit for bit by
  // tests/test_jit.cpp) on nine free registers, its constants read as {1to16} broadcasts; false
  // when nine are not free (then it is called).
  bool inline_gelu(const Zmm& x) {
    int free = 0;
    for (int r = 1; r < 30; ++r) free += !used_[r];
    if (free < 9) return false;
    int t_ = take(), hi_ = take(), lo_ = take(), u_ = take(), one_ = take(), k_ = take(),
        n_ = take(), p_ = take(), r2_ = take();
    const Zmm t(t_), hi(hi_), lo(lo_), u(u_), one(one_), k(k_), nn(n_), p(p_), r2(r2_);
    auto c = [&](int i) { return zword_b[rax + 4 * i]; };
    mov(rax, reinterpret_cast<uint64_t>(kGelu));
    vpandd(t, x, c(kAbs));
    vminps(t, t, c(k30));
    vmulps(hi, t, t);
    vmovaps(lo, t);
    vfmsub132ps(lo, hi, t);  // lo = t·t - hi, exactly
    vbroadcastss(one, dword[rax + 4 * kOne]);
    vmovaps(u, t);
    vfmadd132ps(u, one, c(k03));
    vdivps(u, one, u);  // u = 1 / (1 + 0.3t)
    vmulps(hi, hi, c(kMinusHalf));  // a = -hi/2
    vbroadcastss(k, dword[rax + 4 * kK]);
    for (int i = 1; i <= 10; ++i) vfmadd213ps(k, u, c(kK + i));
    vmulps(nn, hi, c(kLog2e));
    vrndscaleps(nn, nn, 8);
    vfnmadd231ps(hi, nn, c(kLn2Hi));
    vfnmadd231ps(hi, nn, c(kLn2Lo));  // r
    vbroadcastss(p, dword[rax + 4 * kP]);
    for (int i = 1; i <= 5; ++i) vfmadd213ps(p, hi, c(kP + i));
    vmulps(r2, hi, hi);
    vfmadd132ps(p, hi, r2);
    vaddps(p, p, one);
    vscalefps(p, p, nn);  // e^(-hi/2)
    vmulps(lo, lo, c(kHalf));
    vfnmadd132ps(p, p, lo);  // e·(1 - lo/2)
    vmulps(k, k, u);
    vmulps(k, k, p);  // q
    vsubps(one, one, k);
    vpxord(t, t, t);
    vcmpps(k2, x, t, 17);  // x < 0, ordered
    vmovaps(one | k2, k);
    vmulps(Zmm(kResult), x, one);
    for (int r : {t_, hi_, lo_, u_, one_, k_, n_, p_, r2_}) used_[r] = false;
    return true;
  }

  // A 16-lane function of vec_kernels.cpp (gelu16, exp16...) takes and returns zmm0 and may
  // change every vector and mask register: what is alive is saved around it.
  void call_lanes16(const void* fn, const Zmm& a, bool masked) {
    if (fn == nullptr) {
      ok_ = false;
      return;
    }
    std::vector<int> live;
    for (int r = 1; r < 30; ++r)
      if (used_[r]) live.push_back(r);
    for (int r : live) vmovaps(ptr[rsp + 64 * r], Zmm(r));
    vmovaps(zmm0, a);
    mov(rax, reinterpret_cast<uint64_t>(fn));
    call(rax);
    vmovaps(Zmm(kResult), zmm0);
    for (int r : live) vmovaps(Zmm(r), ptr[rsp + 64 * r]);
    if (masked) kmovw(k1, ebx);
  }

  std::vector<FusedStep> steps_;
  uint64_t vec_;
  size_t nin_;
  bool sum_;
  const void* gelu_;
  const VecKernels& vk_;
  bool reserved_[32] = {};
  int offset_ = 0;  // elements past r15 that value() reads  // for the whole function: broadcast inputs, a sum's registers
  bool ok_ = true;
  bool used_[32] = {};
  std::vector<int> last_use_, reg_, bcast_;
};

std::string key_of(const std::vector<FusedStep>& steps, uint64_t vec, size_t nin, bool sum) {
  std::string key;
  key.reserve(steps.size() * 12 + 16);
  auto put = [&](const void* p, size_t n) { key.append(static_cast<const char*>(p), n); };
  put(&sum, sizeof sum);
  put(&vec, sizeof vec);
  put(&nin, sizeof nin);
  for (const FusedStep& s : steps) {
    put(&s.kind, sizeof s.kind);
    put(&s.op, sizeof s.op);
    put(&s.a, sizeof s.a);
    put(&s.b, sizeof s.b);
  }
  return key;
}

#endif

}  // namespace

void set_jit_enabled(bool on) { g_enabled = on; }
bool jit_enabled() { return g_enabled; }

JitFn jit_fused(const std::vector<FusedStep>& steps, uint64_t vec_inputs, size_t ninputs,
                bool sum) {
#if defined(__x86_64__) && defined(TG_HAVE_XBYAK)
  if (!g_enabled || steps.empty() || ninputs > 63) return nullptr;
  const VecKernels& vk = vec_kernels();
  if (vk.gelu16 == nullptr) return nullptr;  // not the AVX-512 table
  for (const FusedStep& s : steps)
    if (!covered(s, vk)) return nullptr;
  static std::mutex mu;
  static std::unordered_map<std::string, std::unique_ptr<Compiler>> cache;
  std::string key = key_of(steps, vec_inputs, ninputs, sum);
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it == cache.end()) {
    std::unique_ptr<Compiler> c;
    // The buffer is sized for the group (the body is emitted twice, or 13 times summing, at
    // most about 1 KB per step each time; code a page or two), four times larger if that was
    // short, up to 1 MB.
    for (size_t bytes = 4096 + 1024 * steps.size() * (sum ? 13 : 2); bytes <= (size_t{1} << 20);
         bytes *= 4) {
      try {
        auto made = std::make_unique<Compiler>(steps, vec_inputs, ninputs, sum, vk,
                                               (bytes + 4095) / 4096 * 4096);
        if (made->ok() && made->setProtectModeRE(false)) c = std::move(made);
        break;
      } catch (const Xbyak::Error& e) {
        if (static_cast<int>(e) != Xbyak::ERR_CODE_IS_TOO_BIG) break;  // else a larger buffer
      } catch (const std::exception&) {
        break;  // Xbyak could not make it: the interpreter runs the group
      }
    }
    it = cache.emplace(std::move(key), std::move(c)).first;
  }
  return it->second ? it->second->fn() : nullptr;
#else
  (void)steps;
  (void)vec_inputs;
  (void)ninputs;
  (void)sum;
  return nullptr;
#endif
}

}  // namespace tg::cpu
