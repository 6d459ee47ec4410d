"""Service metrics of one runtime: counters and short windows, written by the scheduler thread,
read as one snapshot (`Runtime.stats()`) from any thread.

host_s_per_step: host time a scheduler step takes to issue one pool's decoder step and its
decoding work (waiting on the device excluded); engine_s_per_step: the part spent in the engine
call (on the CPU that is the engine's compute; on CUDA only its launch), so on the CPU
host - engine is the scheduler's own overhead per step. join_s_per_step: host time the in-flight
scheduler spends letting requests in and out between steps (cancellations, encoder launches, new
members' decoding state), per decoder step: not part of host_s_per_step. pools_per_step: decoder-step
launches per in-flight scheduler step (one per busy slot pool; a row waits for all of them)."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

WINDOW_S = 10.0      # tokens/s over the last this many seconds
TTFT_KEEP = 1000     # time-to-first-token samples kept (the most recent)


class ServiceStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.perf_counter()
        self.done = 0
        self.failed = 0
        self.cancelled = 0
        self.timed_out = 0
        self.rejected = 0          # refused by a full queue (OverloadedError)
        self.pooled = 0            # in-flight request chunks decoded as pooled rows (CUDA)
        self.graphs_captured = 0   # in-flight members' decoding steps captured as CUDA graphs
        self.graphs_reused = 0     # ... replayed from an earlier member on the same rows instead
        self.tokens = 0            # generated tokens delivered (all returned sequences)
        self.steps = 0             # decoder-step launches (one per pool per scheduler step)
        self.scheduler_steps = 0   # in-flight scheduler steps that stepped at least one pool
        self.done_checks = 0       # in-flight done checks (each one host sync: the cadence, or a member at max_new)
        self.row_steps = 0         # occupied rows summed over steps
        self.host_step_s = 0.0     # host time issuing steps (excl. waiting on the device)
        self.engine_step_s = 0.0   # of which in the decoder-step engine call (CPU: its compute)
        self.join_s = 0.0          # in-flight: host time admitting / dropping between steps
        self._token_times: deque[tuple[float, int]] = deque()
        self._ttft: deque[float] = deque(maxlen=TTFT_KEEP)

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + n)

    def delivered(self, tokens: int, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        with self._lock:
            self.done += 1
            self.tokens += tokens
            self._token_times.append((now, tokens))
            self._trim(now)

    def first_token(self, req: Any, now: float) -> None:
        """`req`'s chosen tokens reached the host at `now`: the first time, that is its time to
        first token (kept on the request and in the statistics); later calls change nothing."""
        if req.first_token_at is not None:
            return
        req.first_token_at = now
        with self._lock:
            self._ttft.append(now - req.submitted)

    def stepped(self, rows: int, host_s: float, engine_s: float = 0.0) -> None:
        with self._lock:
            self.steps += 1
            self.row_steps += rows
            self.host_step_s += host_s
            self.engine_step_s += engine_s

    def joined(self, host_s: float) -> None:
        with self._lock:
            self.join_s += host_s

    def _trim(self, now: float) -> None:
        while self._token_times and self._token_times[0][0] < now - WINDOW_S:
            self._token_times.popleft()

    def snapshot(self, **live: Any) -> dict[str, Any]:
        """-> dict: live values (queue depth, slots in use, ...) plus counters and rates."""
        now = time.perf_counter()
        with self._lock:
            self._trim(now)
            span = min(WINDOW_S, max(now - self.started, 1e-9))
            ttft = sorted(self._ttft)
            d = dict(live)
            d.update(
                requests_done=self.done, requests_failed=self.failed, requests_cancelled=self.cancelled,
                requests_timed_out=self.timed_out, requests_rejected=self.rejected,
                requests_pooled=self.pooled,
                graphs_captured=self.graphs_captured, graphs_reused=self.graphs_reused,
                tokens_generated=self.tokens,
                tokens_per_s=sum(n for _, n in self._token_times) / span,
                ttft_p50_s=ttft[len(ttft) // 2] if ttft else None,
                ttft_p99_s=ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))] if ttft else None,
                steps=self.steps,
                mean_rows_per_step=self.row_steps / self.steps if self.steps else 0.0,
                host_s_per_step=self.host_step_s / self.steps if self.steps else 0.0,
                engine_s_per_step=self.engine_step_s / self.steps if self.steps else 0.0,
                join_s_per_step=self.join_s / self.steps if self.steps else 0.0,
                scheduler_steps=self.scheduler_steps, done_checks=self.done_checks,
                # host syncs a pool step: 1 / done_check_interval, more when members reach max_new apart
                checks_per_step=self.done_checks / self.steps if self.steps else None,
                # busy pools a scheduler step (each one decoder-step launch that every row waits for)
                pools_per_step=self.steps / self.scheduler_steps if self.scheduler_steps else None,
            )
        return d
