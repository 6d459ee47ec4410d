"""Soak of the service core (issue 12 item 5): open-loop mixed load at ~70% of saturation for a
long time on one runtime; no error, device and host memory flat, a sample of outputs re-checked
against the same requests run alone.

    python bench/soak.py --saturation 180 --minutes 10 --json bench/results/soak_h100.json
    python bench/soak.py --rate 4 --minutes 0.5 --device cpu --model DIR   # a short CPU try

--saturation S: the highest throughput (req/s) `python -m t5rt.bench --load` measured for t5rt
on this machine; the soak offers --fraction (0.7) of it. Memory is sampled every --sample-s:
device bytes in use (cudaMemGetInfo), cupy's pool, host RSS. "Flat": the last minute's mean
exceeds the first minute's (after warm-up) by at most --mem-tolerance (5%) + 64 MiB.
Every --check-every-th request of a deterministic mode (greedy, seeded sampling, beam) is run
again alone afterwards (RuntimeOptions(inflight=False)) and must give the same tokens.
Exit status 0 only when all three hold.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path

from t5rt.bench.load.options import LoadOptions, runtime_switches
from t5rt.bench.load.run import prepare
from t5rt.bench.load.targets import RuntimeTarget
from t5rt.bench.results import describe_machine

MIB = 1 << 20


def memory(device: str) -> dict[str, float]:
    out = {"host_rss_mib": _rss_mib()}
    if device == "cuda":
        import cupy

        free, total = cupy.cuda.runtime.memGetInfo()
        out["device_used_mib"] = (total - free) / MIB
        out["cupy_pool_used_mib"] = cupy.get_default_memory_pool().used_bytes() / MIB
    return out


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


async def soak(target: RuntimeTarget, prepared, rate: float, seconds: float, sample_s: float,
               check_every: int, log) -> tuple[dict, list, list]:
    """-> (counts {"requests", "errors", "error_examples"}, memory samples, the re-checked outputs).
    Only the outputs to re-check are kept: keeping every output would grow this process's own
    memory by the load (~8 KB a request: the first H100 soak's host RSS growth was that)."""
    rng = random.Random(1)
    start = time.perf_counter()
    pending: set = set()
    samples, checked = [], []
    counts: dict = {"requests": 0, "errors": 0, "error_examples": []}

    def done(task) -> None:
        pending.discard(task)
        out = task.result()
        if out.error:
            counts["errors"] += 1
            if len(counts["error_examples"]) < 5:
                counts["error_examples"].append(out.error)

    next_arrival, next_sample, i = start, start, 0
    while True:
        now = time.perf_counter()
        if now - start >= seconds:
            break
        if now >= next_sample:
            samples.append(dict(t=now - start, **memory(prepared.device), **target.counters()))
            log(f"[soak] t={now - start:6.0f}s {samples[-1]}")
            next_sample += sample_s
        if now >= next_arrival:
            req = prepared.requests(1, seed=10_000 + i)[0]
            task = asyncio.ensure_future(target.run(req))
            pending.add(task)
            task.add_done_callback(done)
            if i % check_every == 0:
                checked.append((i, task))
            i += 1
            counts["requests"] = i
            next_arrival += rng.expovariate(rate)
            continue
        await asyncio.sleep(min(next_arrival, next_sample) - now)
    if pending:
        await asyncio.gather(*pending)
    return counts, samples, [(k, t.result()) for k, t in checked]


def flat(samples: list[dict], key: str, tolerance: float) -> tuple[bool, float, float]:
    span = samples[-1]["t"]
    first = [s[key] for s in samples if 60 <= s["t"] < 120] or [s[key] for s in samples[: max(1, len(samples) // 4)]]
    last = [s[key] for s in samples if s["t"] >= span - 60] or [samples[-1][key]]
    a, b = sum(first) / len(first), sum(last) / len(last)
    return b <= a * (1 + tolerance) + 64, a, b


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--backend", default="auto")
    p.add_argument("--saturation", type=float, default=None, help="measured saturation throughput (req/s)")
    p.add_argument("--fraction", type=float, default=0.7)
    p.add_argument("--rate", type=float, default=None, help="offered req/s (instead of --saturation)")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--sample-s", type=float, default=10.0)
    p.add_argument("--check-every", type=int, default=25)
    p.add_argument("--mem-tolerance", type=float, default=0.05)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--inflight-kernels", action=argparse.BooleanOptionalAction, default=None,
                   help="RuntimeOptions.inflight_kernels (default: the runtime's default)")
    p.add_argument("--set", action="append", default=[], metavar="OPTION=0|1",
                   help="a boolean RuntimeOptions field for the soak, e.g. --set share_pools=0 (repeatable)")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    if (a.rate is None) == (a.saturation is None):
        p.error("give --rate or --saturation")
    rate = a.rate if a.rate is not None else a.fraction * a.saturation
    switches = {} if a.inflight_kernels is None else {"inflight_kernels": a.inflight_kernels}
    try:
        switches.update(runtime_switches(a.set))
    except ValueError as e:
        p.error(str(e))
    opts = LoadOptions(model=a.model, device=a.device, precision=a.precision, backend=a.backend,
                       max_batch=a.max_batch, **({"cache_dir": a.cache_dir} if a.cache_dir else {}))
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    prepared = prepare(opts, log)
    target = RuntimeTarget(prepared.export_dir, inflight=True, backend=a.backend, device=prepared.device,
                           max_batch=a.max_batch, **switches)
    asyncio.run(_warm(target, prepared))
    log(f"[soak] {rate:.2f} req/s for {a.minutes:g} min on {prepared.device}")
    counts, samples, checked = asyncio.run(soak(target, prepared, rate, a.minutes * 60, a.sample_s,
                                                a.check_every, log))
    stats = target.counters()
    target.close()

    import t5rt

    solo = t5rt.load(str(prepared.export_dir), backend=a.backend, device=prepared.device, inflight=False)
    mismatches = []
    for k, o in checked:
        if o.error:
            continue
        options = o.req.options()
        want = solo.generate(input_ids=[list(o.req.input_ids)], **options).sequences[0]
        if want != o.sequence:  # which request (its index in the soak) and what it asked for
            at = next((j for j, (x, y) in enumerate(zip(want, o.sequence)) if x != y), min(len(want), len(o.sequence)))
            mismatches.append(dict(request=k, options=options, first_difference_at=at,
                                   tokens=len(o.sequence), solo_tokens=len(want), source_tokens=len(o.req.input_ids),
                                   inflight_token=o.sequence[at] if at < len(o.sequence) else None,
                                   solo_token=want[at] if at < len(want) else None))
    solo.close()
    keys = [k for k in ("device_used_mib", "host_rss_mib") if k in samples[0]]
    mem = {k: flat(samples, k, a.mem_tolerance) for k in keys}
    ok = not counts["errors"] and not mismatches and all(v[0] for v in mem.values())
    doc = {"machine": describe_machine(prepared.device), "model": prepared.label, "precision": prepared.precision,
           "rate_rps": rate, "minutes": a.minutes, "requests": counts["requests"], "errors": counts["errors"],
           "error_examples": counts["error_examples"], "rechecked": len(checked), "mismatches": mismatches,
           "memory": {k: {"flat": v[0], "first_min_mib": v[1], "last_min_mib": v[2]} for k, v in mem.items()},
           "samples": samples, "ok": ok, "pid": os.getpid(),
           "runtime_options": switches, "stats": stats}
    print(json.dumps({k: v for k, v in doc.items() if k != "samples"}, indent=1, default=str))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return 0 if ok else 1


async def _warm(target: RuntimeTarget, prepared) -> None:
    await asyncio.gather(*(target.run(r) for r in prepared.requests(12, seed=5, every_mode=True)))


if __name__ == "__main__":
    sys.exit(main())
