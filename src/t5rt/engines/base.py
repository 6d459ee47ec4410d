"""The Engine protocol: one graph, named tensors, buffers owned by the runtime (DESIGN.md §5).

Every backend (ONNX Runtime CPU/CUDA, TensorRT) implements it. The runtime allocates every
input and output once per bucket and binds it by name; `run()` then reads and writes those
buffers in place. On CPU buffers are numpy arrays and `run()` returns when done; on CUDA they
are cupy arrays and `run()` only enqueues on `stream` (no host synchronisation).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ..manifest import GraphSpec


@runtime_checkable
class Engine(Protocol):
    spec: GraphSpec          # I/O names, dtypes and symbolic shapes, from the manifest
    device: str              # "cpu" | "cuda"
    backend: str             # "ort" | "trt"

    def bind(self, name: str, array: Any) -> None:
        """Bind a runtime-owned buffer to input or output `name`; its shape sets the dims."""
        ...

    def run(self) -> None:
        """Execute once on the bound buffers (CUDA: enqueue on the runtime's stream)."""
        ...

    @property
    def aliased_outputs(self) -> dict[str, str]:
        """output name -> input name it aliases (the in-place cache form); {} otherwise."""
        ...
