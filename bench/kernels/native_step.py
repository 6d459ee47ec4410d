"""Workbench: the native decoder step (kernels/native_decoder.cu), phase by phase and whole.

    python bench/kernels/native_step.py [--models t5-small,t5-base] [--precisions float32,bfloat16]
                                        [--json out.json]

Random weights of the real shapes (t5rt.kernels.native_reference.random_model), batch rows N,
32 source tokens, a 64-row cache at position 32. Rows:
  phase kernels: each phase of layer 0 launched alone (t5rt_native_phase_<A>), inside a CUDA graph;
  step (persistent): the whole step as one launch (grid barrier between phases; the L2 prefetch
    of the next phases' weights is off by default: slower on the H100, 986 vs 871 us t5-base bf16);
  step (per-phase launches): the same step as 2 + 8L launches (PDL: with programmatic dependent
    launch; one item a window: T5rtGemv's packing of short items and its one-item-ahead loads
    (lm_head) off, for comparison; QKV, FFN-in
    and lm_head also alone that way; operands from the table: a projection reads its weights'
    addresses from the step table instead of its kernel parameters, as before ABI 7; one
    shared-memory size: every phase launched with the largest phase's shared memory, as before
    per-phase sizes, which at 32 rows filled an SM and kept PDL from overlapping two phases);
  step + argmax: the persistent step and greedy's token choice, one CUDA graph (per decoder step).
Floor: the bytes a phase must read (weights, attention K/V rows) over peak HBM bandwidth.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import t5rt.kernels as K
from t5rt.kernels import native_reference as R
from t5rt.kernels.native import LAYER_PHASES, Phase

from _bench import Row, cupy, peak_tbps, report, time_device

SHAPES = {  # d, heads, d_kv, d_ff, layers, gated
    "t5-small": (512, 8, 64, 2048, 6, False),
    "t5-base": (768, 12, 64, 3072, 12, False),
    "t5-large": (1024, 16, 64, 4096, 24, False),
    "flan-t5-base": (768, 12, 64, 2048, 12, True),
}
V, S, T, POS = 32128, 32, 64, 32


def make_table(name: str, act_dtype: str, n: int, dev=None):
    cp = cupy()
    from t5rt.kernels.native import DeviceModel, StepBuffers, StepTable
    from t5rt.weights import to_storage

    d, h, dk, f, layers, gated = SHAPES[name]
    if dev is None:
        dev = DeviceModel(R.random_model(d, h, dk, f, layers, V, act_dtype, gated, seed=0))
    m = dev.model
    rng = np.random.default_rng(1)
    act = lambda *shape: cp.asarray(to_storage(rng.standard_normal(shape).astype(np.float32) * 0.5, act_dtype))  # noqa: E731
    bufs = StepBuffers(
        input_ids=cp.asarray(rng.integers(0, V, (n, 1)).astype(np.int64)),
        position=cp.full((n,), POS, cp.int64), encoder_attention_mask=cp.ones((n, S), cp.int64),
        cross_k=[act(n, h, S, dk) for _ in range(layers)], cross_v=[act(n, h, S, dk) for _ in range(layers)],
        self_k=[act(n, h, T, dk) for _ in range(layers)], self_v=[act(n, h, T, dk) for _ in range(layers)],
        logits=cp.zeros((n, V), cp.float32))
    return m, StepTable(dev, bufs)


def phase_bytes(m, ph: Phase, n: int) -> int:
    e = np.dtype(m.emb.dtype).itemsize
    d, I, F = m.d, m.inner, m.d_ff
    w = {Phase.EMBED: n * d * e, Phase.SELF_QKV: 3 * I * d * e, Phase.SELF_OUT: d * I * e,
         Phase.CROSS_Q: I * d * e, Phase.CROSS_OUT: d * I * e,
         Phase.FFN_IN: (2 if m.gated else 1) * F * d * e, Phase.FFN_OUT: d * F * e,
         Phase.LM_HEAD: m.vocab * d * 4 + n * m.vocab * 4,
         Phase.SELF_ATTN: n * 2 * m.heads * (POS + 1) * m.d_kv * e,
         Phase.CROSS_ATTN: n * 2 * m.heads * S * m.d_kv * e}
    return int(w[ph])


def run(models=("t5-small",), precisions=("float32", "bfloat16"), batches=(1,)) -> list[Row]:
    """run_all.py's entry: rows only."""
    return measure(list(models), list(precisions), list(batches))[0]


