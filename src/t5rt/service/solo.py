"""The one-request-at-a-time executor: each request runs alone, whole, on the runtime's direct
path (encode once, decode to the end). It is the baseline the in-flight batcher is measured
against (`python -m t5rt.bench --load`), and what RuntimeOptions.inflight=False selects."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np

from .request import Request
from .scheduler import as_request_error
from .stats import ServiceStats


class SoloExecutor:
    def __init__(self, runtime: Any, stats: ServiceStats):
        self.runtime = runtime
        self.stats = stats
        self._pending: deque[Request] = deque()
        self._running = False

    def admit(self, requests: list[Request]) -> None:
        refresh_available(self.runtime)
        self._pending.extend(requests)

    def busy(self) -> bool:
        return bool(self._pending)

    def waiting(self) -> int:
        return len(self._pending)

    def slots_in_use(self) -> int:
        return 1 if self._running else 0

    def step(self) -> None:
        """Run the oldest request to its end (a step boundary here is a whole request)."""
        if not self._pending:
            return
        req = self._pending.popleft()
        if req.dropped(time.perf_counter()):
            self._count_drop(req)
            return
        self._running = True
        try:
            out = self.runtime._run_whole(req)
        except Exception as e:  # noqa: BLE001 - the request gets the error, the worker lives on
            self.stats.count("failed")
            req.fail(as_request_error(e))
            return
        finally:
            self._running = False
        if out is None:
            self._count_drop(req)
            return
        finish(req, out, self.stats)

    def _count_drop(self, req: Request) -> None:
        self.stats.count("cancelled" if req.future.cancelled() else "timed_out")

    def warm(self, src_lens: list[int]) -> dict[str, Any]:
        """Runtime.warmup on the worker: one greedy single-input request per source bucket (the
        direct path's encoder, decoder buffers and, on CUDA, graphs for that shape; the runtime
        keeps the max_cached_buckets most recently used)."""
        t0 = time.perf_counter()
        rt = self.runtime
        for s in src_lens:
            ids = np.zeros((1, s), np.int64)
            req = rt._request(None, ids, np.ones_like(ids), None, {"do_sample": False, "num_beams": 1})
            rt._run_whole(req)
        refresh_available(rt)
        return {"seconds": time.perf_counter() - t0, "source_buckets": list(src_lens), "requests": len(src_lens)}

    def fail_all(self, exc: BaseException) -> None:
        while self._pending:
            self.stats.count("failed")
            self._pending.popleft().fail(exc)


def finish(req: Request, out: Any, stats: ServiceStats) -> None:
    """Deliver a finished request's output (stream's last chunk, future, metrics)."""
    now = time.perf_counter()
    stats.first_token(req, now)
    if req.writer is not None:
        req.writer.update(out.sequences[0], finished=True)
    if req.finish(out):
        stats.delivered(sum(len(s) for s in out.sequences), now)
    else:
        stats.count("cancelled")


def refresh_available(runtime: Any) -> None:
    """CUDA: re-read free device memory for the request estimate, here in the scheduler thread
    between steps (never during a capture); callers' threads read the number it leaves."""
    if runtime.device.is_cuda:
        from ..runtime.memory import available_bytes

        runtime.available = available_bytes(runtime.device)
