// The CUDA runtime of the emulated GPU (Note [An emulated GPU]): the calls the CUDA backend makes,
// defined here and linked into the emulated-GPU test program in place of libcudart.
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <sanitizer/asan_interface.h>  // ASAN_(UN)POISON_MEMORY_REGION: nothing without ASan
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "emu.h"

// Note [An emulated GPU]
// The CUDA backend (lib/backend/cuda/cuda_backend.cpp) as it is, run on this machine: the test
// program tapegrad_emu_tests links it against this runtime instead of libcudart, against
// kernels.cu compiled for the host (its launches rewritten by make_kernels.cpp into
// tgemu_launch, Note [CUDA code on the host]), and loads cublas.cpp and nvrtc.cpp where cuBLAS
// and NVRTC would be (their directory is first on its library path). So the backend's own code
// runs: the caching allocator, the copies and the pinned staging, the error paths, the index
// checks, cuBLAS's arguments, NVRTC's loading and launching, and stream capture into graphs.
// The emulation is strict where a GPU is strict and a host would not be:
// - Device memory is one mapping the host cannot read or write (PROT_NONE) except while device
//   work runs: host code that touches device memory faults here as it would on a GPU.
// - Work is queued per stream and runs only when the host waits for it (cudaStreamSynchronize, a
//   copy to pageable memory, cudaFree), so a missing wait reads stale memory here too; a copy from
//   pageable memory takes its bytes at the call, as CUDA's staging does.
// - Every copy and memset must lie inside one allocation, in the direction it says; launches are
//   checked against the GPU's limits; new and freed device memory is filled with 0xFF bytes (NaN
//   in every float), so reading what was never written, or what was freed, shows rather than
//   reading zeros.
// - While a stream is captured its work is recorded, not run; waiting for it, or a copy with
//   pageable memory, invalidates the capture (cudaErrorStreamCaptureUnsupported, then
//   cudaErrorStreamCaptureInvalidated at its end); a graph runs its recorded work at each launch.
//   Graphs built by hand run as chains (each node, and each capture into an existing graph,
//   must follow the chain's end); an if-node runs its body where its handle, reset at each
//   launch when asked and set by kernels (cudaGraphSetConditional), is not zero; a body holds
//   only what CUDA allows there.
// - cuBLAS checks its arguments as documented, refuses a captured product without a workspace of
//   the caller's (it would allocate), and rounds to TF32 when asked to.
// - It has two GPUs, and is strict about which is current (Note [Two emulated GPUs]).
// - Kernels' own reads and writes are checked, as compute-sanitizer's memcheck checks them
//   (Note [Checked device memory]).
// What it is not: a model of timing, of concurrency between streams, of CUDA's math library (the
// host's libm stands in) or of the memory model.

// Note [Checked device memory]
// The emulated GPU's kernels (kernels.cu compiled for the host, the generated kernels NVRTC
// builds, the emulated cuBLAS) and this runtime are built with AddressSanitizer, and the device's
// memory is poisoned for it (its manual poisoning: ASan then reports any instrumented read or
// write there) wherever a kernel must not reach:
// - past an allocation's end, from the byte after the size asked for to a red zone of kAlign
//   bytes after the allocation's rounded end (allocations never touch), and before the first;
// - every freed allocation, until it is handed out again.
// So a kernel that reads one element too many, or a freed block, stops the program with ASan's
// report and, first, the emulator's own line: which kernel ran, which allocation the address is
// nearest and how far past its end (or that it was freed). The backend's caching allocator
// rounds tensors up to 512-byte blocks, which hides small overruns from this as from memcheck on
// a GPU; with TAPEGRAD_CUDA_CACHING=0 (Note [Exact allocations], cuda_backend.cpp) each tensor is
// an allocation of its exact size, and ctest runs the emulated suite that way too. They are also
// built with UBSan's alignment check: a GPU faults on a load from an address its type's
// alignment does not divide (a float4 from a tensor view that starts at an odd element, where a
// vectorized path forgot to ask), which x86 would do silently; here it stops the program with
// the kernel's source line. Where the build has no sanitizers (another compiler), none of this
// is there, and the poisoning compiles to nothing.

struct CUstream_st;
struct CUgraph_st;

namespace {

struct Task {
  std::string what;  // "kernel", "gemm", "copy", ...
  std::shared_ptr<std::function<void()>> run;
  std::string name = {};  // a kernel's
  // A conditional node (what == "if"): its body, run where the handle's value is not zero.
  CUgraph_st* body = nullptr;
  unsigned long long handle = 0;
  // The device whose memory it may touch (its stream's), or -1: every device's (copies), or
  // kNoMemory (events, waits: none).
  int device = -1;
};

// TGEMU_LOG=1: every piece of device work is printed as it is queued or recorded.
bool log_on() {
  static const bool on = [] {
    const char* v = std::getenv("TGEMU_LOG");
    return v != nullptr && *v != 0 && *v != '0';
  }();
  return on;
}

}  // namespace

// A graph runs as a chain: its tasks in order. A conditional node's task holds the body's graph
// (owned by the node's graph) and its handle. A node is where the chain stood when it was made:
// the tasks before it.
struct CUgraphNode_st {
  CUgraph_st* graph = nullptr;
  size_t position = 0;
};
struct CUgraph_st {
  std::vector<Task> tasks;
  std::vector<std::unique_ptr<CUgraphNode_st>> nodes;  // made by cudaGraphAdd*Node
  std::vector<std::unique_ptr<CUgraph_st>> bodies;     // conditional nodes' bodies
  struct Condition {
    unsigned long long handle;
    unsigned initial;
    bool assign;  // cudaGraphCondAssignDefault: `initial` at each launch
  };
  std::vector<Condition> conditions;  // the handles made for this graph
};
struct CUgraphExec_st {
  std::vector<Task> tasks;
  std::vector<CUgraph_st::Condition> conditions;
};
struct CUstream_st {
  int device = 0;  // current when it was made
  std::deque<Task> pending;
  CUgraph_st* capture = nullptr;
  bool capture_owned = true;       // false: cudaStreamBeginCaptureToGraph's, the caller's graph
  cudaGraphNode_t tail = nullptr;  // cudaStreamGetCaptureInfo's answer
  cudaGraphEdgeData tail_edge{};
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  bool invalidated = false;
};
// An event: what its latest record marks on its stream, and whether that has run.
struct CUevent_st {
  int device = 0;                 // current when it was made
  CUstream_st* stream = nullptr;  // where it was last recorded (nullptr: never)
  uint64_t recorded = 0;          // records made
  // Records whose place in the stream has run; shared with the records' work, which may run
  // after the event is destroyed (CUDA allows destroying an event with a record pending).
  std::shared_ptr<uint64_t> reached = std::make_shared<uint64_t>(0);
};
struct CUlib_st {
  void* so = nullptr;
};
// A generated kernel (nvrtc.cpp): runs `params` on the grid.
struct CUkern_st {
  void (*run)(const void* params, unsigned grid, unsigned block) = nullptr;
  size_t params = 0;
  bool (*stuck)() = nullptr;
};

