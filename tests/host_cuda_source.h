// CUDA device code as host C++ (Note [CUDA code on the host]): the runtime that defines CUDA's
// names for the host, and the rewrite of kernel launches. No test framework here: the emulated
// GPU's generator (tests/emu/) uses it too.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

// Note [CUDA code on the host]
// Kernel source (a generated fused kernel, or kernels.cu itself) is C++ but for a few CUDA names.
// Defined here for the host, it compiles with the host's compiler into a shared library that the
// test loads and calls. A launch runs the grid's blocks one after another; a block's threads are
// fibers of the calling thread, resumed in turn: a thread runs until it waits (at
// __syncthreads, or at a shuffle, which goes through its warp's slots between two waits of the
// warp's 32 threads), and a wait ends when all its threads have arrived. So every interleaving
// the code allows between waits is one a GPU could run, and a block whose threads disagree on
// the waits they make (which would hang a GPU) is found at once, in a round in which no thread
// moves: the library is then marked stuck and the test fails instead of hanging.
// What this checks: everything the code computes from its indices (geometry, grid-stride loops,
// the combining trees, where results land), every expression's semantics for every dtype. What
// it cannot: CUDA's math library (the host's libm stands in, so floats compare within a few
// ulps), the memory model and timing. The runtime and cuBLAS around the kernels are the emulated
// GPU's part (Note [An emulated GPU], tests/emu/runtime.cpp), which compiles kernels.cu with
// this runtime too, its launches queued on their streams.
namespace tghost {

// Defined before the CUDA headers, which then keep these.
inline constexpr const char* kRuntime = R"tg(#define __host__
#define __device__
#define __global__
// Shared memory: statics, each filled with 0xFF bytes (NaN in every float) when a block first
// reaches its declaration, as a GPU's block begins with whatever its shared memory held: a read
// before the block wrote shows instead of reading the last block's values. host_shared() puts
// the fill after each declaration (a section would miss a template kernel's arrays: g++ puts
// those in sections of their own).
#define __shared__ static
#define __launch_bounds__(n)
#include <cuda_runtime_api.h>
// A conditional node's value, set by a kernel (the emulated GPU's runtime defines the hook).
extern "C" __attribute__((weak)) void tgemu_set_conditional(unsigned long long handle,
                                                           unsigned value);
static inline void cudaGraphSetConditional(cudaGraphConditionalHandle handle, unsigned value) {
  if (tgemu_set_conditional != nullptr) tgemu_set_conditional(handle, value);
}
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#include <cstdint>
#include <string>
#include <vector>
static dim3 gridDim, blockDim, blockIdx, threadIdx;
static unsigned tg_tid;  // threadIdx as one number
static bool tg_stuck = false;
// A fiber's stack: allocated once and never cleared, so that only the pages a thread touches are
// ever mapped (a block's 1024 cleared stacks would be 256 MB of writes).
struct tg_stack {
  char* base = nullptr;
  size_t size = 256 * 1024;
};
// A block's threads are fibers of the calling thread, resumed in turn by tg_run_block. On
// x86-64 a switch saves the callee-saved registers on the fiber's stack and swaps stack pointers
// (swapcontext would also make two system calls for the signal mask, at every switch).
#if defined(__x86_64__)
extern "C" void tg_switch(void** save_sp, void* load_sp);
asm(R"(.text
.globl tg_switch
.hidden tg_switch
.type tg_switch, @function
tg_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size tg_switch, .-tg_switch
)");
struct tg_context {
  void* sp = nullptr;
};
static void tg_swap(tg_context& from, tg_context& to) { tg_switch(&from.sp, to.sp); }
static void tg_start(tg_context& c, tg_stack& stack, void (*entry)()) {
  auto top = reinterpret_cast<uintptr_t>(stack.base + stack.size) & ~uintptr_t{15};
  auto* sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;                               // where entry's return address would be
  *--sp = reinterpret_cast<void*>(entry);        // tg_switch's ret goes there
  for (int r = 0; r < 6; ++r) *--sp = nullptr;  // the registers it pops
  c.sp = sp;
}
#else
struct tg_context {
  ucontext_t uc;
};
static void tg_swap(tg_context& from, tg_context& to) { swapcontext(&from.uc, &to.uc); }
static void tg_start(tg_context& c, tg_stack& stack, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack.base;
  c.uc.uc_stack.ss_size = stack.size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
#endif
struct tg_fiber {
  tg_context context;
  tg_stack stack;
  bool done = false;
};
static std::vector<tg_fiber> tg_fibers;
// TGEMU_THREAD_ORDER (read at each launch): a block's threads, and a grid's blocks, run first
// first by default; last first with "reverse"; with "shuffle:S" (S a number, 1 where left out) in
// another order at every turn, a warp at a time as far as it goes (tg_run_block), drawn from the
// seed S afresh at each launch, so that a launch runs the same way whatever ran before it. Code whose result depends
// on which thread runs first between two waits (a missing __syncthreads, a block reading what
// another writes) gives another result then, as it may on a GPU: the emulated suite runs each way.
// An order is i -> (a·i + c) mod n with a prime to n: first first is (1, 0), last first is
// (n - 1, n - 1), a shuffle draws a and c.
static int tg_order = 0;  // 0 first first, 1 last first, 2 shuffled
static unsigned long long tg_draws = 0;
static unsigned long long tg_draw() {  // splitmix64
  unsigned long long z = (tg_draws += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}
struct tg_turns {
  unsigned long long a = 1, c = 0, n = 1;
  unsigned long long at(unsigned long long i) const {
    return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * i + c) % n);
  }
};
static tg_turns tg_turns_of(unsigned long long n) {
  tg_turns t;
  t.n = n == 0 ? 1 : n;
  if (t.n == 1 || tg_order == 0) return t;
  if (tg_order == 1) {
    t.a = t.c = t.n - 1;
    return t;
  }
  auto gcd = [](unsigned long long x, unsigned long long y) {
    while (y != 0) {
      const unsigned long long r = x % y;
      x = y, y = r;
    }
    return x;
  };
  do t.a = 1 + tg_draw() % (t.n - 1);
  while (gcd(t.a, t.n) != 1);
  t.c = tg_draw() % t.n;
  return t;
}
static void tg_read_order() {
  const char* v = getenv("TGEMU_THREAD_ORDER");
  const std::string now = v != nullptr ? v : "";
  tg_order = now == "reverse" ? 1 : now.rfind("shuffle", 0) == 0 ? 2 : 0;
  tg_draws = now.size() > 8 && now[7] == ':' ? strtoull(now.c_str() + 8, nullptr, 10) : 1;
}
static tg_context tg_scheduler;
static tg_fiber* tg_current = nullptr;
static unsigned long long tg_progress = 0;  // arrivals and ends, to tell a stuck block
static void (*tg_body)(void*) = nullptr;
static void* tg_body_arg = nullptr;
static void tg_yield() { tg_swap(tg_current->context, tg_scheduler); }
struct tg_barrier {
  explicit tg_barrier(unsigned n) : n(n) {}
  void wait() {
    ++tg_progress;
    const unsigned long long gen = generation;
    if (++arrived == n) {
      arrived = 0;
      ++generation;
      return;
    }
    while (generation == gen) tg_yield();
  }
  unsigned n, arrived = 0;
  unsigned long long generation = 0;
};
static tg_barrier* tg_block_barrier;
static std::vector<tg_barrier>* tg_warp_barriers;
static unsigned long long tg_lane_slots[1024];
static inline void __syncthreads() { tg_block_barrier->wait(); }
template <class T>
static T tg_exchange(T v, unsigned from_lane, bool inside) {
  const unsigned t = tg_tid;
  tg_barrier& warp = (*tg_warp_barriers)[t / 32];
  unsigned long long bits = 0;
  memcpy(&bits, &v, sizeof v);
  tg_lane_slots[t] = bits;
  warp.wait();
  T r = v;
  if (inside) memcpy(&r, &tg_lane_slots[tg_tid / 32 * 32 + from_lane], sizeof r);
  warp.wait();
  return r;
}
template <class T>
static T __shfl_down_sync(unsigned, T v, int off) {
  const unsigned lane = tg_tid % 32;
  return tg_exchange(v, lane + off, lane + off < 32);
}
template <class T>
static T __shfl_sync(unsigned, T v, int src) {
  return tg_exchange(v, static_cast<unsigned>(src), true);
}
static inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  const unsigned long long old = *p;
  *p = old + v;
  return old;
}
static inline unsigned atomicAdd(unsigned* p, unsigned v) {
  const unsigned old = *p;
  *p = old + v;
  return old;
}
static inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}
static inline double __longlong_as_double(long long v) {
  double d;
  memcpy(&d, &v, sizeof d);
  return d;
}
static inline float4 make_float4(float x, float y, float z, float w) {
  float4 r;
  r.x = x, r.y = y, r.z = z, r.w = w;
  return r;
}
static void tg_fiber_main() {
  tg_body(tg_body_arg);
  tg_current->done = true;
  ++tg_progress;
  tg_swap(tg_current->context, tg_scheduler);  // never resumed
  __builtin_trap();
}
// The shared arrays this block has reached (host_shared()): each filled once per block, by the
// first thread to reach it, before any thread can write it.
static void* tg_shared_seen[64];
static unsigned tg_shared_count = 0;
static inline void tg_shared_fill(void* p, size_t bytes) {
  for (unsigned i = 0; i < tg_shared_count; ++i)
    if (tg_shared_seen[i] == p) return;
  if (tg_shared_count == 64) __builtin_trap();  // more shared arrays than any kernel here has
  tg_shared_seen[tg_shared_count++] = p;
  memset(p, 0xFF, bytes);
}
// One block: every thread from the start, in turn, until all are done; a round in which none
// arrives anywhere nor ends is a block stuck (on a GPU: hung), which marks the library stuck.
static void tg_run_block(unsigned n) {
  tg_shared_count = 0;
  if (tg_fibers.size() < n) tg_fibers.resize(n);
  for (unsigned t = 0; t < n; ++t) {
    tg_fiber& f = tg_fibers[t];
    if (f.stack.base == nullptr) f.stack.base = static_cast<char*>(malloc(f.stack.size));
    f.done = false;
    tg_start(f.context, f.stack, tg_fiber_main);
  }
  // A round runs each live thread once, in the launch's order. Shuffled, a round runs the warps
  // one at a time in a drawn order, each as far as it goes (its threads in turn, again and again,
  // until none of them moves: all wait for another warp, or are done), so that a warp gets many
  // waits ahead of the others, as on a GPU, where warps are scheduled apart. A round in which
  // none moves is a block stuck.
  const unsigned nwarps = (n + 31) / 32;
  for (;;) {
    bool live = false;
    const unsigned long long before = tg_progress;
    auto run = [&](unsigned t) {
      tg_fiber& f = tg_fibers[t];
      if (f.done) return;
      live = true;
      tg_current = &f;
      tg_tid = t;
      threadIdx = dim3(t % blockDim.x, t / blockDim.x % blockDim.y, t / (blockDim.x * blockDim.y));
      tg_swap(tg_scheduler, f.context);
    };
    if (tg_order != 2) {
      const tg_turns turns = tg_turns_of(n);
      for (unsigned i = 0; i < n; ++i) run(static_cast<unsigned>(turns.at(i)));
    } else {
      const tg_turns warps = tg_turns_of(nwarps);
      for (unsigned w = 0; w < nwarps; ++w) {
        const unsigned first = static_cast<unsigned>(warps.at(w)) * 32;
        const unsigned size = n - first < 32 ? n - first : 32;
        for (unsigned long long moved = ~0ULL; moved != tg_progress;) {
          moved = tg_progress;
          const tg_turns lanes = tg_turns_of(size);
          for (unsigned i = 0; i < size; ++i) run(first + static_cast<unsigned>(lanes.at(i)));
        }
      }
    }
    if (!live) return;
    if (tg_progress == before) {
      tg_stuck = true;
      return;
    }
  }
}
template <class F>
static void tg_host_launch(dim3 grid, dim3 block, F f) {
  if (tg_stuck) return;
  tg_read_order();
  gridDim = grid;
  blockDim = block;
  const unsigned n = block.x * block.y * block.z;
  tg_barrier whole(n);
  std::vector<tg_barrier> warps((n + 31) / 32, tg_barrier(32));
  tg_block_barrier = &whole;
  tg_warp_barriers = &warps;
  tg_body = [](void* arg) { (*static_cast<F*>(arg))(); };
  tg_body_arg = &f;
  const unsigned long long blocks = 1ULL * grid.x * grid.y * grid.z;
  const tg_turns turns = tg_turns_of(blocks);
  for (unsigned long long i = 0; i < blocks && !tg_stuck; ++i) {
    const unsigned long long b = turns.at(i);
    blockIdx = dim3(static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                    static_cast<unsigned>(b / (1ULL * grid.x * grid.y)));
    tg_run_block(n);
  }
}
extern "C" __attribute__((visibility("default"))) bool tg_host_stuck() { return tg_stuck; }
)tg";

