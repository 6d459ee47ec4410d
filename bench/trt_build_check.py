"""Build-check: every export variant parses and builds with t5rt's profiles (the `t5rt build` path).

For each (shape, precision, cache form) it exports a random-weight T5 of that shape into a work
folder (or takes existing export dirs), then calls trt_build.build_engines_report — the very
function `t5rt build` runs — and records per graph: pass/fail, build seconds, engine bytes,
error. One failure never stops the rest. Writes a markdown table and JSON next to --out.

    python bench/trt_build_check.py --out $OUT/trt_build_check            # all 12 variants
    python bench/trt_build_check.py --sizes small --precisions fp32 --forms write --out /tmp/x
    python bench/trt_build_check.py --export-dirs /tmp/e1 /tmp/e2 --out /tmp/x

Defaults keep all 12 variants (t5-small and t5-base shapes x fp32/fp16/bf16 x write/inplace)
inside ~8 minutes on an H100: builder optimization level 0, max batch 4, max beams 2, short
max lengths, no ONNX Runtime validation in the exporter. Exports are cached in --work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

SIZES = {  # real shapes (DESIGN.md §7), random weights
    "small": dict(d_model=512, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8, d_kv=64,
                  feed_forward_proj="relu", tie_word_embeddings=True),
    "base": dict(d_model=768, d_ff=3072, num_layers=12, num_decoder_layers=12, num_heads=12, d_kv=64,
                 feed_forward_proj="relu", tie_word_embeddings=True),
}
COMMON = dict(vocab_size=32128, relative_attention_num_buckets=32, relative_attention_max_distance=128,
              dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


def make_export(size: str, precision: str, form: str, work: Path, max_in: int, max_out: int) -> Path:
    """Export a random-weight T5 of `size` shape (cached in work/<name> when a manifest exists)."""
    out = work / f"t5-{size}-{precision}-{form}"
    if (out / "manifest.json").is_file():
        return out
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from t5rt.exporters.options import ExportOptions
    from t5rt.exporters.pipeline import export

    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(**COMMON, **SIZES[size])).eval()
    export(model, out, ExportOptions(precision=precision, cache_update=form, validate=False,
                                     max_input_len=max_in, max_output_len=max_out), log=lambda s: None)
    return out


def check_one(export_dir: Path, options, label: dict) -> list[dict]:
    """Build in a child process: a builder that crashes the interpreter (seen: TensorRT-RTX 1.7 on
    the H100, SIGSEGV) becomes a FAIL row naming the signal and the Python frame it died in."""
    import dataclasses
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "job.json"
        spec.write_text(json.dumps({"export_dir": str(export_dir), "label": label,
                                    "options": dataclasses.asdict(options)}, default=str))
        proc = subprocess.run([sys.executable, "-X", "faulthandler", __file__, "--child", str(spec)],
                              capture_output=True, text=True)
        out = Path(tmp) / "rows.json"
        if proc.returncode == 0 and out.is_file():
            return json.loads(out.read_text())
    lines = proc.stderr.strip().splitlines()
    # faulthandler: "Current thread ... (most recent call first):" then the innermost frames
    at = next((i for i, line in enumerate(lines) if "most recent call first" in line), None)
    picked = lines[at + 1:at + 4] if at is not None else lines[-6:]
    tail = " / ".join(line.strip() for line in picked)
    why = f"child exited {proc.returncode}" + (f" (signal {-proc.returncode})" if proc.returncode < 0 else "")
    return [dict(label, graph=g, ok=False, cached=False, build_s=None, engine_bytes=None, profiles=None,
                 error=f"{why}: {tail}"[:600]) for g in options.graphs]


def _child(spec_path: str) -> int:
    from t5rt.engines import trt_build

    job = json.loads(Path(spec_path).read_text())
    fields = {f.name for f in __import__("dataclasses").fields(trt_build.BuildOptions)}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in job["options"].items() if k in fields}
    if kw.get("timing_cache"):
        kw["timing_cache"] = Path(kw["timing_cache"])
    opts = trt_build.BuildOptions(**kw)
    rows = _check_in_process(Path(job["export_dir"]), opts, job["label"])
    (Path(spec_path).parent / "rows.json").write_text(json.dumps(rows))
    return 0


def _check_in_process(export_dir: Path, options, label: dict) -> list[dict]:
    from t5rt.engines import trt_build

    rows = []
    try:
        results = trt_build.build_engines_report(export_dir, options)
        for r in results:
            rows.append(dict(label, graph=r.graph, ok=True, cached=r.cached, build_s=round(r.seconds, 2),
                             engine_bytes=r.engine_bytes, profiles=len(r.profiles), error=""))
    except Exception as e:  # noqa: BLE001 - one failure must not stop the rest
        built = {row["graph"] for row in rows}
        msg = f"{type(e).__name__}: {e}"
        for g in options.graphs:
            if g not in built:
                rows.append(dict(label, graph=g, ok=False, cached=False, build_s=None, engine_bytes=None,
                                 profiles=None, error=msg[:400]))
        if os.environ.get("T5RT_TRACE"):
            traceback.print_exc()
    return rows


def build_one_graph_at_a_time(export_dir: Path, options, label: dict) -> list[dict]:
    """Each graph separately, so a failing graph does not hide the others' results."""
    import dataclasses

    rows = []
    for g in options.graphs:
        rows += check_one(export_dir, dataclasses.replace(options, graphs=(g,)), label)
    return rows