namespace {

constexpr size_t kArena = size_t{16} << 30;  // address space reserved for device memory
// Note [Two emulated GPUs]
// The emulated machine has two GPUs, as a workstation may, so that code for several devices is
// checked where CUDA is strict about them (its Programming Guide, "Multi-Device System"):
// - The current device is the calling thread's (cudaSetDevice); memory is allocated on it; a
//   stream and an event belong to the device current when they were made.
// - A kernel, a product or a graph launched into a stream of a device that is not current fails
//   (cudaErrorInvalidResourceHandle), as does recording an event of one device on another's
//   stream; copies may go to any stream.
// - Each device has its half of the arena, and device work opens only its own device's half: a
//   kernel that touches another device's memory (no peer access here) faults, as on a GPU.
// - Each has its own memory limit and use (cudaMemGetInfo of the current device).
constexpr int kDevices = 2;
constexpr int kNoMemory = -2;
constexpr size_t kDeviceSpan = kArena / kDevices;
constexpr size_t kAlign = 256;
constexpr unsigned char kGarbage = 0xFF;   // NaN in every float, -1 in every integer
constexpr size_t kHuge = size_t{2} << 20;  // windows cover whole huge pages

// A device allocation: the bytes asked for, and its span in the arena: rounded up to kAlign,
// then a red zone of kAlign bytes (Note [Checked device memory]).
struct Block {
  size_t size = 0;
  size_t span = 0;
  int device = 0;
};

struct Emu {
  std::recursive_mutex mu;
  char* arena = nullptr;                    // device d's memory: kDeviceSpan bytes from d's
  size_t high[kDevices] = {};               // bytes of its half ever handed out
  std::map<uintptr_t, Block> live;          // device allocations by start
  std::multimap<size_t, uintptr_t> holes[kDevices];  // freed spans: bytes → start
  std::map<uintptr_t, size_t> freed;        // freed allocations' asked sizes, by start
  const char* running = nullptr;            // the device work running now (its name)
  int running_on = -1;                      // and its device
  size_t limit = size_t{8} << 30;           // each device's
  size_t in_use[kDevices] = {};
  int open[kDevices] = {};                  // windows open on a device (its memory readable)
  std::map<uintptr_t, size_t> pinned;       // cudaMallocHost
  std::vector<CUstream_st*> streams;
  CUstream_st legacy;                       // stream 0
  cudaError_t sticky = cudaSuccess;
  std::string fault;
  tgemu::Counts counts;
  std::map<unsigned long long, unsigned> conditions;  // conditional handles' values
  unsigned long long next_handle = 1;
  tgemu::Conditionals conditionals = tgemu::Conditionals::Work;  // tgemu::set_conditionals
};

void on_asan_report();

Emu& emu() {
  static Emu* e = [] {
    auto* r = new Emu;
    void* p = mmap(nullptr, kArena + kHuge, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED) {
      std::fprintf(stderr, "emulated GPU: cannot reserve the device's address space\n");
      std::abort();
    }
    auto at = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) / kHuge * kHuge;
    r->arena = reinterpret_cast<char*>(at);
    for (int d = 0; d < kDevices; ++d) {
      r->high[d] = kAlign;  // a red zone before the first allocation
      ASAN_POISON_MEMORY_REGION(r->arena + d * kDeviceSpan, kAlign);
    }
#if defined(__SANITIZE_ADDRESS__)
    __asan_set_death_callback(on_asan_report);
#endif
    // Huge pages where the kernel gives them: a window then changes a few entries, not
    // thousands (each a hypercall in some VMs).
    (void)madvise(r->arena, kArena, MADV_HUGEPAGE);
    return r;
  }();
  return *e;
}

thread_local cudaError_t t_last = cudaSuccess;
thread_local int t_device = 0;  // the thread's current device (Note [Two emulated GPUs])

cudaError_t ret(cudaError_t e) {
  if (e != cudaSuccess) t_last = e;
  return e;
}

size_t page_round(size_t n) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return (n + page - 1) / page * page;
}
size_t huge_round(size_t n) { return (n + kHuge - 1) / kHuge * kHuge; }

// A device's memory readable and writable by the host while a window on it is open (its work
// runs); device -1: every device's.
struct Window {
  explicit Window(int device = -1) : device(device) {
    // Also when nested: memory allocated since the outer one opened.
    if (device == kNoMemory) return;
    Emu& e = emu();
    for (int d = 0; d < kDevices; ++d)
      if (device < 0 || d == device) {
        ++e.open[d];
        mprotect(e.arena + d * kDeviceSpan, huge_round(e.high[d]), PROT_READ | PROT_WRITE);
      }
  }
  ~Window() {
    if (device == kNoMemory) return;
    Emu& e = emu();
    for (int d = 0; d < kDevices; ++d)
      if ((device < 0 || d == device) && --e.open[d] == 0)
        mprotect(e.arena + d * kDeviceSpan, huge_round(e.high[d]), PROT_NONE);
  }
  Window(const Window&) = delete;
  Window& operator=(const Window&) = delete;
  int device;
};

int device_at(uintptr_t a) {
  return static_cast<int>((a - reinterpret_cast<uintptr_t>(emu().arena)) / kDeviceSpan);
}

// The live allocation holding [p, p + n), if any: its start (0 where none).
uintptr_t allocation_of(const void* p, size_t n) {
  Emu& e = emu();
  auto a = reinterpret_cast<uintptr_t>(p);
  auto it = e.live.upper_bound(a);
  if (it == e.live.begin()) return 0;
  --it;
  if (a < it->first || a + n > it->first + it->second.size) return 0;
  return it->first;
}
#if defined(__SANITIZE_ADDRESS__)
// ASan is here for device memory; leaks are the sanitizer build's to find (the kernels' fiber
// stacks are kept for the process's life on purpose).
extern "C" const char* __asan_default_options() { return "detect_leaks=0"; }
#endif

