"""t5rt.exporters: Hugging Face T5 -> encoder / cross_kv / decoder_step ONNX graphs + manifest.json.

The only part of t5rt that imports torch (the 'export' extra). This package's __init__ stays
torch-free so the CLI can import `t5rt.exporters.options` to build its parser; the pipeline is
imported on use:

    from t5rt.exporters import ExportOptions, export
    manifest = export("path/to/save_pretrained_dir", "out/", ExportOptions(precision="bf16"))

Modules, in pipeline order: load (model + checks + checksum), wrap (torch modules of the three
graphs), trace (torch.onnx.export), patches (graphsurgeon passes), precision (fp16/bf16 passes),
validate (ORT vs torch), pipeline (`export`); io_spec names every graph tensor; options holds
ExportOptions and the CLI flags.
"""

from __future__ import annotations

from typing import Any

from .options import ExportOptions, add_cli_arguments, options_from_args

__all__ = ["ExportOptions", "add_cli_arguments", "export", "options_from_args"]


def export(model: Any, out_dir: Any, options: ExportOptions | None = None, log: Any = print) -> Any:
    """t5rt.exporters.pipeline.export (imported on first use: it needs torch)."""
    from .pipeline import export as _export

    return _export(model, out_dir, options, log=log)
