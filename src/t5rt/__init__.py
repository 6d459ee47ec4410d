"""t5rt: T5-family encoder-decoder generation as fast as the GPU allows.

Public API (torch-free)::

    import t5rt
    rt = t5rt.load(DIR, backend="auto", device="cuda")
    out = rt.generate(["summarize: ..."], num_beams=4, max_new_tokens=64)
    out.sequences, out.scores, out.texts
"""

from .errors import (
    BackendError,
    InvalidExportError,
    InvalidInputError,
    InvalidLogitsError,
    InvalidOptionError,
    MissingDependencyError,
    NotAnExportError,
    RequestTooLargeError,
    T5rtError,
)
from .generate import GenerateOutput, Runtime, load
from .generation_config import GenerationConfig
from .manifest import Manifest, load_manifest
from .runtime.runner import RuntimeOptions

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "GenerateOutput",
    "GenerationConfig",
    "InvalidExportError",
    "InvalidInputError",
    "InvalidLogitsError",
    "InvalidOptionError",
    "Manifest",
    "MissingDependencyError",
    "NotAnExportError",
    "RequestTooLargeError",
    "Runtime",
    "RuntimeOptions",
    "T5rtError",
    "__version__",
    "load",
    "load_manifest",
]