// After ASan's report, where it was about device memory: the emulator's account of it (Note
// [Checked device memory]). Runs as the program dies: reads the emulator's state unlocked.
void on_asan_report() {
#if defined(__SANITIZE_ADDRESS__)
  Emu& e = emu();
  const auto a = reinterpret_cast<uintptr_t>(__asan_get_report_address());
  const auto base = reinterpret_cast<uintptr_t>(e.arena);
  const std::string work =
      e.running == nullptr
          ? std::string("(none running: the host)")
          : std::string(e.running) +
                (e.running_on >= 0 ? " on cuda:" + std::to_string(e.running_on) : std::string());
  if (a < base || a >= base + kArena) {
    // Not an address ASan poisoned: a fault (another device's memory, closed to this work).
    if (e.running != nullptr)
      std::fprintf(stderr,
                   "emulated GPU: device work %s was running (Note [Checked device "
                   "memory], Note [Two emulated GPUs])\n",
                   work.c_str());
    return;
  }
  std::string where = "before the first allocation";
  auto it = e.live.upper_bound(a);
  auto f = e.freed.upper_bound(a);
  if (f != e.freed.begin() && (--f, a < f->first + f->second) &&
      (it == e.live.begin() || std::prev(it)->first < f->first))
    where = "inside a freed allocation of " + std::to_string(f->second) + " bytes, at its byte " +
            std::to_string(a - f->first);
  else if (it != e.live.begin()) {
    --it;
    where = std::to_string(a - it->first - it->second.size) + " bytes past the end of a " +
            std::to_string(it->second.size) + "-byte allocation";
  }
  std::fprintf(stderr,
               "emulated GPU: device work %s %s %zu bytes of device memory %s of cuda:%d (Note "
               "[Checked device memory])\n",
               work.c_str(), __asan_get_report_access_type() != 0 ? "wrote" : "read",
               __asan_get_report_access_size(), where.c_str(), device_at(a));
#endif
}

bool in_arena(const void* p) {
  Emu& e = emu();
  auto a = reinterpret_cast<const char*>(p);
  return a >= e.arena && a < e.arena + kArena;
}
bool is_pinned(const void* p, size_t n) {
  Emu& e = emu();
  auto a = reinterpret_cast<uintptr_t>(p);
  auto it = e.pinned.upper_bound(a);
  if (it == e.pinned.begin()) return false;
  --it;
  return a >= it->first && a + n <= it->first + it->second;
}

CUstream_st& stream_of(cudaStream_t s) { return s == nullptr ? emu().legacy : *s; }
bool known(cudaStream_t s) {
  if (s == nullptr) return true;
  for (CUstream_st* k : emu().streams)
    if (k == s) return true;
  return false;
}

// Whether `deps` is the end of `graph`'s chain: nothing for an empty graph, else one node made
// when the graph held what it holds now.
bool at_end(const CUgraph_st* graph, const cudaGraphNode_t* deps, size_t ndeps) {
  if (graph->tasks.empty()) return ndeps == 0;
  return ndeps == 1 && deps != nullptr && deps[0] != nullptr && deps[0]->graph == graph &&
         deps[0]->position == graph->tasks.size();
}

// One task, with only its device's memory open.
void run_task(const Task& t) {
  Emu& e = emu();
  if (e.sticky != cudaSuccess) return;
  Window w(t.device);
  const char* was = e.running;
  const int was_on = e.running_on;
  e.running = t.name.empty() ? t.what.c_str() : t.name.c_str();
  e.running_on = t.device;
  (*t.run)();
  e.running = was;
  e.running_on = was_on;
}

void run_tasks(std::deque<Task>& q) {
  while (!q.empty()) {
    Task t = std::move(q.front());
    q.pop_front();
    run_task(t);
  }
}

// The host waits for stream s: its queued work runs.
void drain(CUstream_st& s) {
  if (!s.pending.empty()) ++emu().counts.syncs;
  run_tasks(s.pending);
}
void drain_all() {
  Emu& e = emu();
  for (CUstream_st* s : e.streams) run_tasks(s->pending);
  run_tasks(e.legacy.pending);
}

// What a capture cannot hold: the capture is invalidated, as CUDA does.
cudaError_t unsupported_while_capturing(CUstream_st& s) {
  s.invalidated = true;
  return ret(cudaErrorStreamCaptureUnsupported);
}

// Device work queued on a stream (or recorded, while the stream is captured); `by_graph`: by a
// graph's launch.
cudaError_t submit(cudaStream_t stream, Task t, bool by_graph = false) {
  Emu& e = emu();
  if (e.sticky != cudaSuccess) return ret(e.sticky);
  if (!known(stream)) return ret(cudaErrorInvalidResourceHandle);
  CUstream_st& s = stream_of(stream);
  // Kernels and products run on their stream's device, which must be current (stream 0 is the
  // current device's); copies may go to any stream (Note [Two emulated GPUs]).
  const int device = stream == nullptr ? t_device : s.device;
  if (t.what == "kernel" || t.what == "gemm" || t.what == "radix sort") {
    if (!by_graph && device != t_device) return ret(cudaErrorInvalidResourceHandle);
    t.device = device;
  } else if (t.what == "if") {
    t.device = device;
  } else if (t.what == "event" || t.what == "wait" || t.what == "conditions") {
    t.device = kNoMemory;
  }
  if (log_on())
    std::fprintf(stderr, "[emulated GPU] %s %s%s%s\n",
                 s.capture != nullptr ? "record"
                 : by_graph           ? "graph "
                                      : "queue ",
                 t.what.c_str(), t.name.empty() ? "" : " ", t.name.c_str());
  if (s.capture != nullptr) {
    ++e.counts.captured;
    s.capture->tasks.push_back(std::move(t));
    return cudaSuccess;
  }
  if (t.what == "kernel" || t.what == "gemm")
    ++(by_graph ? e.counts.graph_work : e.counts.launches);
  s.pending.push_back(std::move(t));
  if (stream == nullptr) drain_all();  // the legacy stream waits for the others, and they for it
  return cudaSuccess;
}

Task task(const char* what, std::function<void()> f) {
  return Task{what, std::make_shared<std::function<void()>>(std::move(f))};
}

}  // namespace

// --- the emulator's own interface (emu.h) ------------------------------------------------------

extern "C" cudaError_t tgemu_submit(cudaStream_t s, const char* what, std::function<void()>* f) {
  std::lock_guard<std::recursive_mutex> lock(emu().mu);
  std::unique_ptr<std::function<void()>> owned(f);
  return submit(s, Task{what, std::shared_ptr<std::function<void()>>(std::move(owned))});
}

