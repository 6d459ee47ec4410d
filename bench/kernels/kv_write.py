"""Workbench: kv_write (new K/V row of every decoder layer into the caches, one launch).

    cmake -S . -B build/kernels && cmake --build build/kernels   # optional: NVRTC otherwise
    python bench/kernels/kv_write.py

Floor: every new row read once and written once: 2L * N * H * Dk * itemsize * 2 bytes.
"""

from __future__ import annotations

import numpy as np

import t5rt.kernels as K
from t5rt.kernels import reference as R

from _bench import Row, cupy, report, time_device, time_host

# (name, layers, heads, d_kv, T_max)
MODELS = [("t5-small", 6, 8, 64, 128), ("t5-base", 12, 12, 64, 128), ("t5-large", 24, 16, 64, 128)]


def check() -> str:
    cp = cupy()
    g = np.random.default_rng(0)
    caches = [g.standard_normal((3, 2, 7, 12)).astype(np.float16) for _ in range(4)]
    rows = [g.standard_normal((3, 2, 1, 12)).astype(np.float16) for _ in range(4)]
    pos = np.array([0, 6, 3], dtype=np.int64)
    d = [cp.asarray(c) for c in caches]
    K.kv_write(K.PointerTable(d), K.PointerTable([cp.asarray(r) for r in rows]), cp.asarray(pos))
    ok = all(np.array_equal(a.get(), b) for a, b in zip(d, R.kv_write(caches, rows, pos)))
    return "ok" if ok else "MISMATCH"


def run() -> list[Row]:
    cp = cupy()
    status = check()
    rows_out = []
    for name, layers, h, dk, t in MODELS:
        for n in (1, 4, 32):
            for dtype in (np.float16, np.float32):
                caches = [cp.zeros((n, h, t, dk), dtype=dtype) for _ in range(2 * layers)]
                rows = [cp.ones((n, h, 1, dk), dtype=dtype) for _ in range(2 * layers)]
                ct, rt = K.PointerTable(caches), K.PointerTable(rows)
                pos = cp.full((n,), t // 2, dtype=np.int64)
                fn = lambda: K.kv_write(ct, rt, pos)  # noqa: E731
                nbytes = 2 * layers * n * h * dk * np.dtype(dtype).itemsize * 2
                rows_out.append(Row("kv_write", f"{name} N={n} {np.dtype(dtype).name}", time_device(fn),
                                    nbytes, time_host(fn), "", status))
    return rows_out


if __name__ == "__main__":
    print("kernels from", K.source())
    report("kv_write", run())
