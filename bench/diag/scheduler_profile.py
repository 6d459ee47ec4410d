"""Where the in-flight scheduler's host time goes under load (issue 12).

The H100 load run of 2026-12-07 had host time per scheduler step grow from 0.19 ms (2.3 rows a
step) to 1.48 ms (39 rows) while the engine launch took 0.12-0.17 ms. This drives the load
bench's mixed requests (t5-small shape, bf16) open-loop through one in-flight runtime and splits
every scheduler step by phase: drop + join, the pool's engine launch, the members' decoding work,
the done check (its device wait apart). For each phase it reports wall time and the scheduler
thread's CPU time: wall well above CPU time with no device wait is time spent waiting for the
GIL (the asyncio callers run in the main thread). Then a cProfile of the scheduler thread at the
highest rate with --profile, top functions by own time (on Python 3.12 cProfile sees every
thread, the asyncio callers too, and slows the run down).

    python bench/diag/scheduler_profile.py [--rates 50,100,200] [--backend ort] [--switch 0.0005] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import sys
import time
from collections import defaultdict
from pathlib import Path

from t5rt.bench.load.driver import closed_loop, drive, summarize
from t5rt.bench.load.options import LoadOptions, runtime_switches
from t5rt.bench.load.run import prepare
from t5rt.bench.load.targets import RuntimeTarget
from t5rt.bench.load.workload import poisson_arrivals


class PhaseClock:
    """Wraps the executor's phases; sums wall and thread-CPU seconds per phase."""

    def __init__(self, ex):
        self.wall, self.cpu, self.calls = defaultdict(float), defaultdict(float), defaultdict(int)
        self.members = 0
        self.profile: cProfile.Profile | None = None
        self._wrap(ex, "_drop", "drop")
        self._wrap(ex, "_join", "join")
        self._wrap(ex, "_check", "check")
        self._wrap(ex.dev, "synchronize", "device wait")
        orig_step_pool = ex._step_pool

        def step_pool(pool, members):
            self.members += len(members)
            if not getattr(pool, "_clocked", False):
                self._wrap(pool, "step", "engine launch")
                pool._clocked = True
            return self._timed("step_pool (all)", orig_step_pool, pool, members)

        ex._step_pool = step_pool
        orig_step = ex.step

        def step():
            if self.profile is not None and not getattr(self.profile, "_on", False):
                self.profile.enable()  # profiles the calling (scheduler) thread only
                self.profile._on = True
            return self._timed("step (all)", orig_step)

        ex.step = step

    def _timed(self, name, fn, *a):
        w, c = time.perf_counter(), time.thread_time()
        try:
            return fn(*a)
        finally:
            self.wall[name] += time.perf_counter() - w
            self.cpu[name] += time.thread_time() - c
            self.calls[name] += 1

    def _wrap(self, obj, attr, name):
        fn = getattr(obj, attr)
        setattr(obj, attr, lambda *a, **k: self._timed(name, fn, *a, **k))

    def reset(self):
        self.wall.clear(), self.cpu.clear(), self.calls.clear()
        self.members = 0

    def report(self) -> str:
        steps = max(self.calls["step (all)"], 1)
        lines = [f"  {steps} scheduler steps, {self.members / steps:.1f} members a step; per step (ms):",
                 f"  {'phase':18s} {'wall':>8s} {'cpu':>8s} {'wall-cpu':>9s} {'calls/step':>10s}"]
        for name in sorted(self.wall, key=lambda n: -self.wall[n]):
            w, c = self.wall[name] / steps * 1e3, self.cpu[name] / steps * 1e3
            lines.append(f"  {name:18s} {w:8.3f} {c:8.3f} {w - c:9.3f} {self.calls[name] / steps:10.2f}")
        return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="50,100,200")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--backend", default="ort")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="t5-small")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--switch", type=float, default=None, help="sys.setswitchinterval (s) for the run")
    ap.add_argument("--cache-dir", default="/tmp/t5rt-bench")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--set", action="append", default=[], metavar="OPTION=0|1",
                    help="a boolean RuntimeOptions field for the run, e.g. --set share_pools=0")
    ap.add_argument("--profile", action="store_true", help="cProfile the highest rate (Python 3.12: every thread, and slower)")
    a = ap.parse_args()
    try:
        extra = runtime_switches(a.set)
    except ValueError as e:
        ap.error(str(e))
    if a.switch:
        sys.setswitchinterval(a.switch)
    opts = LoadOptions(model=a.model, precision=a.precision, device=a.device, backend=a.backend,
                       cache_dir=Path(a.cache_dir), systems=("t5rt",))
    p = prepare(opts, log=lambda s: print(s, flush=True))
    target = RuntimeTarget(p.export_dir, inflight=True, backend=a.backend, device=p.device, max_batch=opts.max_batch,
                           **extra)
    print(f"runtime options: {extra or 'defaults'}", flush=True)
    try:
        asyncio.run(closed_loop(target, p.requests(8, 7, every_mode=True)))  # warm up, starts the scheduler
        ex = target.rt._scheduler.executor
        clock = PhaseClock(ex)
        rates = [float(r) for r in a.rates.split(",")]
        for i, rate in enumerate(rates):
            last = i == len(rates) - 1
            if last and a.profile:
                clock.profile = cProfile.Profile()
            clock.reset()
            arrivals = poisson_arrivals(rate, a.duration, 1000 + i)
            before = target.counters()
            outs, sent, elapsed = asyncio.run(drive(target, p.requests(len(arrivals), 2000 + i), arrivals, 30.0))
            row = summarize("t5rt", rate, outs, sent, elapsed, None, before, target.counters())
            print(f"\n== {rate:g} req/s offered (switch interval {sys.getswitchinterval() * 1e3:g} ms): "
                  f"{row['completed']}/{sent} done, {row['throughput_rps']:.1f} req/s, p50 {row['latency_p50_s']:.3f} s, "
                  f"rows/step {row.get('rows_per_step', 0):.1f}, host ms/step {row.get('host_s_per_step', 0) * 1e3:.3f}, "
                  f"join ms/step {row.get('join_s_per_step', 0) * 1e3:.3f}, "
                  f"pools/step {row.get('pools_per_step') or 0:.2f}", flush=True)
            print(clock.report(), flush=True)
        if clock.profile is not None:
            clock.profile.disable()
            s = io.StringIO()
            pstats.Stats(clock.profile, stream=s).sort_stats("tottime").print_stats(a.top)
            print(f"\n== cProfile of the scheduler thread at {rates[-1]:g} req/s (by own time)\n{s.getvalue()}")
    finally:
        target.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