extern "C" void tgemu_launch(cudaStream_t s, dim3 grid, dim3 block, std::function<void()>* body,
                             const char* name) {
  std::lock_guard<std::recursive_mutex> lock(emu().mu);
  std::unique_ptr<std::function<void()>> owned(body);
  const unsigned long long threads =
      static_cast<unsigned long long>(block.x) * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 ||
      grid.z > 65535 || threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 ||
      block.z > 64) {
    ret(cudaErrorInvalidConfiguration);
    return;
  }
  std::shared_ptr<std::function<void()>> run(std::move(owned));
  cudaError_t e = submit(s, Task{"kernel", std::make_shared<std::function<void()>>([run] {
                                   ++emu().counts.kernels_run;
                                   (*run)();
                                 }),
                                 name != nullptr ? name : ""});
  (void)e;
}

extern "C" void tgemu_fault(const char* what) {
  Emu& e = emu();
  std::lock_guard<std::recursive_mutex> lock(e.mu);
  if (e.sticky == cudaSuccess) {
    e.sticky = cudaErrorLaunchFailure;
    e.fault = what;
    std::fprintf(stderr, "emulated GPU: %s\n", what);
  }
}

// cudaGraphSetConditional, called by a kernel (host_cuda_source.h).
extern "C" void tgemu_set_conditional(unsigned long long handle, unsigned value) {
  Emu& e = emu();
  std::lock_guard<std::recursive_mutex> lock(e.mu);
  auto it = e.conditions.find(handle);
  if (it == e.conditions.end()) {
    tgemu_fault("cudaGraphSetConditional: a handle no graph made");
    return;
  }
  if (e.conditionals != tgemu::Conditionals::Ignored) it->second = value;
}

extern "C" bool tgemu_is_device(const void* p, size_t n) {
  std::lock_guard<std::recursive_mutex> lock(emu().mu);
  return allocation_of(p, n) != 0;
}

extern "C" bool tgemu_checked() {
#if defined(__SANITIZE_ADDRESS__)
  return true;
#else
  return false;
#endif
}

extern "C" bool tgemu_capturing(cudaStream_t s) {
  std::lock_guard<std::recursive_mutex> lock(emu().mu);
  return known(s) && stream_of(s).capture != nullptr;
}

tgemu::Counts tgemu::counts() {
  std::lock_guard<std::recursive_mutex> lock(emu().mu);
  Counts c = emu().counts;
  c.device_bytes = static_cast<int64_t>(emu().in_use[t_device]);
  return c;
}
void tgemu::set_memory_limit(size_t bytes) {
  std::lock_guard<std::recursive_mutex> lock(emu().mu);
  emu().limit = bytes;
}
size_t tgemu::memory_limit() { return emu().limit; }
void tgemu::set_conditionals(Conditionals how) {
  std::lock_guard<std::recursive_mutex> lock(emu().mu);
  emu().conditionals = how;
}
const char* tgemu::fault() { return emu().fault.empty() ? nullptr : emu().fault.c_str(); }

// --- the runtime's calls ---------------------------------------------------------------------

extern "C" {

cudaError_t cudaGetDeviceCount(int* count) {
  *count = kDevices;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= kDevices) return ret(cudaErrorInvalidDevice);
  t_device = device;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  *device = t_device;
  return cudaSuccess;
}

// An H100's figures.
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device < 0 || device >= kDevices) return ret(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrComputeCapabilityMajor: *value = 9; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *value = 132; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; return cudaSuccess;
    case cudaDevAttrWarpSize: *value = 32; return cudaSuccess;
    case cudaDevAttrMemoryClockRate:
      *value = 2619000;
      return cudaSuccess;  // kHz
    case cudaDevAttrGlobalMemoryBusWidth:
      *value = 5120;
      return cudaSuccess;  // bits
    default: return ret(cudaErrorInvalidValue);
  }
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device < 0 || device >= kDevices) return ret(cudaErrorInvalidDevice);
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof prop->name, "emulated GPU (tapegrad's tests)");
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = 132;
  prop->totalGlobalMem = emu().limit;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  Emu& e = emu();
  std::lock_guard<std::recursive_mutex> lock(e.mu);
  *total = e.limit;
  const size_t used = e.in_use[t_device];
  *free = e.limit > used ? e.limit - used : 0;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** ptr, size_t size) {
  Emu& e = emu();
  std::lock_guard<std::recursive_mutex> lock(e.mu);
  *ptr = nullptr;
  if (e.sticky != cudaSuccess) return ret(e.sticky);
  for (CUstream_st* s : e.streams)
    if (s->capture != nullptr && s->mode != cudaStreamCaptureModeRelaxed)
      return unsupported_while_capturing(*s);
  if (size == 0) return cudaSuccess;
  const size_t n = (size + kAlign - 1) / kAlign * kAlign;  // what the device's memory counts
  const size_t span = n + kAlign;                          // with its red zone
  const int d = t_device;
  if (n > e.limit || e.in_use[d] + n > e.limit) return ret(cudaErrorMemoryAllocation);
  uintptr_t at = 0;
  auto hole = e.holes[d].lower_bound(span);
  if (hole != e.holes[d].end()) {
    at = hole->second;
    const size_t rest = hole->first - span;
    e.holes[d].erase(hole);
    if (rest > 0) e.holes[d].emplace(rest, at + span);
  } else {
    if (e.high[d] + span > kDeviceSpan) return ret(cudaErrorMemoryAllocation);
    at = reinterpret_cast<uintptr_t>(e.arena + d * kDeviceSpan) + e.high[d];
    e.high[d] += span;
  }
  e.live.emplace(at, Block{size, span, d});
  for (auto f = e.freed.lower_bound(at); f != e.freed.end() && f->first < at + span;)
    f = e.freed.erase(f);
  e.in_use[d] += n;
  auto* p = reinterpret_cast<char*>(at);
  {
    Window w(d);
    ASAN_UNPOISON_MEMORY_REGION(p, span);
    std::memset(p, kGarbage, span);
    ASAN_POISON_MEMORY_REGION(p + size, span - size);
  }
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  Emu& e = emu();
  std::lock_guard<std::recursive_mutex> lock(e.mu);
  if (ptr == nullptr) return cudaSuccess;
  auto it = e.live.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == e.live.end()) return ret(cudaErrorInvalidValue);
  for (CUstream_st* s : e.streams)
    if (s->capture != nullptr && s->mode != cudaStreamCaptureModeRelaxed)
      return unsupported_while_capturing(*s);
  drain_all();  // cudaFree waits for the device
  const Block b = it->second;
  if (b.device != t_device) ++e.counts.frees_elsewhere;
  {
    Window w(b.device);
    ASAN_UNPOISON_MEMORY_REGION(ptr, b.span);
    std::memset(ptr, kGarbage, b.span);
    ASAN_POISON_MEMORY_REGION(ptr, b.span);
  }
  e.holes[b.device].emplace(b.span, it->first);
  e.freed[it->first] = b.size;
  e.live.erase(it);
  e.in_use[b.device] -= (b.size + kAlign - 1) / kAlign * kAlign;
  return e.sticky != cudaSuccess ? ret(e.sticky) : cudaSuccess;
}

