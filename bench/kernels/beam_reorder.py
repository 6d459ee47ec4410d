"""Workbench: beam_reorder (valid prefix of every layer's caches gathered by parent beam).

    python bench/kernels/beam_reorder.py

Bytes: gather + scatter each read and write the moved rows (4x the moved prefix); the floor is
one read + one write of the moved prefix (2x), which a single-pass scheme could reach.
Parents shift every beam by one (all rows move), len = T/2.
"""

from __future__ import annotations

import numpy as np

import t5rt.kernels as K
from t5rt.kernels import reference as R

from _bench import Row, cupy, report, time_device, time_host

MODELS = [("t5-small", 6, 8, 64, 128), ("t5-base", 12, 12, 64, 128)]


def check() -> str:
    cp = cupy()
    g = np.random.default_rng(1)
    caches = [g.standard_normal((6, 2, 9, 12)).astype(np.float16) for _ in range(4)]
    parent = np.array([1, 1, 0, 5, 3, 5], dtype=np.int64)
    d = [cp.asarray(c) for c in caches]
    t = K.PointerTable(d)
    K.beam_reorder(t, cp.asarray(parent), cp.asarray([5], dtype=np.int64), K.reorder_scratch(t, 3))
    ok = all(np.array_equal(a.get(), b) for a, b in zip(d, R.beam_reorder(caches, parent, 5)))
    return "ok" if ok else "MISMATCH"


def run() -> list[Row]:
    cp = cupy()
    status = check()
    out = []
    for name, layers, h, dk, t in MODELS:
        for batch, nb in ((1, 4), (8, 4)):
            n = batch * nb
            caches = [cp.zeros((n, h, t, dk), dtype=np.float16) for _ in range(2 * layers)]
            table = K.PointerTable(caches)
            parent = cp.asarray([(b * nb + (j + 1) % nb) for b in range(batch) for j in range(nb)], dtype=np.int64)
            length = cp.asarray([t // 2], dtype=np.int64)
            for slots in (None, 1):
                scratch = K.reorder_scratch(table, slots)
                fn = lambda: K.beam_reorder(table, parent, length, scratch)  # noqa: E731
                moved = 2 * layers * n * h * (t // 2) * dk * 2
                us = time_device(fn)
                label = f"{name} B={batch} nb={nb} len={t // 2} fp16 scratch={'all' if slots is None else slots}"
                out.append(Row("beam_reorder", label, us, 2 * moved, time_host(fn),
                               f"moves {4 * moved / us / 1e3:.0f} GB/s (gather+scatter)", status))
    return out


if __name__ == "__main__":
    print("kernels from", K.source())
    report("beam_reorder", run())
