"""Errors of the exporter (subclasses of t5rt.errors.T5rtError, so the CLI prints one line)."""

from __future__ import annotations

from t5rt.errors import T5rtError


class ExportError(T5rtError, RuntimeError):
    """The model cannot be exported as asked (unsupported config, unreachable source, ...)."""


class ExportValidationError(ExportError):
    """An exported graph disagrees with the PyTorch module beyond tolerance."""

    def __init__(self, graph: str, output: str, abs_err: float, rel_err: float, rtol: float):
        super().__init__(
            f"validation failed: {graph}.onnx output {output!r} differs from PyTorch by max abs "
            f"{abs_err:.3e} / rel {rel_err:.3e} (tolerance rel {rtol:.1e}); the export is wrong — "
            f"report it with the model config, or pass --no-validate to write it anyway")
        self.graph = graph
        self.output = output
        self.abs_err = abs_err
        self.rel_err = rel_err