cudaError_t cudaMallocHost(void** ptr, size_t size) {
  Emu& e = emu();
  std::lock_guard<std::recursive_mutex> lock(e.mu);
  *ptr = std::aligned_alloc(4096, page_round(size == 0 ? 1 : size));
  if (*ptr == nullptr) return ret(cudaErrorMemoryAllocation);
  e.pinned.emplace(reinterpret_cast<uintptr_t>(*ptr), size);
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void* ptr) {
  Emu& e = emu();
  std::lock_guard<std::recursive_mutex> lock(e.mu);
  auto it = e.pinned.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == e.pinned.end()) return ret(cudaErrorInvalidValue);
  drain_all();
  e.pinned.erase(it);
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  Emu& e = emu();
  std::lock_guard<std::recursive_mutex> lock(e.mu);
  *stream = new CUstream_st;
  (*stream)->device = t_device;
  e.streams.push_back(*stream);
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  Emu& e = emu();
  std::lock_guard<std::recursive_mutex> lock(e.mu);
  if (stream == nullptr || !known(stream)) return ret(cudaErrorInvalidResourceHandle);
  if (stream->capture != nullptr) return ret(cudaErrorIllegalState);
  drain(*stream);  // its work completes first
  std::erase(e.streams, stream);
  delete stream;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  Emu& e = emu();
  std::lock_guard<std::recursive_mutex> lock(e.mu);
  if (!known(stream)) return ret(cudaErrorInvalidResourceHandle);
  CUstream_st& s = stream_of(stream);
  if (s.capture != nullptr) return unsupported_while_capturing(s);
  if (stream == nullptr)
    drain_all();
  else
    drain(s);
  return e.sticky != cudaSuccess ? ret(e.sticky) : cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
  Emu& e = emu();
  std::lock_guard<std::recursive_mutex> lock(e.mu);
  for (CUstream_st* s : e.streams)
    if (s->capture != nullptr) return unsupported_while_capturing(*s);
  for (CUstream_st* s : e.streams) drain(*s);
  drain(e.legacy);
  return e.sticky != cudaSuccess ? ret(e.sticky) : cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  Emu& e = emu();
  std::lock_guard<std::recursive_mutex> lock(e.mu);
  if (e.sticky != cudaSuccess) return ret(e.sticky);
  if (!known(stream)) return ret(cudaErrorInvalidResourceHandle);
  if (count == 0) return cudaSuccess;
  const bool dst_dev = allocation_of(dst, count) != 0, src_dev = allocation_of(src, count) != 0;
  // A pointer into device memory that overruns its allocation is neither side.
  if ((!dst_dev && in_arena(dst)) || (!src_dev && in_arena(src))) return ret(cudaErrorInvalidValue);
  if (kind == cudaMemcpyDefault)
    kind = dst_dev ? (src_dev ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                   : (src_dev ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
  const bool ok = (kind == cudaMemcpyHostToDevice && dst_dev && !src_dev) ||
                  (kind == cudaMemcpyDeviceToHost && !dst_dev && src_dev) ||
                  (kind == cudaMemcpyDeviceToDevice && dst_dev && src_dev) ||
                  (kind == cudaMemcpyHostToHost && !dst_dev && !src_dev);
  if (!ok) return ret(cudaErrorInvalidValue);
  CUstream_st& s = stream_of(stream);
  const void* host = kind == cudaMemcpyHostToDevice   ? src
                     : kind == cudaMemcpyDeviceToHost ? static_cast<const void*>(dst)
                                                      : nullptr;
  const bool pageable = host != nullptr && !is_pinned(host, count);
  if (s.capture != nullptr && (pageable || kind == cudaMemcpyHostToHost))
    return unsupported_while_capturing(s);
  if (kind == cudaMemcpyHostToDevice && pageable) {
    // Staged at the call: the caller may reuse its buffer at once.
    auto bytes = std::make_shared<std::vector<char>>(static_cast<const char*>(src),
                                                     static_cast<const char*>(src) + count);
    return submit(stream, task("copy to device",
                               [dst, bytes] { std::memcpy(dst, bytes->data(), bytes->size()); }));
  }
  if (kind == cudaMemcpyDeviceToHost && pageable) {
    // Returns once the copy is done: the stream's earlier work first.
    drain(s);
    if (e.sticky != cudaSuccess) return ret(e.sticky);
    Window w;
    std::memcpy(dst, src, count);
    return cudaSuccess;
  }
  if (host != nullptr) ++e.counts.pinned_copies;
  return submit(stream, task("copy", [dst, src, count] { std::memcpy(dst, src, count); }));
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  std::lock_guard<std::recursive_mutex> lock(emu().mu);
  cudaError_t r = cudaMemcpyAsync(dst, src, count, kind, nullptr);
  if (r != cudaSuccess) return r;
  return cudaStreamSynchronize(nullptr);
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t stream) {
  Emu& e = emu();
  std::lock_guard<std::recursive_mutex> lock(e.mu);
  if (count == 0) return cudaSuccess;
  if (allocation_of(ptr, count) == 0) return ret(cudaErrorInvalidValue);
  return submit(stream, task("memset", [ptr, value, count] { std::memset(ptr, value, count); }));
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) {
  std::lock_guard<std::recursive_mutex> lock(emu().mu);
  *event = new CUevent_st;
  (*event)->device = t_device;
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  std::lock_guard<std::recursive_mutex> lock(emu().mu);
  if (event == nullptr) return ret(cudaErrorInvalidResourceHandle);
  delete event;
  return cudaSuccess;
}

// A marker in the stream's work: reached when the work before it has run.
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  Emu& e = emu();
  std::lock_guard<std::recursive_mutex> lock(e.mu);
  if (event == nullptr) return ret(cudaErrorInvalidResourceHandle);
  if (!known(stream)) return ret(cudaErrorInvalidResourceHandle);
  CUstream_st& s = stream_of(stream);
  if (s.capture != nullptr) return unsupported_while_capturing(s);  // not used so here
  if (event->device != (stream == nullptr ? t_device : s.device))
    return ret(cudaErrorInvalidResourceHandle);  // another device's event
  event->stream = &s;
  const uint64_t n = ++event->recorded;
  return submit(stream, task("event", [reached = event->reached, n] { *reached = n; }));
}