// CUB's DeviceRadixSort::SortPairs as kernels.cu calls it: a stable sort of the pairs by the
// keys' bits [begin_bit, end_bit).
// (where the unit defines TG_CUB_RUN(stream, work), as the emulated GPU's does to queue it on the
// stream; else it runs at once).
inline constexpr const char* kCubShim = R"(#include <algorithm>
#include <numeric>
#ifndef TG_CUB_RUN
#define TG_CUB_RUN(stream, work) ((work)(), cudaSuccess)
#endif
namespace cub {
struct DeviceRadixSort {
  template <class K, class V, class N>
  static cudaError_t SortPairs(void* temp, size_t& bytes, const K* keys_in, K* keys_out,
                               const V* values_in, V* values_out, N n, int begin_bit, int end_bit,
                               cudaStream_t stream = nullptr) {
    if (temp == nullptr) {
      bytes = 256;
      return cudaSuccess;
    }
    return TG_CUB_RUN(stream, ([=] {
      const unsigned long long mask =
          (end_bit >= 64 ? ~0ULL : ((1ULL << end_bit) - 1)) & ~((1ULL << begin_bit) - 1);
      std::vector<long long> order(static_cast<size_t>(n));
      std::iota(order.begin(), order.end(), 0LL);
      std::stable_sort(order.begin(), order.end(), [&](long long a, long long b) {
        return (keys_in[a] & mask) < (keys_in[b] & mask);
      });
      for (size_t i = 0; i < order.size(); ++i) {
        keys_out[i] = keys_in[order[i]];
        values_out[i] = values_in[order[i]];
      }
    }));
  }
};
}  // namespace cub
)";

