"""Capture a piece of per-step device work once and replay it (cupy stream capture).

Temporaries that cupy allocates while capturing come from a private memory pool that lives
as long as the graph, so no buffer a replay touches can be handed to anyone else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import BackendError


class CapturedStep:
    """`fn()` recorded on `stream` as a CUDA graph; `launch()` replays it on the same stream."""

    def __init__(self, fn: Callable[[], None], stream: Any):
        import cupy

        self.stream = stream
        self._pool = cupy.cuda.MemoryPool()
        try:
            with cupy.cuda.using_allocator(self._pool.malloc), stream:
                stream.begin_capture()
                try:
                    fn()
                finally:
                    self.graph = stream.end_capture()
        except Exception as e:  # noqa: BLE001 - a capture failure must name its cause
            raise BackendError(f"CUDA graph capture of the decoding step failed: {type(e).__name__}: {e}") from e
        if hasattr(self.graph, "upload"):
            self.graph.upload(stream)  # instantiate now, not on the first replay

    def launch(self) -> None:
        self.graph.launch(self.stream)
