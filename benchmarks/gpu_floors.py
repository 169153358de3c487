"""What the host and the driver cost on this machine: the floors under rfpipe's GPU path (needs a GPU).

Median microseconds of: filling pinned memory from a pageable frame (numpy, 1..16 threads;
torch's own parallel copy), pinning a frame in place (cudaHostRegister + copy + unregister),
host-to-device copies, and the per-call fixed costs (stream context, output allocation, events,
a Triton launch through the JIT entry and through the compiled kernel).

    python benchmarks/gpu_floors.py
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import triton
import triton.language as tl

DEV = torch.device("cuda")
FRAMES = {"640x480": (480, 640), "1920x1080": (1080, 1920), "3840x2160": (2160, 3840), "8x1920x1080": (8 * 1080, 1920)}


def median_us(fn, reps: int = 30, sync: bool = True) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e6)
    return round(statistics.median(times), 1)


@triton.jit
def _empty_kernel(x_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(x_ptr + i, i.to(tl.uint8), mask=i < n)


def fills() -> None:
    pools = {n: ThreadPoolExecutor(n) for n in (2, 4, 8, 12, 16)}
    for name, (h, w) in FRAMES.items():
        src = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        pinned = torch.empty(src.nbytes, dtype=torch.uint8, pin_memory=True)
        dst = pinned.numpy().reshape(src.shape)
        dev = torch.empty_like(pinned, device=DEV)
        row = {"frame": name, "MB": round(src.nbytes / 2**20, 1)}
        row["copyto_1t"] = median_us(lambda src=src, dst=dst: np.copyto(dst, src), sync=False)
        for chunk_mb in (1, 4):
            rows = max(1, (chunk_mb << 20) // (w * 3))
            for n, pool in pools.items():
                def threaded(src=src, dst=dst, rows=rows, pool=pool, h=h):
                    futures = [pool.submit(np.copyto, dst[r:r + rows], src[r:r + rows]) for r in range(0, h, rows)]
                    for f in futures:
                        f.result()
                row[f"copyto_{n}t_{chunk_mb}MB"] = median_us(threaded, sync=False)
        torch_src = torch.from_numpy(src)
        row["torch_copy"] = median_us(lambda s=torch_src, p=pinned: p.view(s.shape).copy_(s), sync=False)
        row["h2d_pinned"] = median_us(lambda p=pinned, d=dev: d.copy_(p, non_blocking=True))
        row["h2d_pageable"] = median_us(lambda s=torch_src, d=dev: d.copy_(s.view(-1)))

        def registered(s=src, d=dev):
            cudart = torch.cuda.cudart()
            ptr, n = s.ctypes.data, s.nbytes
            assert int(cudart.cudaHostRegister(ptr, n, 0)) == 0
            d.copy_(torch.from_numpy(s).view(-1), non_blocking=True)
            torch.cuda.current_stream().synchronize()
            assert int(cudart.cudaHostUnregister(ptr)) == 0
        try:
            row["register_copy_unregister"] = median_us(registered, reps=10)
        except Exception as error:  # report, keep going
            row["register_copy_unregister"] = repr(error)[:80]
        gbs = {k: round(row["MB"] * 1.048576e3 / v, 1) for k, v in row.items() if isinstance(v, float) and k != "MB"}
        print(row, flush=True)
        print("   GB/s:", gbs, flush=True)


def fixed_costs() -> None:
    x = torch.empty(1 << 20, dtype=torch.uint8, device=DEV)
    stream = torch.cuda.Stream()
    out = {}
    def context():
        with torch.cuda.stream(stream):
            pass
    out["with_stream"] = median_us(context, sync=False)
    out["empty_1x3x560x560"] = median_us(lambda: torch.empty((1, 3, 560, 560), device=DEV), sync=False)

    def event():
        e = torch.cuda.Event()
        e.record(stream)
        torch.cuda.current_stream().wait_event(e)
    out["event_record_wait"] = median_us(event, sync=False)
    out["triton_jit_launch"] = median_us(lambda: _empty_kernel[(4,)](x, 4096, BLOCK=1024), sync=False)
    compiled = _empty_kernel[(4,)](x, 4096, BLOCK=1024)
    handle = torch.cuda.current_stream().cuda_stream
    out["triton_compiled_launch"] = median_us(lambda: compiled[(4, 1, 1)](x, 4096, 1024, stream=handle), sync=False)
    small = torch.empty(1024, dtype=torch.uint8, pin_memory=True)
    out["copy_issue_1KB_pinned"] = median_us(lambda: x[:1024].copy_(small, non_blocking=True), sync=False)
    out["sync_empty_stream"] = median_us(lambda: torch.cuda.current_stream().synchronize(), sync=False)
    print("fixed costs (us):", out, flush=True)


def main() -> None:
    print("device:", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    fixed_costs()
    fills()


if __name__ == "__main__":
    main()
