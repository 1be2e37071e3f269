// The emulated GPU's own interface (Note [An emulated GPU], runtime.cpp): what its kernels, its
// cuBLAS and its NVRTC (each a separate piece) ask of its runtime, and what its tests ask of it.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <functional>

extern "C" {
// Queues `task` (taken over) on stream s as device work: it runs when the stream is drained,
// with device memory readable; while s is being captured it goes into the graph instead.
// `what` names it in messages.
cudaError_t tgemu_submit(cudaStream_t s, const char* what, std::function<void()>* task);
// A kernel launch: the configuration checked as a GPU checks it (cudaErrorInvalidConfiguration,
// left for cudaGetLastError), then submitted. `name` says which kernel (TGEMU_LOG=1 prints it).
void tgemu_launch(cudaStream_t s, dim3 grid, dim3 block, std::function<void()>* body,
                  const char* name);
// A kernel whose threads disagree on their waits, which hangs a GPU: a sticky error from then on.
void tgemu_fault(const char* what);
// Whether [p, p + n) lies inside one live device allocation.
bool tgemu_is_device(const void* p, size_t n);
// Whether s is being captured.
bool tgemu_capturing(cudaStream_t s);
// Whether kernels' reads and writes of device memory are checked (Note [Checked device memory]).
bool tgemu_checked();
}

namespace tgemu {

// What the emulator counted since the process began.
struct Counts {
  int64_t launches = 0;        // kernels and cuBLAS products queued one by one (not by a graph)
  int64_t graph_launches = 0;  // cudaGraphLaunch calls
  int64_t graph_work = 0;      // kernels and products those launches queued
  int64_t kernels_run = 0;     // kernels that ran, in graphs or not
  int64_t captured = 0;        // tasks recorded into graphs
  int64_t syncs = 0;           // times the host waited for a stream with work queued
  int64_t pinned_copies = 0;   // copies between device and pinned host memory
  int64_t device_bytes = 0;    // bytes in live allocations
  // cudaFree calls for a block of a device that was not current then (PyTorch's allocator makes
  // the block's device current to free it; tapegrad does too, Note [Device guard]).
  int64_t frees_elsewhere = 0;
};
Counts counts();
// The device's memory, as cudaMemGetInfo reports its total and cudaMalloc enforces it.
void set_memory_limit(size_t bytes);
size_t memory_limit();
// Conditional graph nodes as a device or driver that fails at them would treat them (to test the
// backend's ways out): kernels' cudaGraphSetConditional calls dropped, handles refused when made
// (cudaErrorNotSupported), or launches of graphs with such nodes refused.
enum class Conditionals { Work, Ignored, RefusedAtCreation, RefusedAtLaunch };
void set_conditionals(Conditionals how);
// The sticky fault, if any (tgemu_fault), for a test to fail on.
const char* fault();

}  // namespace tgemu
