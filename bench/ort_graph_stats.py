"""Node counts of the exported graphs before/after ONNX Runtime's optimizations, per fusion variant,
and (where CUDA is there) the GPU time of one decoder step with IO binding + ORT CUDA graphs.

    python bench/ort_graph_stats.py --out $OUT/graph_stats.md                    # t5-small, fp32 + fp16
    python bench/ort_graph_stats.py --shape t5-base --precisions fp32 --variants none,all

For each precision and each fusion variant (a T5RT_FUSION spec of exporters/fusion.py: "none",
"all", "-fuse_head_transposes", ...) it exports a random-weight model of the given shape into
--workdir (write cache form), loads each graph in an ORT session per execution provider (CPU,
and CUDA when onnxruntime-gpu sees a GPU), saves ORT's optimized model
(SessionOptions.optimized_model_filepath) and counts nodes by op type. With CUDA it then times,
at batch 1, --src-len source tokens and --cache-len cache rows:

    decoder_step   median GPU time of one run (CUDA events on ORT's stream when cupy is there,
                   else host wall time per synchronised run), CUDA graph captured by ORT
    encoder+xkv    median time of one encoder run plus one cross_kv run (no CUDA graph)

It prints a markdown table and writes it (plus per-graph op counts) to --out. TF32 stays off
(fp32 is the parity reference), as in t5rt's own ORT engine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

SHAPES = {
    "t5-small": dict(d_model=512, d_ff=2048, num_layers=6, num_heads=8, d_kv=64, feed_forward_proj="relu",
                     tie_word_embeddings=True),
    "t5-base": dict(d_model=768, d_ff=3072, num_layers=12, num_heads=12, d_kv=64, feed_forward_proj="relu",
                    tie_word_embeddings=True),
    "flan-t5-base": dict(d_model=768, d_ff=2048, num_layers=12, num_heads=12, d_kv=64,
                         feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}
GRAPHS = ("encoder", "cross_kv", "decoder_step")
NP_DTYPE = {"int64": np.int64, "float32": np.float32, "float16": np.float16}


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def export_variant(model, out: Path, precision: str, variant: str, args):
    from t5rt.exporters.fusion import FusionOptions
    from t5rt.exporters.options import ExportOptions
    from t5rt.exporters.pipeline import export
    from t5rt.manifest import load_manifest

    if (out / "manifest.json").exists() and not args.fresh:
        return load_manifest(out)
    opts = ExportOptions(precision=precision, max_input_len=args.max_input_len, max_output_len=args.cache_len,
                         validate=False)
    return export(model, out, opts, log=lambda *a: None, fusion_options=FusionOptions.from_spec(variant))


def ort_session(ort, path: Path, provider: str, optimized: Path | None = None, cuda_graph: bool = False,
                stream_ptr: int | None = None):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                    optimized.name + ".data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    if provider == "cuda":
        opts = {"device_id": "0", "use_tf32": "0", "do_copy_in_default_stream": "1"}
        if cuda_graph:
            opts["enable_cuda_graph"] = "1"
        if stream_ptr is not None:
            opts.update(user_compute_stream=str(stream_ptr), has_user_compute_stream="1")
        providers = [("CUDAExecutionProvider", opts)]
    else:
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), so, providers=providers)


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    from t5rt.exporters.fusion import count_ops

    return count_ops(onnx.load(str(path), load_external_data=False))


def feeds_for(m, graph: str, S: int, T: int, rng) -> dict[str, np.ndarray]:
    out = {}
    for spec in m.graphs[graph].inputs:
        shape = [{"batch": 1, "src_len": S, "cache_len": T}.get(d, d) for d in spec.shape]
        dt = NP_DTYPE[spec.dtype]
        if spec.name == "input_ids":
            out[spec.name] = rng.integers(2, m.dims.vocab_size, shape).astype(dt)
        elif spec.name == "position":
            out[spec.name] = np.full(shape, T // 2, dt)
        elif "mask" in spec.name:
            out[spec.name] = np.ones(shape, dt)
        else:
            out[spec.name] = rng.standard_normal(shape).astype(dt)
    return out


class Timer:
    """Per-run GPU time with CUDA events on ORT's stream (cupy), else wall time of a synchronised run."""

    def __init__(self):
        try:
            import cupy

            self.cp = cupy
            self.stream = cupy.cuda.Stream(non_blocking=True)
            self.ptr = self.stream.ptr
        except Exception:  # noqa: BLE001 - no cupy: fall back to host timing
            self.cp, self.stream, self.ptr = None, None, None
        self.how = "CUDA events" if self.cp else "host wall time (synchronised runs)"

    def median_us(self, fn, iters: int) -> float:
        times = []
        for _ in range(iters):
            if self.cp:
                a, b = self.cp.cuda.Event(), self.cp.cuda.Event()
                a.record(self.stream)
                fn()
                b.record(self.stream)
                b.synchronize()
                times.append(self.cp.cuda.get_elapsed_time(a, b) * 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e6)
        return statistics.median(times)


