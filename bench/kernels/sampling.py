"""Workbench: topk_topp_sample (temperature + top-k + top-p + draw, one block per row).

    python bench/kernels/sampling.py

Floor: the logits read once (N * V * 4 bytes); the kernel reads them from L2 several times.
Compared with the same filtering done with cupy array code (sort-based, as in HF).
"""

from __future__ import annotations

import numpy as np

import t5rt.kernels as K
from t5rt.kernels import reference as R

from _bench import Row, cupy, report, time_device, time_eager, time_host

V = 32128
CASES = [(1.0, 0, 1.0), (0.7, 50, 1.0), (1.0, 0, 0.9), (0.8, 50, 0.95)]


def check() -> str:
    cp = cupy()
    g = np.random.default_rng(2)
    logits = (g.standard_normal((8, 1000)) * 3).astype(np.float32)
    bad = 0
    for case in CASES:
        got = K.topk_topp_sample(cp.asarray(logits), cp.asarray([5], dtype=np.uint64),
                                 cp.asarray([3], dtype=np.int64), K.SampleOptions(*case)).get()
        bad += int((got != R.topk_topp_sample(logits, 5, 3, *case)).sum())
    return "ok" if bad == 0 else f"{bad} tokens differ"


def cupy_sample(cp, logits, case, u):
    """Array-code baseline: sort, filter, softmax, inverse CDF (allocates; not graph-safe)."""
    temperature, top_k, top_p = case
    x = logits / np.float32(temperature)
    if top_k:
        kth = cp.sort(x, axis=-1)[:, -top_k][:, None]
        x = cp.where(x >= kth, x, -cp.inf)
    if top_p < 1:
        s = cp.sort(x, axis=-1)
        p = cp.exp(s - s[:, -1:])
        c = cp.cumsum(p / p.sum(-1, keepdims=True), axis=-1)
        thr = cp.take_along_axis(s, cp.argmax(c > 1 - top_p, axis=-1)[:, None], axis=-1)
        x = cp.where(x >= thr, x, -cp.inf)
    p = cp.exp(x - x.max(-1, keepdims=True))
    c = cp.cumsum(p, axis=-1)
    return (c <= u[:, None] * c[:, -1:]).sum(-1)


def run() -> list[Row]:
    cp = cupy()
    status = check()
    out = []
    seed, step = cp.asarray([1], dtype=np.uint64), cp.asarray([0], dtype=np.int64)
    for n in (1, 8, 64):
        logits = cp.asarray((np.random.default_rng(n).standard_normal((n, V)) * 3).astype(np.float32))
        tokens = cp.empty((n,), dtype=np.int64)
        u = cp.random.random(n)
        for case in CASES:
            opts = K.SampleOptions(*case)
            fn = lambda: K.topk_topp_sample(logits, seed, step, opts, out=tokens)  # noqa: E731
            base = lambda: cupy_sample(cp, logits, case, u)  # noqa: E731
            base_us = f"cupy sort-based (eager) {time_eager(base, reps=5, iters=10):.1f} µs"
            out.append(Row("topk_topp_sample", f"N={n} V={V} T={case[0]} k={case[1]} p={case[2]}",
                           time_device(fn), n * V * 4, time_host(fn), base_us, status))
    return out


if __name__ == "__main__":
    print("kernels from", K.source())
    report("topk_topp_sample", run())
