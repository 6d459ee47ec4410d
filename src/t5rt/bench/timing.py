"""How the bench measures (the method bench/README.md states).

- Warm-up runs are executed and thrown away.
- Systems are interleaved run by run (round-robin), so drift of a shared, noisy machine
  (clocks, other tenants) hits every system alike rather than the one measured last.
- Every timed region is bracketed by a device synchronisation (`System.sync`) and read
  with `time.perf_counter`: the latency a caller of `generate()` sees, including launch
  overhead and the copy of the tokens back to the host.
- Reported: median (p50) and 90th percentile (p90) over the timed runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Stats:
    n: int
    p50: float
    p90: float
    mean: float
    min: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> "Stats":
        if not samples:
            raise ValueError("no samples")
        xs = sorted(samples)
        return cls(n=len(xs), p50=percentile(xs, 50), p90=percentile(xs, 90),
                   mean=sum(xs) / len(xs), min=xs[0])


def percentile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default 'linear' method)."""
    if not sorted_xs:
        raise ValueError("no samples")
    pos = (len(sorted_xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def timed(fn: Callable[[], T], sync: Callable[[], None]) -> tuple[float, T]:
    """(seconds, result) of fn(), with the device synchronised before and after."""
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def round_robin(names: Sequence[str], rounds: int, step: Callable[[str, int], bool]) -> None:
    """Call step(name, round) for `rounds` rounds, each round visiting every name once.

    The order rotates by one each round, so no system always runs first (right after another
    system's allocations) or last. A name whose step returned False (it failed; the caller
    recorded why) is left out of the rounds after it; the others carry on.
    """
    alive = list(names)
    for i in range(rounds):
        if not alive:
            return
        k = i % len(alive)
        for name in alive[k:] + alive[:k]:
            if not step(name, i):
                alive.remove(name)


def device_memory_used(device: str) -> int | None:
    """Bytes in use on the current CUDA device (cudaMemGetInfo: total - free); None on CPU.

    Device-wide, so the runner reads it only around one system's own setup and first runs.
    """
    if device != "cuda":
        return None
    try:
        import cupy

        free, total = cupy.cuda.runtime.memGetInfo()
        return int(total - free)
    except Exception:  # noqa: BLE001 - no cupy: ask torch, which the peers have loaded
        try:
            import torch

            free, total = torch.cuda.mem_get_info()
            return int(total - free)
        except Exception:  # noqa: BLE001
            return None