// Every `k<<<a, b, c, d>>>(args)` of src → `tg_host_launch(a, b, [&] { k(args); })`, or with
// `deferred` (the emulated GPU, tests/emu/) → `tg_emu_launch("k", a, b, d, [=] { k(args); })`,
// which queues the launch on stream d with its arguments copied, as a launch copies them.
inline std::string host_launches(std::string src, bool deferred = false) {
  for (size_t at = src.find("<<<"); at != std::string::npos; at = src.find("<<<")) {
    size_t start = at;  // the kernel's name, template arguments included
    int depth = 0;
    while (start > 0) {
      const char c = src[start - 1];
      if (c == '>') {
        ++depth;
      } else if (c == '<') {
        if (depth == 0) break;
        --depth;
      } else if (depth == 0 &&
                 !(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == ':')) {
        break;
      }
      --start;
    }
    const size_t close = src.find(">>>", at);
    if (close == std::string::npos) throw std::runtime_error("host_launches: <<< without >>>");
    std::vector<std::string> config(1);
    int parens = 0;
    for (size_t i = at + 3; i < close; ++i) {
      const char c = src[i];
      parens += c == '(' ? 1 : c == ')' ? -1 : 0;
      if (c == ',' && parens == 0)
        config.emplace_back();
      else
        config.back() += c;
    }
    if (config.size() != 4)
      throw std::runtime_error("host_launches: a launch without its four arguments");
    size_t open = close + 3;
    if (src[open] != '(') throw std::runtime_error("host_launches: >>> not followed by (");
    size_t end = open;
    for (int d = 0; end < src.size(); ++end) {
      if (src[end] == '(') ++d;
      if (src[end] == ')' && --d == 0) break;
    }
    const std::string kernel = src.substr(start, at - start);
    const std::string args = src.substr(open + 1, end - open - 1);
    const std::string call = kernel + "(" + args + ");";
    src.replace(start, end + 1 - start,
                deferred ? "tg_emu_launch(\"" + kernel + "\", dim3(" + config[0] + "), dim3(" +
                               config[1] + "), " + config[3] + ", [=] { " + call + " })"
                         : "tg_host_launch(dim3(" + config[0] + "), dim3(" + config[1] +
                               "), [&] { " + call + " })");
  }
  return src;
}

