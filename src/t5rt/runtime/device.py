"""Where arrays live: numpy on the CPU, cupy on a CUDA device, behind one small class.

The runtime and the decoding code are written once against `Device.xp`. bfloat16 has no numpy
dtype: its buffers are stored as uint16 and handed to engines with the ONNX element type.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError, InvalidOptionError, MissingDependencyError

# manifest dtype -> (storage numpy dtype, ONNX TensorProto element type)
DTYPE_TABLE: dict[str, tuple[Any, int]] = {
    "float32": (np.float32, 1),
    "int32": (np.int32, 6),
    "int64": (np.int64, 7),
    "bool": (np.bool_, 9),
    "float16": (np.float16, 10),
    "bfloat16": (np.uint16, 16),
}


def storage_dtype(dtype: str) -> Any:
    return DTYPE_TABLE[dtype][0]


def onnx_elem_type(dtype: str) -> int:
    return DTYPE_TABLE[dtype][1]


def cuda_available() -> bool:
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - any driver/runtime failure means "no usable GPU"
        return False


def usable_cpus() -> int:
    """CPU cores this process may run on: its affinity mask, capped by a cgroup CPU quota
    (containers), at least 1. os.cpu_count() counts the host's cores, which oversubscribes a
    container or a pinned process."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:  # cgroup v2: "max 100000" or "<quota> <period>"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def resolve_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise InvalidOptionError(f"device={device!r} is invalid: use 'cpu', 'cuda' or 'auto'")
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        if importlib.util.find_spec("cupy") is None:
            raise MissingDependencyError("device='cuda'", "cuda", "cupy")
        raise BackendError("device='cuda' was asked for but no CUDA device is usable; use device='cpu'")
    return device


class Device:
    """numpy or cupy, a stream, and the few operations the runtime needs from either."""

    def __init__(self, name: str):
        self.name = name
        if name == "cuda":
            import cupy

            self.xp: Any = cupy
            # A non-blocking stream of our own: engines, kernels and CUDA graphs all run on it.
            self.stream = cupy.cuda.Stream(non_blocking=True)
            # The memory every captured graph's temporaries come from (runtime/cuda_graph.py): one
            # pool for all of them, so a graph that is dropped leaves its blocks to the next capture
            # instead of a pool of its own (with a pool per graph, device memory grew ~200 KB a
            # request in the H100 soak).
            self.graph_pool = cupy.cuda.MemoryPool()
        else:
            self.xp = np
            self.stream = None
            self.graph_pool = None

    @property
    def is_cuda(self) -> bool:
        return self.name == "cuda"

    def empty(self, shape: tuple[int, ...], dtype: str) -> Any:
        with self.use():
            return self.xp.empty(shape, dtype=storage_dtype(dtype))

    def zeros(self, shape: tuple[int, ...], dtype: str) -> Any:
        with self.use():
            return self.xp.zeros(shape, dtype=storage_dtype(dtype))

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        with self.use():
            return self.xp.asarray(a, dtype=dtype)

    def to_host(self, a: Any) -> np.ndarray:
        if self.is_cuda:
            return a.get(stream=self.stream)
        return np.asarray(a)

    def synchronize(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()

    def use(self) -> Any:
        """Context manager making this device's stream current (a no-op on CPU)."""
        if self.stream is not None:
            return self.stream
        return _NullContext()

    @property
    def stream_ptr(self) -> int:
        return 0 if self.stream is None else int(self.stream.ptr)


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def data_ptr(a: Any) -> int:
    """Address of an array's first element (numpy or cupy)."""
    if isinstance(a, np.ndarray):
        return int(a.ctypes.data)
    return int(a.data.ptr)