def bind_all(ort, sess, m, graph: str, feeds: dict, S: int, T: int):
    """IO binding with every input and output on the GPU (fixed buffers, as a CUDA graph needs)."""
    io = sess.io_binding()
    keep = {}
    for name, arr in feeds.items():
        keep[name] = ort.OrtValue.ortvalue_from_numpy(arr, "cuda", 0)
        io.bind_ortvalue_input(name, keep[name])
    for spec in m.graphs[graph].outputs:
        shape = [{"batch": 1, "src_len": S, "cache_len": T}.get(d, d) for d in spec.shape]
        keep[spec.name] = ort.OrtValue.ortvalue_from_shape_and_type(shape, NP_DTYPE[spec.dtype], "cuda", 0)
        io.bind_ortvalue_output(spec.name, keep[spec.name])
    return io, keep


def time_gpu(ort, m, args, timer: Timer) -> dict[str, float]:
    rng = np.random.default_rng(0)
    S, T = args.src_len, args.cache_len
    ro = ort.RunOptions()
    if timer.cp:
        ro.add_run_config_entry("disable_synchronize_execution_providers", "1")
    res = {}
    step = ort_session(ort, m.directory / m.graphs["decoder_step"].file, "cuda", cuda_graph=True,
                       stream_ptr=timer.ptr)
    io, keep = bind_all(ort, step, m, "decoder_step", feeds_for(m, "decoder_step", S, T, rng), S, T)
    for _ in range(5):      # ORT runs a few times, then captures its CUDA graph
        step.run_with_iobinding(io, ro)
    if timer.cp:
        timer.stream.synchronize()
    res["decoder_step_us"] = timer.median_us(lambda: step.run_with_iobinding(io, ro), args.iters)
    del keep
    enc = ort_session(ort, m.directory / m.graphs["encoder"].file, "cuda", stream_ptr=timer.ptr)
    xkv = ort_session(ort, m.directory / m.graphs["cross_kv"].file, "cuda", stream_ptr=timer.ptr)
    eio, ekeep = bind_all(ort, enc, m, "encoder", feeds_for(m, "encoder", S, T, rng), S, T)
    hidden = m.roles["encoder"]["hidden"]
    xio, xkeep = bind_all(ort, xkv, m, "cross_kv", {}, S, T)
    xio.bind_ortvalue_input(m.roles["cross_kv"]["hidden"], ekeep[hidden])      # encoder output feeds cross_kv

    def both():
        enc.run_with_iobinding(eio, ro)
        xkv.run_with_iobinding(xio, ro)

    for _ in range(5):
        both()
    res["encoder_xkv_us"] = timer.median_us(both, max(20, args.iters // 10))
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=SHAPES, default="t5-small")
    ap.add_argument("--precisions", default="fp32,fp16")
    ap.add_argument("--variants", default="cumulative",
                    help="'/'-separated T5RT_FUSION specs (e.g. none/all/-fuse_head_transposes), or a preset: "
                         "cumulative (none, +1st pass, +2nd, ..., all; default) or each (none, each pass alone, all)")
    ap.add_argument("--src-len", type=int, default=32)
    ap.add_argument("--cache-len", type=int, default=64)
    ap.add_argument("--max-input-len", type=int, default=128)
    ap.add_argument("--iters", type=int, default=500)
    ap.add_argument("--workdir", default="/tmp/t5rt-graph-stats")
    ap.add_argument("--fresh", action="store_true", help="re-export even if the variant's export exists")
    ap.add_argument("--no-cuda", action="store_true")
    ap.add_argument("--out", default=None, help="write the markdown report here")
    args = ap.parse_args()
    variants = parse_variants(args.variants)

    import onnxruntime as ort
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    cuda = not args.no_cuda and "CUDAExecutionProvider" in ort.get_available_providers()
    providers = ["cpu"] + (["cuda"] if cuda else [])
    timer = Timer() if cuda else None
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=32128, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0,
                   **SHAPES[args.shape])
    model = T5ForConditionalGeneration(cfg).eval()
    work = Path(args.workdir)

    rows, details = [], []
    for precision in args.precisions.split(","):
        for variant in variants:
            tag = f"{args.shape}-{precision}-{variant.replace(',', '+') or 'none'}"
            log(f"[{tag}] export")
            m = export_variant(model, work / tag, precision, variant, args)
            row = {"precision": precision, "variant": variant}
            for graph in GRAPHS:
                path = m.directory / m.graphs[graph].file
                counts = {"onnx": op_counts(path)}
                for p in providers:
                    if p == "cpu" and precision != "fp32":
                        continue        # the CPU EP runs fp16 through inserted Casts: counts mislead
                    opt = work / tag / f"{graph}.ort-{p}.onnx"
                    ort_session(ort, path, p, optimized=opt)
                    counts[f"ort-{p}"] = op_counts(opt)
                for k, c in counts.items():
                    row[f"{graph}/{k}"] = sum(c.values())
                details.append((tag, graph, counts))
            if cuda:
                log(f"[{tag}] time on GPU")
                row.update(time_gpu(ort, m, args, timer))
            rows.append(row)

    md = render(args, rows, details, providers, timer)
    print(md)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(md)
        log(f"wrote {args.out}")
    return 0


