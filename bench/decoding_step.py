"""Time ONE decoding step (strategy.step on random logits) the way the runtime runs it.

    python bench/decoding_step.py --out decoding_step.md          # GPU: CUDA graph replay
    python bench/decoding_step.py --cpu --vocab 384 --steps 8     # smoke run on numpy

Cases: greedy, beam 4, sampling (top_k=50, top_p=0.9) at batch 1 and 8, vocab 32128 (t5-small).
Modes (t5rt.decoding.make_strategy):
  array    fused=False, kernels=None: the array code only (cupy elementwise ops, sort-free top-k)
  fused    one state-update kernel per step (t5rt.kernels sample_update / beam_update); token
           choice still array code
  kernels  fused + t5rt.kernels for the choice (argmax_logsumexp, sample_logprob,
           beam_step)
Per case: a fresh strategy with max_new_tokens = --steps; step 0 runs eagerly (compiles and
loads everything), step 1 is captured as a CUDA graph, then the graph is replayed for the
remaining steps between two CUDA events: "graph us/step" is device time per step with replays
back to back (launch gaps included). eos gets -1e4 in the logits so no sequence finishes (a
finished strategy would skip its work). "eager us/step" is wall time of un-captured step()
calls (synchronised), "host us/step" the host time to issue one eager step (how launch-bound
the eager path is). Median over --repeats fresh strategies.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import numpy as np

CASES = {
    "greedy": dict(),
    "beam4": dict(num_beams=4),
    "sampling": dict(do_sample=True, top_k=50, top_p=0.9, seed=1),
}
MODES = ("array", "fused", "kernels")
EOS = 1


def _strategy(xp: Any, case: str, mode: str, batch: int, vocab: int, steps: int, kernels: Any) -> Any:
    from t5rt import GenerationConfig
    from t5rt.decoding import make_strategy

    cfg = GenerationConfig(max_new_tokens=steps, **CASES[case])
    cfg.validate()
    kw: dict[str, Any] = dict(fused=False)
    if xp is not np and mode != "array":
        kw = dict(fused=True, kernels=kernels if mode == "kernels" else None)
    return make_strategy(xp, cfg, batch=batch, vocab_size=vocab, max_new_tokens=steps,
                         pad_token_id=0, eos_token_id=EOS, decoder_start_token_id=0, **kw)


def _logits(xp: Any, rows: int, vocab: int) -> Any:
    rs = np.random.default_rng(rows)
    x = (rs.standard_normal((rows, vocab)) * 3).astype(np.float32)  # [rows, V]
    x[:, EOS] = -1.0e4  # nothing finishes: every timed step does the full work
    return xp.asarray(x)


def time_gpu(case: str, mode: str, batch: int, vocab: int, steps: int, kernels: Any) -> dict[str, float]:
    import cupy

    from t5rt.runtime.cuda_graph import CapturedStep

    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        s = _strategy(cupy, case, mode, batch, vocab, steps, kernels)
        src = _logits(cupy, s.rows, vocab)
        logits = cupy.empty_like(src)  # the engine's output buffer
        cupy.copyto(logits, src)
        s.step(logits)  # step 0 eager
        graph = CapturedStep(lambda: s.step(logits), stream, cupy.cuda.MemoryPool())  # records step 1, runs nothing
        graph.launch()  # step 1
        stream.synchronize()
        n = steps - 3
        e0, e1 = cupy.cuda.Event(), cupy.cuda.Event()
        e0.record(stream)
        for _ in range(n):
            graph.launch()
        e1.record(stream)
        e1.synchronize()
        graph_us = cupy.cuda.get_elapsed_time(e0, e1) * 1e3 / n
        assert not bool(s.done()) and int(s.step_counter) == n + 2, "strategy finished early"
        # eager: a fresh strategy, step() called directly
        s = _strategy(cupy, case, mode, batch, vocab, steps, kernels)
        s.step(logits)
        stream.synchronize()
        m = min(16, steps - 2)
        host = 0.0
        t0 = time.perf_counter()
        for _ in range(m):
            h0 = time.perf_counter()
            s.step(logits)
            host += time.perf_counter() - h0
        stream.synchronize()
        eager_us = (time.perf_counter() - t0) * 1e6 / m
    return dict(graph_us=graph_us, eager_us=eager_us, host_us=host * 1e6 / m)


def time_cpu(case: str, mode: str, batch: int, vocab: int, steps: int) -> dict[str, float]:
    s = _strategy(np, case, mode, batch, vocab, steps, None)
    logits = _logits(np, s.rows, vocab)
    s.step(logits)
    m = steps - 2
    t0 = time.perf_counter()
    for _ in range(m):
        s.step(logits)
    us = (time.perf_counter() - t0) * 1e6 / m
    return dict(graph_us=float("nan"), eager_us=us, host_us=us)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=32128)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--steps", type=int, default=64, help="max_new_tokens of each timed strategy")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cpu", action="store_true", help="numpy, array code only (a smoke run)")
    ap.add_argument("--out", default=None, help="also write the table (markdown) here")
    a = ap.parse_args(argv)
    batches = [int(b) for b in a.batches.split(",")]
    cases = a.cases.split(",")
    modes = ["array"] if a.cpu else a.modes.split(",")
    unknown = [c for c in cases if c not in CASES] + [m for m in modes if m not in MODES]
    if unknown or a.steps < 6:
        ap.error(f"unknown case/mode {unknown} (cases: {list(CASES)}, modes: {list(MODES)})"
                 if unknown else "--steps must be >= 6")
    kernels, device, source = None, "cpu (numpy)", "-"
    if not a.cpu:
        import cupy

        device = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode()
        if "kernels" in modes:
            import t5rt.kernels as kernels

            source = kernels.source()
    rows = []
    for case in cases:
        for batch in batches:
            for mode in modes:
                runs = [time_cpu(case, mode, batch, a.vocab, a.steps) if a.cpu
                        else time_gpu(case, mode, batch, a.vocab, a.steps, kernels)
                        for _ in range(a.repeats)]
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                rows.append((case, batch, mode, med))
                print(f"{case:9s} b={batch:<3d} {mode:8s} graph {med['graph_us']:9.1f} us  "
                      f"eager {med['eager_us']:9.1f} us  host {med['host_us']:9.1f} us", file=sys.stderr)
    lines = [f"Decoding step, vocab {a.vocab}, max_new_tokens {a.steps}, {device}, kernels: {source}, "
             f"median of {a.repeats}", "",
             "| case | batch | mode | graph us/step | eager us/step | host us/step (eager) |",
             "|---|---:|---|---:|---:|---:|"]
    for case, batch, mode, med in rows:
        lines.append(f"| {case} | {batch} | {mode} | {med['graph_us']:.1f} | {med['eager_us']:.1f} | "
                     f"{med['host_us']:.1f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if a.out:
        with open(a.out, "w") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