// Every `__shared__ T name[...];` or `__shared__ T name;` of src (not the runtime's #define)
// followed, on its line, by `tg_shared_fill(&name, sizeof name);`, which fills it once per block
// (kRuntime).
inline std::string host_shared(std::string src) {
  const std::string key = "__shared__";
  for (size_t at = src.find(key); at != std::string::npos; at = src.find(key, at + key.size())) {
    if (at >= 8 && src.compare(at - 8, 8, "#define ") == 0) continue;
    const size_t semi = src.find(';', at);
    if (semi == std::string::npos) throw std::runtime_error("host_shared: __shared__ without ;");
    size_t end = std::min(src.find('[', at), semi);
    while (end > at && std::isspace(static_cast<unsigned char>(src[end - 1]))) --end;
    size_t begin = end;
    while (begin > at &&
           (std::isalnum(static_cast<unsigned char>(src[begin - 1])) || src[begin - 1] == '_'))
      --begin;
    const std::string name = src.substr(begin, end - begin);
    if (name.empty() || begin <= at + key.size())
      throw std::runtime_error("host_shared: a __shared__ declaration without a name");
    src.insert(semi + 1, " tg_shared_fill(&" + name + ", sizeof " + name + ");");
  }
  return src;
}

inline std::string read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// `unit` compiled by `cxx` with `flags` into a shared library, kept in the temporary directory
// under a hash of what made it (`headers`: directories whose .h files the unit includes, hashed
// too), so that processes build it once; written under another name and renamed into place.
// Returns the library's path, or empty with the compiler's output in `log`.
inline std::string compile_cached(const std::string& unit, const std::string& flags,
                                  const std::string& cxx, const std::string& prefix,
                                  std::string& log, const std::vector<std::string>& headers = {}) {
  namespace fs = std::filesystem;
  uint64_t hash = 1469598103934665603ULL;  // FNV-1a
  auto mix = [&](const std::string& part) {
    for (unsigned char c : part) hash = (hash ^ c) * 1099511628211ULL;
  };
  for (const std::string* part : {&unit, &flags, &cxx}) mix(*part);
  for (const std::string& dir : headers) {
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_regular_file() && e.path().extension() == ".h") files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (const fs::path& f : files) mix(f.string() + read_file(f));
  }
  const fs::path kept = fs::temp_directory_path() / (prefix + std::to_string(hash) + ".so");
  if (fs::exists(kept)) return kept.string();
  std::random_device rd;
  const fs::path dir =
      fs::temp_directory_path() / (prefix + std::to_string(getpid()) + "_" + std::to_string(rd()));
  fs::create_directories(dir);
  {
    std::ofstream f(dir / "unit.cpp", std::ios::binary);
    f << unit;
  }
  const std::string cmd = cxx + " -std=c++20 -fPIC -shared -w -fvisibility=hidden " + flags +
                          " -o " + (dir / "unit.so").string() + " " + (dir / "unit.cpp").string() +
                          " > " + (dir / "log").string() + " 2>&1";
  const bool built = std::system(cmd.c_str()) == 0;
  if (!built) log = read_file(dir / "log");
  std::error_code ec;
  if (built) fs::rename(dir / "unit.so", kept, ec);
  fs::remove_all(dir, ec);
  return built ? kept.string() : std::string();
}

}  // namespace tghost
