"""Quick GPU check of the runtime: export a random-weight model shape, time t5rt against HF eager.

    python bench/gpu_quick.py --shape t5-small --precision fp32 --beams 1,4 --out $OUT/quick.json

A development probe (the user-facing benchmark is `python -m t5rt.bench`): it prints the
per-step split (engine / decoding / host) the runtime measures with CUDA events.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="t5-small")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--cache-update", default="write")
    ap.add_argument("--beams", default="1,4")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--src-len", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-cuda-graphs", action="store_true")
    ap.add_argument("--ort-ops", action="store_true", help="print op counts of ORT's optimized CUDA graphs")
    args = ap.parse_args()

    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    import t5rt
    from t5rt.bench.presets import PRESETS
    from t5rt.exporters.options import ExportOptions
    from t5rt.exporters.pipeline import export

    torch.manual_seed(0)
    cfg = T5Config(**PRESETS[args.shape])  # the shapes python -m t5rt.bench uses
    model = T5ForConditionalGeneration(cfg).eval()
    tmp = Path(tempfile.mkdtemp())
    model.save_pretrained(tmp / "src")
    t0 = time.perf_counter()
    export(str(tmp / "src"), tmp / "exp", ExportOptions(precision=args.precision, max_input_len=128,
                                                         max_output_len=128, cache_update=args.cache_update,
                                                         opset=24 if args.cache_update == "inplace" else 17,
                                                         validate=False), log=lambda *a, **k: None)
    print(f"export {time.perf_counter() - t0:.1f}s", flush=True)
    if args.ort_ops:
        import collections

        import onnx
        import onnxruntime as ort

        from t5rt.engines.ort import disabled_optimizers, io_dtypes
        from t5rt.engines.ort_rewrite import rewrite_model_file
        from t5rt.manifest import load_manifest

        man = load_manifest(tmp / "exp")
        for g in ("encoder", "cross_kv", "decoder_step"):
            # the graph as the runtime loads it: t5rt's rewrite, then ORT's optimizers minus the opt-outs
            path = tmp / "exp" / f"{g}.onnx"
            data, note = rewrite_model_file(path, cuda=True)
            print(f"ort_rewrite {g}: {note}", flush=True)
            so = ort.SessionOptions()
            so.optimized_model_filepath = str(tmp / f"{g}.opt.onnx")
            ort.InferenceSession(data or str(path), so, providers=["CUDAExecutionProvider"],
                                 disabled_optimizers=disabled_optimizers(io_dtypes(man.graphs[g]), True))
            mm = onnx.load(str(tmp / f"{g}.opt.onnx"), load_external_data=False)
            c = collections.Counter(n.op_type for n in mm.graph.node)
            print(f"ORT-optimized {g}: {len(mm.graph.node)} nodes {dict(c.most_common())}", flush=True)
    rt = t5rt.load(tmp / "exp", backend="ort", device="cuda", profile=True, cuda_graphs=not args.no_cuda_graphs)
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 32000, (args.batch, args.src_len)).astype(np.int64)
    mask = np.ones_like(ids)
    hf = model.cuda()
    results = {}
    for beams in [int(b) for b in args.beams.split(",")]:
        kw = dict(max_new_tokens=args.new, min_new_tokens=args.new, num_beams=beams)
        for _ in range(2):
            out = rt.generate(input_ids=ids, attention_mask=mask, **kw)
        times, tim = [], []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            out = rt.generate(input_ids=ids, attention_mask=mask, **kw)
            times.append(time.perf_counter() - t0)
            tim.append(rt.last_timings)
        row = {"t5rt_s": statistics.median(times)}
        for k in ("encode_s", "decode_s", "engine_s", "decoding_s", "host_s", "steps"):
            row[k] = statistics.median(t[k] for t in tim)
        n = row["steps"]
        row["step_ms"] = row["decode_s"] / n * 1e3
        row["engine_step_ms"] = row["engine_s"] / n * 1e3
        row["decoding_step_ms"] = row["decoding_s"] / n * 1e3
        row["host_step_ms"] = row["host_s"] / n * 1e3
        if not args.no_hf:
            ti = torch.from_numpy(ids).cuda()
            tm = torch.from_numpy(mask).cuda()
            with torch.no_grad():
                hf.generate(input_ids=ti, attention_mask=tm, do_sample=False, **kw)
                ht = []
                for _ in range(max(3, args.runs // 2)):
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    ref = hf.generate(input_ids=ti, attention_mask=tm, do_sample=False, **kw)
                    torch.cuda.synchronize()
                    ht.append(time.perf_counter() - t0)
            row["hf_s"] = statistics.median(ht)
            row["speedup"] = row["hf_s"] / row["t5rt_s"]
            refs = [[t for t in s if True] for s in ref[:, 1:].tolist()]
            agree = np.mean([a == b for r, o in zip(refs, out.sequences) for a, b in zip(r, o)])
            row["agreement"] = float(agree)
        results[f"beams={beams}"] = row
        print(json.dumps({f"beams={beams}": row}, indent=1), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
