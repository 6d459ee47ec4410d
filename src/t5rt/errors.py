"""Errors t5rt raises on bad input. Each message says what was wrong and what to do.

All derive from `T5rtError`, which the CLI turns into one line and a non-zero exit.
A runtime that raised one of these is still usable: errors are raised before any
device state is touched.
"""

from __future__ import annotations


class T5rtError(Exception):
    """Base of every error t5rt raises on purpose."""


class InvalidOptionError(T5rtError, ValueError):
    """A generation option, CLI flag or API argument is out of range or unknown."""


class InvalidInputError(T5rtError, ValueError):
    """The request itself is unusable: empty, too long for the export, wrong shape or dtype."""


class NotAnExportError(T5rtError, FileNotFoundError):
    """A directory is not a t5rt export (no or unreadable manifest.json, missing graphs)."""


class InvalidExportError(T5rtError, ValueError):
    """An export directory fails verification at load: its manifest breaks the schema, names a
    file outside the export, disagrees with a file's sha256 or with a graph's real inputs and
    outputs. The message names the file and the field; re-export (or restore) the model."""


class InvalidLogitsError(T5rtError, ValueError):
    """A decoding step cannot go on with its scores: NaN/inf probabilities under sampling (as
    Hugging Face raises), NaN under beam search, or a logits processor returning something that
    is not a float array of the logits' shape."""


class RequestTooLargeError(T5rtError, MemoryError):
    """A request would need more memory than the device (or RuntimeOptions.max_request_bytes)
    allows; refused before anything is allocated. Fewer beams, inputs or new tokens fit."""


class MissingDependencyError(T5rtError, ImportError):
    """An optional dependency (an extra) is needed for what was asked."""

    def __init__(self, what: str, extra: str, module: str | None = None):
        hint = f"pip install 't5rt[{extra}]'"
        msg = f"{what} needs the '{extra}' extra ({module or extra} is not importable): {hint}"
        super().__init__(msg)
        self.extra = extra


class BackendError(T5rtError, RuntimeError):
    """An inference backend failed (engine build, session creation, a CUDA call)."""