def measure(models: list[str], precisions: list[str], batches: list[int]) -> tuple[list[Row], list[dict]]:
    cp = cupy()
    rows, records = [], []
    for name in models:
        for act_dtype in precisions:
            dev = None
            for n in batches:
                m, tab = make_table(name, act_dtype, n, dev)
                dev = tab.dev
                tag = f"{name} {act_dtype} N={n}"
                step_bytes = sum(phase_bytes(m, p, n) for p in LAYER_PHASES) * len(m.layers) \
                    + phase_bytes(m, Phase.EMBED, n) + phase_bytes(m, Phase.LM_HEAD, n)
                if n == batches[0]:
                    for ph in (Phase.EMBED, *LAYER_PHASES, Phase.LM_HEAD):
                        us = time_device(lambda: tab.launch_phase(ph, 0))
                        rows.append(Row(f"phase {ph.name.lower()}", tag, us, phase_bytes(m, ph, n)))
                        records.append(dict(model=name, dtype=act_dtype, n=n, kernel=f"phase {ph.name.lower()}", us=us,
                                            bytes=phase_bytes(m, ph, n)))
                tokens = cp.empty((n,), cp.int64)
                from t5rt.kernels.native import StepTable

                with_prefetch = StepTable(tab.dev, tab.bufs, prefetch=True)
                unpacked = StepTable(tab.dev, tab.bufs, pack=False)
                from_table = StepTable(tab.dev, tab.bufs, phase_args=False)
                one_smem = StepTable(tab.dev, tab.bufs, phase_smem=False)
                if n == batches[0]:  # the lone phases again, one item a GEMV window (T5rtGemv's packing off)
                    for ph in (Phase.SELF_QKV, Phase.FFN_IN, Phase.LM_HEAD):
                        us = time_device(lambda: unpacked.launch_phase(ph, 0))
                        label = f"phase {ph.name.lower()} (one item a window)"
                        rows.append(Row(label, tag, us, phase_bytes(m, ph, n)))
                        records.append(dict(model=name, dtype=act_dtype, n=n, kernel=label, us=us,
                                            bytes=phase_bytes(m, ph, n)))
                variants = {
                    "step (persistent)": tab.launch,
                    "step (persistent, L2 prefetch)": with_prefetch.launch,
                    "step (per-phase launches)": tab.launch_phases,
                    "step (per-phase, PDL)": lambda: tab.launch_phases(pdl=True),
                    "step (per-phase, PDL, 128 threads)": lambda: tab.launch_phases(pdl=True, threads=128),
                    "step (per-phase, PDL, L2 prefetch)": lambda: with_prefetch.launch_phases(pdl=True),
                    "step (per-phase, PDL, one item a window)": lambda: unpacked.launch_phases(pdl=True),
                    "step (per-phase, PDL, operands from the table)": lambda: from_table.launch_phases(pdl=True),
                    "step (per-phase, PDL, one shared-memory size)": lambda: one_smem.launch_phases(pdl=True),
                    "step + argmax": lambda: (tab.launch(), K.argmax_rows(tab.bufs.logits, out=tokens)),
                }
                for label, fn in variants.items():
                    us = time_device(fn, reps=10, iters=30)
                    rows.append(Row(label, tag, us, step_bytes))
                    records.append(dict(model=name, dtype=act_dtype, n=n, kernel=label, us=us, bytes=step_bytes))
                tab = m = with_prefetch = unpacked = from_table = one_smem = None
            dev = None
            cp.get_default_memory_pool().free_all_blocks()
    return rows, records


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="t5-small,t5-base")
    ap.add_argument("--precisions", default="float32,bfloat16")
    ap.add_argument("--batches", default="1,4,32")
    ap.add_argument("--json")
    a = ap.parse_args()
    print("kernels from", K.source())
    rows, records = measure(a.models.split(","), a.precisions.split(","), [int(b) for b in a.batches.split(",")])
    report("native decoder step", rows)
    if a.json:
        name, peak = peak_tbps()
        with open(a.json, "w") as f:
            json.dump({"device": name, "peak_tbps": peak, "rows": records}, f, indent=1)
