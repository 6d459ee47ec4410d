"""Capture a piece of per-step device work once and replay it (cupy stream capture).

Temporaries that cupy allocates while capturing come from the device's graph pool
(Device.graph_pool), never from the pool eager work allocates from, so no buffer a replay touches
is handed to eager code. Graphs share that pool: their replays run one after another on the
runtime's stream and each writes its temporaries before it reads them, so the blocks a dropped
graph used can serve the next capture. Hence the rule for `fn`: it must not keep an array it
allocates (its block could be another graph's temporary); state lives in buffers allocated before
the capture (the runtimes run step 0 eagerly, which also makes lazily allocated scratch eager).
With a pool of its own per graph, device memory outside cupy's default pool grew by ~200 KB a
request over an 8-minute H100 soak (bench/results/h100-service-2026-12-07.md); those pools are the
likely cause (the shared pool has not been soaked on a GPU yet).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import BackendError


class CapturedStep:
    """`fn()` recorded on `stream` as a CUDA graph; `launch()` replays it on the same stream."""

    def __init__(self, fn: Callable[[], None], stream: Any, pool: Any):
        import cupy

        self.stream = stream
        try:
            with cupy.cuda.using_allocator(pool.malloc), stream:
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
