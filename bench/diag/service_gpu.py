"""Which in-flight path differs from solo on CUDA (issue 12's 16-thread GPU test): the same 48
mixed requests (tests/test_service.py) through variants of the in-flight runtime, each result
compared with the solo direct path on CUDA and on the CPU. Prints one line per variant:
mismatches by request kind, and how many differ only in scores (max |diff|).

    python bench/diag/service_gpu.py            (on the GPU machine, from the project root)
"""

from __future__ import annotations

import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
import t5rt  # noqa: E402
from conftest import export_tiny, make_t5  # noqa: E402
from test_service import mixed_requests  # noqa: E402


class _Factory:
    def __init__(self, base: Path):
        self.base, self.n = base, 0

    def mktemp(self, name: str) -> Path:
        self.n += 1
        p = self.base / f"{name}{self.n}"
        p.mkdir(parents=True)
        return p


def kind(kw: dict) -> str:
    keys = sorted(k for k in kw if k not in ("input_ids", "attention_mask", "max_new_tokens", "seed"))
    return "+".join(keys) or "greedy"


def compare(name: str, got: list, ref: list, reqs: list[dict]) -> None:
    seq, score = Counter(), Counter()
    worst = 0.0
    for g, r, kw in zip(got, ref, reqs):
        if isinstance(g, BaseException):
            seq[f"{kind(kw)}:{type(g).__name__}"] += 1
        elif g.sequences != r.sequences:
            seq[kind(kw)] += 1
        elif not np.allclose(g.scores, r.scores, rtol=1e-5, atol=1e-5):
            score[kind(kw)] += 1
            worst = max(worst, float(np.max(np.abs(np.asarray(g.scores) - np.asarray(r.scores)))))
    print(f"{name:40s} seq-differ {sum(seq.values()):2d} {dict(seq)}  score-only {sum(score.values())} "
          f"(max {worst:.2e}) {dict(score)}", flush=True)
    shown = 0
    for i, (g, r, kw) in enumerate(zip(got, ref, reqs)):
        if shown >= 4 or isinstance(g, BaseException) or g.sequences == r.sequences:
            continue
        shown += 1
        for a, b in zip(g.sequences, r.sequences):
            if a != b:
                at = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                print(f"    #{i} {kind(kw)} inputs={len(kw['input_ids'])} new={kw['max_new_tokens']}: first "
                      f"difference at token {at} of {len(a)}/{len(b)}: {a[at:at + 4]} vs {b[at:at + 4]}; "
                      f"scores {np.round(g.scores, 4).tolist()} vs {np.round(r.scores, 4).tolist()}", flush=True)
                break


def run(rt, reqs, threads: int) -> list:
    def one(i):
        try:
            return rt.generate(**reqs[i]) if i % 2 else rt.submit(**reqs[i]).result(120)
        except Exception as e:  # noqa: BLE001 - reported per kind
            return e
    if threads <= 1:
        return [one(i) for i in range(len(reqs))]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(len(reqs))))


def main() -> None:
    import tempfile

    reqs = mixed_requests(48, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        d = export_tiny(make_t5(21, feed_forward_proj="gated-gelu", tie_word_embeddings=False), _Factory(Path(tmp)), "svc")
        with t5rt.load(d, backend="ort", device="cpu", threads=1, inflight=False) as r:
            solo_cpu = [r.generate(**kw) for kw in reqs]
        with t5rt.load(d, backend="ort", device="cuda", inflight=False) as r:
            solo = [r.generate(**kw) for kw in reqs]
        compare("solo cuda vs solo cpu", solo, solo_cpu, reqs)
        with t5rt.load(d, backend="ort", device="cuda", inflight=False) as r:
            compare("solo cuda again vs solo cuda", [r.generate(**kw) for kw in reqs], solo, reqs)
        with t5rt.load(d, backend="ort", device="cuda", inflight=False, cuda_graphs=False) as r:
            compare("solo cuda no graphs vs solo cuda", [r.generate(**kw) for kw in reqs], solo, reqs)
        with t5rt.load(d, backend="ort", device="cuda", inflight=False) as r:
            # the in-flight pools' self-cache length (the whole output length) on the direct path:
            # does the step's result depend on the cache length on the GPU?
            full = r.runner.decoder_cache_len(r.manifest.max_output_len)
            r.runner.decoder_cache_len = lambda _n: full
            compare(f"solo cuda, cache {full} vs solo cuda", [r.generate(**kw) for kw in reqs], solo, reqs)

        def variant(name: str, threads: int, opts: dict, knob=None) -> None:
            with t5rt.load(d, backend="ort", device="cuda", **opts) as r:
                if knob is not None:
                    knob(r)
                got = run(r, reqs, threads)
            compare(f"{name} vs solo cuda", got, solo, reqs)

        def members_eager(r) -> None:  # the members' decoding graphs off (ORT's stay on)
            r._service().executor._graphs = False

        variant("in-flight 16 threads", 16, {})
        variant("in-flight no graphs, 16 threads", 16, dict(cuda_graphs=False))
        variant("in-flight, ORT graphs only, 16 threads", 16, {}, members_eager)
        from t5rt.engines import ort as ort_engine
        init = ort_engine.OrtSession.__init__

        def no_graph(self, *a, **kw):
            kw["cuda_graph"] = False
            init(self, *a, **kw)
        ort_engine.OrtSession.__init__ = no_graph
        try:
            variant("in-flight, member graphs only, 16 threads", 16, {})
        finally:
            ort_engine.OrtSession.__init__ = init
        with t5rt.load(d, backend="ort", device="cuda") as r:
            one_by_one = run(r, reqs, 1)
        compare("in-flight one at a time vs solo cuda", one_by_one, solo, reqs)
        with t5rt.load(d, backend="ort", device="cuda") as r:
            compare("in-flight 16 threads vs in-flight 1 at a time", run(r, reqs, 16), one_by_one, reqs)
        variant("in-flight no kernels, 16 threads", 16, dict(kernels=False))
        # the native engine: its in-flight pools (several row buckets, each its own step table)
        with t5rt.load(d, backend="native", device="cuda", inflight=False) as r:
            solo_native = [r.generate(**kw) for kw in reqs]
        compare("solo native vs solo cuda (ort)", solo_native, solo, reqs)
        with t5rt.load(d, backend="native", device="cuda") as r:
            got = run(r, reqs, 16)
        compare("in-flight native 16 threads vs solo native", got, solo_native, reqs)


if __name__ == "__main__":
    main()
