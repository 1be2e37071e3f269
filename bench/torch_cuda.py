#!/usr/bin/env python3
"""PyTorch's side of bench/bench_cuda.cpp: the same workloads, timed the same way (median of 7
trials, the device synchronized around each), on the same GPU. Run after bench_cuda:
    python3 bench/torch_cuda.py
"""
import math
import time

import torch


def gpu_time(f, seconds=0.3):
    f()
    torch.cuda.synchronize()
    reps = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(reps):
            f()
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if dt >= seconds / 4:
            reps = max(1, int(reps * seconds / dt))
            break
        reps *= 4
    trials = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(reps):
            f()
        torch.cuda.synchronize()
        trials.append((time.perf_counter() - t0) / reps)
    return sorted(trials)[3]


def elementwise():
    n = 1 << 24
    a = torch.randn(n, device="cuda")
    b = torch.randn(n, device="cuda")
    print("\nElementwise, 16M f32 elements")
    print(f"{'op':28s} {'ms':>12s} {'GB/s':>12s}")

    def report(name, s, nbytes):
        print(f"{name:28s} {s * 1e3:12.3f} {nbytes / s / 1e9:12.1f}")

    report("add (2 reads, 1 write)", gpu_time(lambda: a + b), 12 * n)
    report("mul by a scalar", gpu_time(lambda: a * 2.0), 8 * n)
    report("exp", gpu_time(lambda: torch.exp(a)), 8 * n)
    report("gelu", gpu_time(lambda: torch.nn.functional.gelu(a)), 8 * n)
    report("sum (1 read)", gpu_time(lambda: a.sum()), 4 * n)


def copies():
    # 64 MiB of f32 from pageable host memory to the GPU and back: tensor.to as a program calls it.
    n = 1 << 24
    host = torch.randn(n)
    dev = host.to("cuda")
    print("\nCopies, 64 MiB f32, pageable host memory")
    print(f"{'copy':28s} {'ms':>12s} {'GB/s':>12s}")
    for name, f in [("to the GPU", lambda: host.to("cuda")), ("to the host", lambda: dev.to("cpu"))]:
        s = gpu_time(f)
        print(f"{name:28s} {s * 1e3:12.3f} {4 * n / s / 1e9:12.1f}")


def softmax_rows():
    print("\nsoftmax rows, f32")
    print(f"{'op':28s} {'us':>12s} {'GB/s':>12s}")
    for rows, cols in [(1024, 10), (512, 32000)]:
        x = torch.randn(rows, cols, device="cuda")
        n = rows * cols

        def report(op, s, nbytes):
            print(f"{op + f' {rows}x{cols}':28s} {s * 1e6:12.1f} {nbytes / s / 1e9:12.1f}")

        report("softmax", gpu_time(lambda: torch.softmax(x, 1)), 8 * n)
        report("log_softmax", gpu_time(lambda: torch.log_softmax(x, 1)), 8 * n)
        report("logsumexp", gpu_time(lambda: torch.logsumexp(x, 1)), 4 * n)


def products():
    n = 4096
    a = torch.randn(n, n, device="cuda")
    b = torch.randn(n, n, device="cuda")
    flop = 2.0 * n ** 3
    print(f"\nmatmul {n}x{n}x{n}")
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        s = gpu_time(lambda: a @ b)
        print(f"  f32{'+tf32' if tf32 else '':6s} {s * 1e3:10.3f} ms {flop / s / 1e12:10.1f} TFLOP/s")
    torch.backends.cuda.matmul.allow_tf32 = False
    a64, b64 = a.double(), b.double()
    s = gpu_time(lambda: a64 @ b64)
    print(f"  f64       {s * 1e3:10.3f} ms {flop / s / 1e12:10.1f} TFLOP/s")


class Model:
    def __init__(self, widths):
        torch.manual_seed(0)
        self.params = []
        for i in range(len(widths) - 1):
            s = 1.0 / math.sqrt(widths[i])
            w = (torch.rand(widths[i], widths[i + 1]) * (2 * s) - s).cuda().requires_grad_()
            self.params += [w, torch.zeros(widths[i + 1], device="cuda", requires_grad=True)]

    def step(self, x, y):
        h = x
        for i in range(0, len(self.params), 2):
            h = h @ self.params[i] + self.params[i + 1]
            if i + 2 < len(self.params):
                h = torch.tanh(h)
        loss = torch.nn.functional.cross_entropy(h, y)
        grads = torch.autograd.grad(loss, self.params)
        with torch.no_grad():
            for p, g in zip(self.params, grads):
                p.sub_(g * 0.01)
        return loss


def training():
    print("\nTraining steps (forward, backward, SGD), examples/s, PyTorch eager")
    for name, widths in (("MLP 784-500-10", [784, 500, 10]),
                         ("deep MLP 784-3x1000-10", [784, 1000, 1000, 1000, 10])):
        for batch in (1, 60, 1024):
            x = torch.randn(batch, 784, device="cuda")
            y = torch.randint(0, 10, (batch,), device="cuda")
            m = Model(widths)
            s = gpu_time(lambda: m.step(x, y))
            print(f"{name:24s} batch {batch:4d} {batch / s:12.0f}")


if __name__ == "__main__":
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}")
    elementwise()
    copies()
    softmax_rows()
    products()
    training()