def parse_variants(spec: str) -> list[str]:
    from t5rt.exporters.fusion import PASSES, FusionOptions

    if spec == "cumulative":
        out = ["none"] + [",".join(PASSES[:i]) for i in range(1, len(PASSES))] + ["all"]
    elif spec == "each":
        out = ["none", *PASSES, "all"]
    else:
        out = spec.split("/")
    for v in out:
        FusionOptions.from_spec(v)      # unknown names fail here, before any export
    return out


def render(args, rows, details, providers, timer) -> str:
    import onnxruntime as ort

    cols = [f"{g}/{k}" for g in GRAPHS for k in ("onnx", *(f"ort-{p}" for p in providers))]
    head = ["precision", "fusion", *[c.replace("decoder_step", "step").replace("cross_kv", "xkv")
                                     .replace("encoder", "enc") for c in cols]]
    timed = any("decoder_step_us" in r for r in rows)
    if timed:
        head += ["step µs", "enc+xkv µs"]
    lines = [f"# ORT graph stats: {args.shape}, write form, batch 1, src {args.src_len}, cache {args.cache_len}",
             "", f"onnxruntime {ort.__version__}, providers {', '.join(providers)}"
             + (f"; times: median of {args.iters} runs, {timer.how}, decoder step in ORT's CUDA graph" if timed else ""),
             "", "Node counts: `onnx` = exported graph, `ort-cpu` / `ort-cuda` = after ORT_ENABLE_ALL on that EP "
             "(CPU counts are skipped for fp16: the CPU EP inserts fp32 Casts).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["precision"], r["variant"] or "none", *[str(r.get(c, "-")) for c in cols]]
        if timed:
            cells += [f"{r.get('decoder_step_us', float('nan')):.1f}", f"{r.get('encoder_xkv_us', float('nan')):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Op counts by type", ""]
    for tag, graph, counts in details:
        lines.append(f"**{tag} {graph}**")
        lines.append("")
        for k, c in counts.items():
            lines.append(f"- {k} ({sum(c.values())}): " + ", ".join(f"{op} {n}" for op, n in c.items()))
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