// The stream's later work waits for the event's latest record as of now: when the wait is
// reached, the event's stream runs its work up to that record first. (A stream destroyed since
// has run all its work: the record was reached, and its stream is not touched.)
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
  Emu& e = emu();
  std::lock_guard<std::recursive_mutex> lock(e.mu);
  if (event == nullptr || !known(stream)) return ret(cudaErrorInvalidResourceHandle);
  if (flags != 0) return ret(cudaErrorInvalidValue);
  CUstream_st& s = stream_of(stream);
  if (s.capture != nullptr) return unsupported_while_capturing(s);  // not used so here
  if (event->stream == nullptr) return cudaSuccess;  // never recorded: nothing to wait for
  CUstream_st* on = event->stream;
  return submit(stream, task("wait", [on, n = event->recorded, reached = event->reached] {
                  while (*reached < n && !on->pending.empty()) {
                    Task t = std::move(on->pending.front());
                    on->pending.pop_front();
                    run_task(t);
                  }
                }));
}

// A copy between two devices' memory, on any stream (Note [Two emulated GPUs]).
cudaError_t cudaMemcpyPeerAsync(void* dst, int dst_device, const void* src, int src_device,
                                size_t count, cudaStream_t stream) {
  Emu& e = emu();
  std::lock_guard<std::recursive_mutex> lock(e.mu);
  if (e.sticky != cudaSuccess) return ret(e.sticky);
  if (!known(stream)) return ret(cudaErrorInvalidResourceHandle);
  if (dst_device < 0 || dst_device >= kDevices || src_device < 0 || src_device >= kDevices)
    return ret(cudaErrorInvalidDevice);
  if (count == 0) return cudaSuccess;
  const uintptr_t d = allocation_of(dst, count), s = allocation_of(src, count);
  if (d == 0 || s == 0 || e.live[d].device != dst_device || e.live[s].device != src_device)
    return ret(cudaErrorInvalidValue);
  if (stream_of(stream).capture != nullptr) return unsupported_while_capturing(stream_of(stream));
  return submit(stream,
                task("copy between devices", [dst, src, count] { std::memcpy(dst, src, count); }));
}

// Waits until the event's latest record is reached: the stream's work up to it runs.
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  Emu& e = emu();
  std::lock_guard<std::recursive_mutex> lock(e.mu);
  if (event == nullptr) return ret(cudaErrorInvalidResourceHandle);
  if (event->stream == nullptr || *event->reached == event->recorded) return cudaSuccess;
  ++e.counts.syncs;
  std::deque<Task>& q = event->stream->pending;
  while (*event->reached != event->recorded && !q.empty()) {
    Task t = std::move(q.front());
    q.pop_front();
    run_task(t);
  }
  return e.sticky != cudaSuccess ? ret(e.sticky) : cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
  Emu& e = emu();
  std::lock_guard<std::recursive_mutex> lock(e.mu);
  if (stream == nullptr) return ret(cudaErrorStreamCaptureUnsupported);
  if (!known(stream)) return ret(cudaErrorInvalidResourceHandle);
  if (stream->capture != nullptr) return ret(cudaErrorIllegalState);
  stream->capture = new CUgraph_st;
  stream->capture_owned = true;
  stream->mode = mode;
  stream->invalidated = false;
  return cudaSuccess;
}

// Capture into the caller's graph, after what it holds: the emulator's chains take it only at
// the chain's end.
cudaError_t cudaStreamBeginCaptureToGraph(cudaStream_t stream, cudaGraph_t graph,
                                          const cudaGraphNode_t* deps,
                                          const cudaGraphEdgeData* edges, size_t ndeps,
                                          cudaStreamCaptureMode mode) {
  Emu& e = emu();
  std::lock_guard<std::recursive_mutex> lock(e.mu);
  if (stream == nullptr || graph == nullptr) return ret(cudaErrorInvalidValue);
  if (!known(stream)) return ret(cudaErrorInvalidResourceHandle);
  if (stream->capture != nullptr) return ret(cudaErrorIllegalState);
  if (edges != nullptr || !at_end(graph, deps, ndeps)) return ret(cudaErrorNotSupported);
  stream->capture = graph;
  stream->capture_owned = false;
  stream->mode = mode;
  stream->invalidated = false;
  return cudaSuccess;
}

// The capture's state; its dependencies are the chain's end (none while the graph is empty).
cudaError_t cudaStreamGetCaptureInfo(cudaStream_t stream, cudaStreamCaptureStatus* status,
                                     unsigned long long* id, cudaGraph_t* graph,
                                     const cudaGraphNode_t** deps, const cudaGraphEdgeData** edges,
                                     size_t* ndeps) {
  Emu& e = emu();
  std::lock_guard<std::recursive_mutex> lock(e.mu);
  if (status == nullptr || (edges != nullptr && deps == nullptr)) return ret(cudaErrorInvalidValue);
  if (!known(stream)) return ret(cudaErrorInvalidResourceHandle);
  CUstream_st& s = stream_of(stream);
  *status = s.capture == nullptr ? cudaStreamCaptureStatusNone
            : s.invalidated      ? cudaStreamCaptureStatusInvalidated
                                 : cudaStreamCaptureStatusActive;
  if (id != nullptr) *id = reinterpret_cast<uintptr_t>(s.capture);
  if (graph != nullptr) *graph = s.capture;
  if (s.capture == nullptr) return cudaSuccess;
  CUgraph_st& g = *s.capture;
  s.tail = nullptr;
  if (!g.tasks.empty()) {
    g.nodes.push_back(std::make_unique<CUgraphNode_st>(CUgraphNode_st{&g, g.tasks.size()}));
    s.tail = g.nodes.back().get();
  }
  s.tail_edge = cudaGraphEdgeData{};
  if (deps != nullptr) *deps = &s.tail;
  if (edges != nullptr) *edges = &s.tail_edge;
  if (ndeps != nullptr) *ndeps = s.tail != nullptr ? 1 : 0;
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  Emu& e = emu();
  std::lock_guard<std::recursive_mutex> lock(e.mu);
  *graph = nullptr;
  if (stream == nullptr || !known(stream)) return ret(cudaErrorInvalidResourceHandle);
  if (stream->capture == nullptr) return ret(cudaErrorIllegalState);
  CUgraph_st* g = stream->capture;
  const bool owned = stream->capture_owned;
  stream->capture = nullptr;
  stream->capture_owned = true;
  if (stream->invalidated) {
    if (owned) delete g;  // the caller's graph stays the caller's
    stream->invalidated = false;
    return ret(cudaErrorStreamCaptureInvalidated);
  }
  *graph = g;
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
  std::lock_guard<std::recursive_mutex> lock(emu().mu);
  if (!known(stream)) return ret(cudaErrorInvalidResourceHandle);
  CUstream_st& s = stream_of(stream);
  *status = s.capture == nullptr ? cudaStreamCaptureStatusNone
            : s.invalidated      ? cudaStreamCaptureStatusInvalidated
                                 : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}

