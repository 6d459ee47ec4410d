"""Workbench: argmax_rows vs cupy.argmax(axis=-1) on logits [N, 32128] (greedy decoding).

    python bench/kernels/argmax.py

Floor: the logits read once (N * V * 4 bytes).
"""

from __future__ import annotations

import numpy as np

import t5rt.kernels as K
from t5rt.kernels import reference as R

from _bench import Row, cupy, report, time_device, time_eager, time_host

V = 32128


def check() -> str:
    cp = cupy()
    x = np.round(np.random.default_rng(4).standard_normal((5, V)), 1).astype(np.float32)
    return "ok" if np.array_equal(K.argmax_rows(cp.asarray(x)).get(), R.argmax_rows(x)) else "MISMATCH"


def run() -> list[Row]:
    cp = cupy()
    status = check()
    out = []
    for n in (1, 4, 32, 128):
        logits = cp.asarray(np.random.default_rng(n).standard_normal((n, V)).astype(np.float32))
        tokens = cp.empty((n,), dtype=np.int64)
        fn = lambda: K.argmax_rows(logits, out=tokens)  # noqa: E731
        base = lambda: cp.argmax(logits, axis=-1)  # noqa: E731
        base_txt = f"cupy argmax (eager) {time_eager(base):.2f} µs"
        out.append(Row("argmax_rows", f"N={n} V={V}", time_device(fn), n * V * 4, time_host(fn), base_txt, status))
    return out


if __name__ == "__main__":
    print("kernels from", K.source())
    report("argmax_rows", run())
