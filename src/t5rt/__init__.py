"""t5rt: T5-family encoder-decoder generation as fast as the GPU allows.

Public API (torch-free)::

    import t5rt
    rt = t5rt.load(DIR, backend="auto", device="cuda")
    out = rt.generate(["summarize: ..."], num_beams=4, max_new_tokens=64)
    out.sequences, out.scores, out.texts

    # one runtime, many callers (any thread / asyncio task; DESIGN.md §5a)
    fut = rt.submit(texts, max_new_tokens=32)            # concurrent.futures.Future
    out = await rt.agenerate(texts, timeout=2.0)         # RequestTimeoutError past 2 s
    for chunk in rt.stream("translate ..."):             # chunk.tokens, chunk.text, chunk.finished
        ...
    rt.stats(); rt.close()                               # OverloadedError when the queue is full
"""

from .errors import (
    BackendError,
    InvalidExportError,
    InvalidInputError,
    InvalidLogitsError,
    InvalidOptionError,
    MissingDependencyError,
    NotAnExportError,
    OverloadedError,
    RequestTimeoutError,
    RuntimeClosedError,
    RequestTooLargeError,
    T5rtError,
)
from .generate import GenerateOutput, Runtime, load
from .generation_config import GenerationConfig
from .manifest import Manifest, load_manifest
from .runtime.runner import RuntimeOptions
from .service import StreamChunk

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
    "OverloadedError",
    "RequestTimeoutError",
    "RuntimeClosedError",
    "RequestTooLargeError",
    "Runtime",
    "RuntimeOptions",
    "StreamChunk",
    "T5rtError",
    "__version__",
    "load",
    "load_manifest",
]
