"""t5rt itself as a bench system: export once into the cache, `t5rt.load`, `rt.generate`.

The export (torch + transformers, the 'export' extra) happens only when the cache has none;
loading and generating are torch-free. Encoder and decoder-step latencies come from the
runtime's own `rt.last_timings` ({"encode_s", "decode_s", "steps", ...}).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .systems import RunOutput, System, Unavailable, Workload, one_line, strip_start
from .timing import timed


def exporter_version() -> str:
    """Version stamp of the exporter, part of the export cache key."""
    try:
        import importlib

        exporters = importlib.import_module("t5rt.exporters")
        return str(getattr(exporters, "__version__", None) or _t5rt_version())
    except ImportError:
        return _t5rt_version()


def _t5rt_version() -> str:
    import t5rt

    return t5rt.__version__


def export_model(model_dir: Path, out_dir: Path, precision: str, max_input_len: int,
                 max_output_len: int, log=print) -> Path:
    """Export `model_dir` into `out_dir` (atomically) unless it already holds an export this t5rt
    reads (one of an older manifest format is exported again)."""
    if (out_dir / "manifest.json").is_file():
        import t5rt

        try:
            t5rt.load_manifest(out_dir)
            return out_dir
        except t5rt.T5rtError as e:
            log(f"[bench] {out_dir} is stale ({one_line(e)}); exporting again")
            shutil.rmtree(out_dir)
    try:
        from t5rt.exporters.options import ExportOptions
        from t5rt.exporters.pipeline import export
    except ImportError as e:
        raise Unavailable(f"cannot export: {one_line(e)} (needs pip install 't5rt[export]')") from None
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"[bench] exporting {model_dir} ({precision}) -> {out_dir}")
    export(str(model_dir), str(tmp), ExportOptions(precision=precision, max_input_len=max_input_len,
                                                   max_output_len=max_output_len), log=log)
    tmp.rename(out_dir)
    return out_dir


@dataclass
class T5rtSystem(System):
    model_dir: Path = Path(".")
    export_dir: Path = Path(".")
    backend: str = "auto"
    max_input_len: int = 512
    max_output_len: int = 256
    log: Any = print
    _rt: Any = field(default=None, repr=False)
    _start_id: int = 0
    _xp_sync: Any = field(default=None, repr=False)

    def setup(self) -> None:
        import t5rt

        if not hasattr(t5rt, "load"):
            raise Unavailable(f"this t5rt ({t5rt.__version__}) has no t5rt.load runtime yet")
        export_model(self.model_dir, self.export_dir, self.precision, self.max_input_len,
                     self.max_output_len, self.log)
        try:
            self._rt = t5rt.load(str(self.export_dir), backend=self.backend, device=self.device,
                                 threads=self.threads)
        except t5rt.T5rtError as e:
            raise Unavailable(one_line(e)) from None
        manifest = t5rt.load_manifest(self.export_dir)
        self._start_id = manifest.special_tokens.decoder_start_token_id
        if self.device == "cuda":
            import cupy

            self._xp_sync = cupy.cuda.Device().synchronize
        self.extra = {"t5rt": t5rt.__version__, "backend": getattr(self._rt, "backend", self.backend),
                      "backend_reason": str(getattr(self._rt, "backend_reason", "")),
                      "export": str(self.export_dir)}
        try:
            import onnxruntime

            self.extra["onnxruntime"] = onnxruntime.__version__
        except ImportError:
            pass
        self.note = f"backend {self.extra['backend']}"

    def run(self, w: Workload) -> RunOutput:
        seconds, out = timed(lambda: self._rt.generate(
            input_ids=w.input_ids, attention_mask=w.attention_mask, max_new_tokens=w.new_tokens,
            min_new_tokens=w.new_tokens, num_beams=w.beams), self.sync)
        t = dict(getattr(self._rt, "last_timings", None) or {})
        steps = int(t.get("steps") or 0)
        step_s = float(t["decode_s"]) / steps if steps and t.get("decode_s") is not None else None
        enc = t.get("encode_s")
        seqs = [list(map(int, s)) for s in out.sequences]
        host = t.get("host_s")
        return RunOutput(seconds, strip_start(seqs, w.new_tokens, self._start_id),
                         encode_s=float(enc) if enc is not None else None, step_s=step_s,
                         host_step_s=float(host) / steps if steps and host is not None else None)

    def sync(self) -> None:
        if self._xp_sync is not None:
            self._xp_sync()

    def close(self) -> None:
        self._rt = None