cudaError_t cudaGraphCreate(cudaGraph_t* graph, unsigned int flags) {
  std::lock_guard<std::recursive_mutex> lock(emu().mu);
  if (graph == nullptr || flags != 0) return ret(cudaErrorInvalidValue);
  *graph = new CUgraph_st;
  return cudaSuccess;
}

cudaError_t cudaGraphConditionalHandleCreate(cudaGraphConditionalHandle* handle, cudaGraph_t graph,
                                             unsigned int initial, unsigned int flags) {
  Emu& e = emu();
  std::lock_guard<std::recursive_mutex> lock(e.mu);
  if (handle == nullptr || graph == nullptr || (flags != 0 && flags != cudaGraphCondAssignDefault))
    return ret(cudaErrorInvalidValue);
  if (e.conditionals == tgemu::Conditionals::RefusedAtCreation) return ret(cudaErrorNotSupported);
  *handle = e.next_handle++;
  e.conditions[*handle] = initial;
  graph->conditions.push_back({*handle, initial, flags == cudaGraphCondAssignDefault});
  return cudaSuccess;
}

namespace {

// The emulator runs a graph's nodes in the order they were added, so each node must depend on
// the chain's end (at_end): which is what the backend builds. Anything else is refused rather
// than run in an order CUDA would not.
cudaError_t add_node(cudaGraphNode_t* node, cudaGraph_t graph, const cudaGraphNode_t* deps,
                     const cudaGraphEdgeData* edges, size_t ndeps) {
  if (node == nullptr || graph == nullptr || (ndeps > 0 && deps == nullptr))
    return ret(cudaErrorInvalidValue);
  // Plain edges only (an all-zero cudaGraphEdgeData is the default).
  if (edges != nullptr)
    for (size_t i = 0; i < ndeps; ++i)
      if (edges[i].from_port != 0 || edges[i].to_port != 0 || edges[i].type != 0)
        return ret(cudaErrorNotSupported);
  if (!at_end(graph, deps, ndeps)) return ret(cudaErrorNotSupported);
  graph->nodes.push_back(
      std::make_unique<CUgraphNode_st>(CUgraphNode_st{graph, graph->tasks.size() + 1}));
  *node = graph->nodes.back().get();
  return cudaSuccess;
}

// The handles a graph may use: its own and its ancestors'.
bool handle_of(const CUgraph_st* g, unsigned long long h,
               const std::vector<const CUgraph_st*>& parents) {
  for (const auto& c : g->conditions)
    if (c.handle == h) return true;
  for (const CUgraph_st* p : parents)
    for (const auto& c : p->conditions)
      if (c.handle == h) return true;
  return false;
}

// What a conditional body may hold (cudaConditionalNodeParams): kernels, memsets and memcopies
// (cuBLAS's products and CUB's sort are kernels), and conditionals.
bool allowed_in_body(const Task& t) {
  return t.what == "kernel" || t.what == "gemm" || t.what == "copy" || t.what == "memset" ||
         t.what == "radix sort" || t.what == "if";
}

// The tasks of `g` as a launch runs them: a conditional becomes a task that runs its body's
// (flattened the same way) where its handle is not zero. False where the graph breaks a rule.
bool flatten(const CUgraph_st* g, std::vector<const CUgraph_st*>& parents, bool in_body,
             std::vector<Task>& out) {
  for (const Task& t : g->tasks) {
    if (in_body && !allowed_in_body(t)) return false;
    if (t.what != "if") {
      out.push_back(t);
      continue;
    }
    if (!handle_of(g, t.handle, parents)) return false;
    parents.push_back(g);
    auto body = std::make_shared<std::vector<Task>>();
    const bool ok = flatten(t.body, parents, /*in_body=*/true, *body);
    parents.pop_back();
    if (!ok) return false;
    const unsigned long long h = t.handle;
    out.push_back(Task{"if", std::make_shared<std::function<void()>>([h, body] {
                         Emu& e = emu();
                         if (e.conditions[h] == 0) return;
                         for (const Task& b : *body) {
                           if (e.sticky != cudaSuccess) return;
                           if (log_on())
                             std::fprintf(stderr, "[emulated GPU] body   %s%s%s\n", b.what.c_str(),
                                          b.name.empty() ? "" : " ", b.name.c_str());
                           if (b.what == "kernel" || b.what == "gemm") ++e.counts.graph_work;
                           (*b.run)();
                         }
                       })});
  }
  return true;
}

}  // namespace

