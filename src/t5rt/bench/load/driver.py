"""Open-loop driving and what is computed from it.

Open loop: requests are sent at their arrival times whatever the system is doing (a closed
loop would slow its senders down with the system and hide queueing). After the last arrival
the driver waits up to `drain_s` for answers, then cancels the rest (counted as unfinished).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..timing import percentile
from .targets import Outcome
from .workload import LoadRequest


async def drive(target: Any, requests: list[LoadRequest], arrivals: list[float],
                drain_s: float) -> tuple[list[Outcome], int, float]:
    """-> (finished outcomes, requests sent, seconds from the first arrival to the last answer)."""
    start = time.perf_counter()
    tasks = []
    for req, at in zip(requests, arrivals):
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(target.run(req)))
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=drain_s)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    outs = [t.result() for t in tasks if t.done() and not t.cancelled()]
    first = start + (arrivals[0] if arrivals else 0.0)
    last = max((o.end for o in outs if o.end is not None), default=time.perf_counter())
    return outs, len(tasks), max(last - first, 1e-9)


async def closed_loop(target: Any, requests: list[LoadRequest]) -> list[Outcome]:
    """One request after another (warm-up, solo calibration)."""
    return [await target.run(r) for r in requests]


@dataclass
class SoloModel:
    """Solo latency per mode as a + b * new_tokens, fitted on requests run one at a time."""

    coef: dict[str, tuple[float, float]]

    @classmethod
    def fit(cls, outcomes: list[Outcome]) -> "SoloModel":
        coef = {}
        for mode in {o.req.mode for o in outcomes}:
            pts = [(o.req.new_tokens, o.latency) for o in outcomes if o.req.mode == mode and o.latency]
            x = np.array([p[0] for p in pts], float)
            y = np.array([p[1] for p in pts], float)
            if len(pts) >= 2 and np.ptp(x) > 0:
                b, a = np.polyfit(x, y, 1)
                if a < 0 or b < 0:  # noisy few points: a line through 0, or a constant
                    a, b = (0.0, float(x @ y / (x @ x))) if a < 0 else (float(y.mean()), 0.0)
                coef[mode] = (float(a), float(b))
            elif pts:
                coef[mode] = (float(y.mean()), 0.0)
        return cls(coef)

    def predict(self, req: LoadRequest) -> float | None:
        ab = self.coef.get(req.mode)
        return None if ab is None else max(ab[0] + ab[1] * req.new_tokens, 1e-6)


def _pct(xs: list[float], q: float) -> float | None:
    return percentile(sorted(xs), q) if xs else None


def summarize(system: str, rate: float, outs: list[Outcome], sent: int, elapsed: float,
              solo: SoloModel | None, before: dict | None, after: dict | None) -> dict[str, Any]:
    ok = [o for o in outs if o.error is None and o.end is not None]
    lat = [o.latency for o in ok]
    ttft = [o.ttft for o in ok if o.ttft is not None]
    row: dict[str, Any] = dict(
        system=system, offered_rps=rate, sent=sent, completed=len(ok), failed=len(outs) - len(ok),
        unfinished=sent - len(outs), throughput_rps=len(ok) / elapsed,
        tokens_per_s=sum(o.tokens for o in ok) / elapsed,
        latency_p50_s=_pct(lat, 50), latency_p99_s=_pct(lat, 99),
        ttft_p50_s=_pct(ttft, 50), ttft_p99_s=_pct(ttft, 99))
    if solo is not None:
        by_mode: dict[str, list[float]] = {}
        for o in ok:
            if p := solo.predict(o.req):
                by_mode.setdefault(o.req.mode, []).append(o.latency / p)
        ratios = [r for rs in by_mode.values() for r in rs]
        row["slowdown_p50"], row["slowdown_p99"] = _pct(ratios, 50), _pct(ratios, 99)
        # which requests make the tail: the p99 slowdown of each mode on its own
        row["slowdown_p99_by_mode"] = {m: _pct(by_mode[m], 99) for m in sorted(by_mode)}
    if before is not None and after is not None and after.get("steps", 0) > before.get("steps", 0):
        steps = after["steps"] - before["steps"]

        def per_step(key: str) -> float:  # this run's mean of a runtime-wide per-step mean
            return (after[key] * after["steps"] - before[key] * before["steps"]) / steps

        row.update(host_s_per_step=per_step("host_s_per_step"), engine_s_per_step=per_step("engine_s_per_step"),
                   rows_per_step=per_step("mean_rows_per_step"), join_s_per_step=per_step("join_s_per_step"),
                   steps=steps)
        sched = after.get("scheduler_steps", 0) - before.get("scheduler_steps", 0)
        if sched > 0:
            row["pools_per_step"] = steps / sched
            row["checks_per_step"] = (after.get("done_checks", 0) - before.get("done_checks", 0)) / steps
    return row


def saturated(row: dict[str, Any]) -> bool:
    """It could not keep up: answers came back markedly slower than requests arrived."""
    return row["unfinished"] > 0 or row["completed"] < 0.9 * row["sent"] \
        or row["throughput_rps"] < 0.7 * row["offered_rps"]
