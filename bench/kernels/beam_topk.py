"""Workbench: beam_topk / beam_step (top-k over num_beams * V per batch row; k = 2 * nb).

    python bench/kernels/beam_topk.py

Floor: the scores read once (B * nb * V * 4 bytes). beam_step adds log_softmax (one more read).
Compared with cupy's argpartition + sort on the same [B, nb*V].
"""

from __future__ import annotations

import numpy as np

import t5rt.kernels as K
from t5rt.kernels import reference as R

from _bench import Row, cupy, report, time_device, time_eager, time_host

V = 32128


def check() -> str:
    cp = cupy()
    g = np.random.default_rng(3)
    s = np.round(g.standard_normal((3, 4 * 1001)), 1).astype(np.float32)
    v, i = K.beam_topk(cp.asarray(s), 8)
    rv, ri = R.beam_topk(s, 8)
    logits = (g.standard_normal((8, 1001)) * 4).astype(np.float32)
    beam = g.standard_normal(8).astype(np.float32)
    _, si = K.beam_step(cp.asarray(logits), cp.asarray(beam), 4, 8)
    _, sri = R.beam_step(logits, beam, 4, 8)
    ok = np.array_equal(i.get(), ri) and np.array_equal(v.get(), rv) and np.array_equal(si.get(), sri)
    return "ok" if ok else "MISMATCH"


def run() -> list[Row]:
    cp = cupy()
    status = check()
    out = []
    for batch, nb in ((1, 4), (8, 4), (32, 4), (1, 8)):
        k = 2 * nb
        m = nb * V
        scores = cp.asarray(np.random.default_rng(batch).standard_normal((batch, m)).astype(np.float32))
        beam = cp.zeros((batch * nb,), dtype=np.float32)
        ws = K.TopKWorkspace(batch, m, k)
        ws_step = K.TopKWorkspace(batch, m, k, nb)
        fn = lambda: K.beam_topk(scores, k, ws)  # noqa: E731
        step = lambda: K.beam_step(scores.reshape(batch * nb, V), beam, nb, k, ws_step)  # noqa: E731

        def base():
            idx = cp.argpartition(-scores, k, axis=-1)[:, :k]
            val = cp.take_along_axis(scores, idx, axis=-1)
            order = cp.argsort(-val, axis=-1)
            return cp.take_along_axis(idx, order, axis=-1)

        base_txt = f"cupy argpartition+sort (eager) {time_eager(base, reps=5, iters=10):.1f} µs"
        shape = f"B={batch} nb={nb} V={V} k={k}"
        out.append(Row("beam_topk", shape, time_device(fn), batch * m * 4, time_host(fn), base_txt, status))
        out.append(Row("beam_step", shape, time_device(step), 2 * batch * m * 4, time_host(step),
                       "log_softmax + scores + top-k", status))
    return out


if __name__ == "__main__":
    print("kernels from", K.source())
    report("beam_topk", run())