def to_markdown(rows: list[dict], header: str) -> str:
    cols = ["size", "precision", "form", "graph", "ok", "build_s", "engine_bytes", "profiles", "error"]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            if c == "ok":
                v = "PASS" if v else "FAIL"
            elif c == "engine_bytes" and v is not None:
                v = f"{v / 2**20:.1f} MiB"
            cells.append("" if v is None else str(v).replace("|", "/").replace("\n", " "))
        lines.append("| " + " | ".join(cells) + " |")
    n_ok = sum(r["ok"] for r in rows)
    lines += ["", f"{n_ok} passed, {len(rows) - n_ok} failed"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="result path stem: writes OUT.md and OUT.json")
    p.add_argument("--sizes", default="small,base")
    p.add_argument("--precisions", default="fp32,fp16,bf16")
    p.add_argument("--forms", default="write,inplace")
    p.add_argument("--export-dirs", nargs="*", type=Path, default=None,
                   help="check these existing exports instead of exporting")
    p.add_argument("--work", type=Path, default=Path("/tmp/t5rt-trt-check"), help="exports and engines go here")
    p.add_argument("--max-input-len", type=int, default=128)
    p.add_argument("--max-output-len", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--max-beams", type=int, default=2)
    p.add_argument("--opt-level", type=int, default=0, help="builder optimization level (0 builds fastest)")
    p.add_argument("--force", action="store_true", help="rebuild engines even if cached")
    a = p.parse_args(argv)

    from t5rt.engines import trt_build, trt_compat

    options = trt_build.BuildOptions(max_batch=a.max_batch, max_beams=a.max_beams, optimization_level=a.opt_level,
                                     force=a.force, progress=False)
    try:
        trt_compat.load()
        info = trt_compat.info()
        gpu = trt_compat.gpu_identity()
        header = (f"# TensorRT build check\n\n{info.describe()}\n\nGPU: {gpu.name} ({gpu.sm}); profiles: "
                  f"max_batch {a.max_batch}, max_beams {a.max_beams}, opt level {a.opt_level}")
    except Exception as e:  # noqa: BLE001
        header = f"# TensorRT build check\n\nTensorRT unusable: {type(e).__name__}: {e}"
    print(header, flush=True)

    jobs: list[tuple[dict, Path | None, str | None]] = []
    if a.export_dirs:
        for d in a.export_dirs:
            jobs.append(({"size": d.name, "precision": "?", "form": "?"}, d, None))
    else:
        a.work.mkdir(parents=True, exist_ok=True)
        for size in a.sizes.split(","):
            for prec in a.precisions.split(","):
                for form in a.forms.split(","):
                    jobs.append(({"size": size, "precision": prec, "form": form}, None, None))

    rows: list[dict] = []
    t_all = time.perf_counter()
    for label, d, _ in jobs:
        t0 = time.perf_counter()
        if d is None:
            try:
                d = make_export(label["size"], label["precision"], label["form"], a.work,
                                a.max_input_len, a.max_output_len)
            except Exception as e:  # noqa: BLE001
                rows.append(dict(label, graph="(export)", ok=False, cached=False, build_s=None, engine_bytes=None,
                                 profiles=None, error=f"export failed: {type(e).__name__}: {e}"[:400]))
                print(f"{label}: export failed: {e}", flush=True)
                continue
        else:
            try:
                from t5rt.manifest import load_manifest

                m = load_manifest(d)
                label = dict(label, precision=m.precision, form=m.cache_update)
            except Exception as e:  # noqa: BLE001
                rows.append(dict(label, graph="(manifest)", ok=False, error=str(e)[:400]))
                continue
        new = build_one_graph_at_a_time(d, options, label)
        rows += new
        for r in new:
            state = "PASS" if r["ok"] else "FAIL " + r["error"][:200]
            print(f"{r['size']:>6} {r['precision']:>5} {r['form']:>8} {r['graph']:<13} {state} "
                  f"{r['build_s'] if r['build_s'] is not None else '':>7}s", flush=True)
        print(f"  ({time.perf_counter() - t0:.0f}s for {label})", flush=True)

    header += f"\n\ntotal {time.perf_counter() - t_all:.0f}s"
    md = to_markdown(rows, header)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    Path(str(a.out) + ".md").write_text(md)
    Path(str(a.out) + ".json").write_text(json.dumps({"header": header, "rows": rows}, indent=2) + "\n")
    print(md)
    return 0 if rows and all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        sys.exit(_child(sys.argv[2]))
    sys.exit(main())