cudaError_t cudaGraphAddNode(cudaGraphNode_t* node, cudaGraph_t graph, const cudaGraphNode_t* deps,
                             const cudaGraphEdgeData* edges, size_t ndeps,
                             cudaGraphNodeParams* params) {
  std::lock_guard<std::recursive_mutex> lock(emu().mu);
  if (params == nullptr) return ret(cudaErrorInvalidValue);
  // Only the conditional node the backend makes: an if with one body.
  if (params->type != cudaGraphNodeTypeConditional ||
      params->conditional.type != cudaGraphCondTypeIf || params->conditional.size != 1)
    return ret(cudaErrorNotSupported);
  if (emu().conditions.count(params->conditional.handle) == 0) return ret(cudaErrorInvalidValue);
  if (cudaError_t r = add_node(node, graph, deps, edges, ndeps); r != cudaSuccess) return r;
  graph->bodies.push_back(std::make_unique<CUgraph_st>());
  CUgraph_st* body = graph->bodies.back().get();
  Task t{"if", nullptr};
  t.body = body;
  t.handle = params->conditional.handle;
  graph->tasks.push_back(std::move(t));
  // CUDA-owned, valid while the node is: kept beside the body.
  static thread_local std::vector<std::unique_ptr<cudaGraph_t>> outs;
  outs.push_back(std::make_unique<cudaGraph_t>(body));
  params->conditional.phGraph_out = outs.back().get();
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  std::lock_guard<std::recursive_mutex> lock(emu().mu);
  if (graph == nullptr) return ret(cudaErrorInvalidValue);
  std::vector<Task> tasks;
  std::vector<const CUgraph_st*> parents;
  if (!flatten(graph, parents, /*in_body=*/false, tasks)) return ret(cudaErrorInvalidValue);
  std::vector<CUgraph_st::Condition> conditions = graph->conditions;
  for (const auto& b : graph->bodies)
    conditions.insert(conditions.end(), b->conditions.begin(), b->conditions.end());
  *exec = new CUgraphExec_st{std::move(tasks), std::move(conditions)};
  return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  Emu& e = emu();
  std::lock_guard<std::recursive_mutex> lock(e.mu);
  if (exec == nullptr) return ret(cudaErrorInvalidValue);
  if (!known(stream)) return ret(cudaErrorInvalidResourceHandle);
  if (stream != nullptr && stream->device != t_device)
    return ret(cudaErrorInvalidResourceHandle);  // a launch into another device's stream
  if (!exec->conditions.empty() && e.conditionals == tgemu::Conditionals::RefusedAtLaunch)
    return ret(cudaErrorNotSupported);
  ++e.counts.graph_launches;
  // The handles' defaults, applied when the launch begins to run (in stream order).
  std::vector<std::pair<unsigned long long, unsigned>> defaults;
  for (const auto& c : exec->conditions)
    if (c.assign) defaults.emplace_back(c.handle, c.initial);
  if (!defaults.empty())
    if (cudaError_t r = submit(stream,
                               task("conditions",
                                    [defaults] {
                                      for (auto [h, v] : defaults) emu().conditions[h] = v;
                                    }),
                               /*by_graph=*/true);
        r != cudaSuccess)
      return r;
  for (const Task& t : exec->tasks)
    if (cudaError_t r = submit(stream, t, /*by_graph=*/true); r != cudaSuccess) return r;
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  std::lock_guard<std::recursive_mutex> lock(emu().mu);
  delete graph;
  return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  std::lock_guard<std::recursive_mutex> lock(emu().mu);
  delete exec;
  return cudaSuccess;
}

// A "cubin" of the emulated NVRTC (nvrtc.cpp) is "tgemu-so:" and the path of a shared library
// built from the kernel's source for the host.
cudaError_t cudaLibraryLoadData(cudaLibrary_t* library, const void* code, cudaJitOption*, void**,
                                unsigned int, cudaLibraryOption*, void**, unsigned int) {
  std::lock_guard<std::recursive_mutex> lock(emu().mu);
  const auto* text = static_cast<const char*>(code);
  constexpr const char* kMagic = "tgemu-so:";
  if (text == nullptr || std::strncmp(text, kMagic, std::strlen(kMagic)) != 0)
    return ret(cudaErrorInvalidKernelImage);
  void* so = dlopen(text + std::strlen(kMagic), RTLD_NOW | RTLD_LOCAL);
  if (so == nullptr) return ret(cudaErrorInvalidKernelImage);
  *library = new CUlib_st{so};
  return cudaSuccess;
}

cudaError_t cudaLibraryGetKernel(cudaKernel_t* kernel, cudaLibrary_t library, const char* name) {
  std::lock_guard<std::recursive_mutex> lock(emu().mu);
  if (library == nullptr) return ret(cudaErrorInvalidResourceHandle);
  std::string entry = std::string("tgemu_run_") + name;
  auto run = reinterpret_cast<void (*)(const void*, unsigned, unsigned)>(
      dlsym(library->so, entry.c_str()));
  auto size = reinterpret_cast<size_t (*)()>(dlsym(library->so, "tgemu_params_size"));
  auto stuck = reinterpret_cast<bool (*)()>(dlsym(library->so, "tg_host_stuck"));
  if (run == nullptr || size == nullptr || stuck == nullptr) return ret(cudaErrorSymbolNotFound);
  *kernel = new CUkern_st{run, size(), stuck};
  return cudaSuccess;
}

cudaError_t cudaLibraryUnload(cudaLibrary_t library) {
  std::lock_guard<std::recursive_mutex> lock(emu().mu);
  delete library;
  return cudaSuccess;
}

// Generated kernels only (cudaLibraryGetKernel's): kernels.cu's launches go to tgemu_launch.
// Their one parameter is a struct, copied at the launch as CUDA copies parameters.
cudaError_t cudaLaunchKernel(const void* func, dim3 grid, dim3 block, void** args,
                             size_t shared, cudaStream_t stream) {
  std::lock_guard<std::recursive_mutex> lock(emu().mu);
  const auto* k = static_cast<const CUkern_st*>(func);
  if (k == nullptr || args == nullptr || shared > 48 * 1024) return ret(cudaErrorInvalidValue);
  if (grid.y != 1 || grid.z != 1 || block.y != 1 || block.z != 1)
    return ret(cudaErrorInvalidValue);  // generated kernels are one-dimensional
  auto params = std::make_shared<std::vector<char>>(static_cast<const char*>(args[0]),
                                                    static_cast<const char*>(args[0]) + k->params);
  auto* body = new std::function<void()>([k, params, grid, block] {
    k->run(params->data(), grid.x, block.x);
    if (k->stuck()) tgemu_fault("a generated kernel's threads disagree on their waits");
  });
  const cudaError_t before = t_last;
  t_last = cudaSuccess;
  tgemu_launch(stream, grid, block, body, "generated");
  const cudaError_t r = t_last;
  if (r == cudaSuccess) t_last = before;
  return r;
}

cudaError_t cudaGetLastError() {
  Emu& e = emu();
  if (e.sticky != cudaSuccess) return e.sticky;
  cudaError_t r = t_last;
  t_last = cudaSuccess;
  return r;
}

cudaError_t cudaPeekAtLastError() {
  Emu& e = emu();
  return e.sticky != cudaSuccess ? e.sticky : t_last;
}

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidKernelImage: return "cudaErrorInvalidKernelImage";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    case cudaErrorSymbolNotFound: return "cudaErrorSymbolNotFound";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorNotSupported:
      return "cudaErrorNotSupported";
    default: return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorNotSupported:
      return "operation not supported";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    default: return "emulated GPU error";
  }
}

}  // extern "C"
