"""Shared by the kernel workbenches: timing (CUDA graph of repeated calls, CUDA events, median),
memory-floor arithmetic and result rows. Not a module of t5rt; run the scripts beside it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

# HBM bandwidth by device name fragment (TB/s), the floor every row is compared against.
PEAK_TBPS = {"H100": 3.35, "H200": 4.8, "A100": 2.0, "L40": 0.86, "B200": 8.0}


@dataclass
class Row:
    kernel: str
    shape: str
    us: float             # median device time per call (inside a CUDA graph)
    bytes: int            # bytes read + written at the memory floor
    host_us: float = 0.0  # Python wrapper cost per call (launch only, no sync)
    baseline: str = ""    # what it is compared against, e.g. "cupy argmax 12.3 us"
    check: str = "ok"

    def gbps(self) -> float:
        return self.bytes / (self.us * 1e-6) / 1e9

    def floor_us(self, peak_tbps: float) -> float:
        return self.bytes / (peak_tbps * 1e12) * 1e6


def cupy():
    import cupy as cp

    return cp


def peak_tbps() -> tuple[str, float]:
    cp = cupy()
    name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"].decode()
    for frag, tbps in PEAK_TBPS.items():
        if frag in name:
            return name, tbps
    return name, 3.35


def time_device(fn: Callable[[], Any], reps: int = 20, iters: int = 50) -> float:
    """Median microseconds per fn() call: `reps` calls captured in one CUDA graph, replayed."""
    cp = cupy()
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        for _ in range(3):
            fn()  # load, compile, warm up outside the capture
        stream.synchronize()
        stream.begin_capture()
        try:
            for _ in range(reps):
                fn()
        finally:
            graph = stream.end_capture()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        graph.launch(stream)
        times = []
        for _ in range(iters):
            start.record(stream)
            graph.launch(stream)
            end.record(stream)
            end.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, end) * 1e3 / reps)
    return statistics.median(times)


def time_eager(fn: Callable[[], Any], reps: int = 20, iters: int = 20) -> float:
    """Median microseconds per fn() launched eagerly back to back (for array-code baselines,
    which allocate and so cannot be graph-captured); includes launch overhead when host-bound."""
    cp = cupy()
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        for _ in range(3):
            fn()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        times = []
        for _ in range(iters):
            start.record(stream)
            for _ in range(reps):
                fn()
            end.record(stream)
            end.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, end) * 1e3 / reps)
    return statistics.median(times)


def time_host(fn: Callable[[], Any], calls: int = 200) -> float:
    """Median-of-5 microseconds of host time per fn() (launch cost; the GPU runs behind)."""
    cp = cupy()
    out = []
    for _ in range(5):
        cp.cuda.Stream.null.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - t0) / calls * 1e6)
        cp.cuda.Device().synchronize()
    return statistics.median(out)


def table(rows: list[Row], peak: float) -> str:
    head = ("| kernel | shape | µs (graph) | floor µs | GB/s | % of peak | host µs/call | compared with | check |\n"
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |\n")
    lines = [
        f"| {r.kernel} | {r.shape} | {r.us:.2f} | {r.floor_us(peak):.2f} | {r.gbps():.0f} | "
        f"{100 * r.gbps() / (peak * 1000):.1f} | {r.host_us:.1f} | {r.baseline} | {r.check} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def report(title: str, rows: list[Row]) -> None:
    name, peak = peak_tbps()
    print(f"## {title} on {name} (floor at {peak} TB/s)\n")
    print(table(rows, peak))
