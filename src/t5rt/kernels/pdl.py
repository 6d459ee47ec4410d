"""Programmatic dependent launch through cuda-python's cuLaunchKernelEx (CUDA 12.3+, sm_90+).

A kernel launched with CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION may start while the
kernel before it on the stream is still running; it calls t5rt_pdl_wait() (kernels/t5rt_kernels.cuh)
before it touches anything that kernel writes, and t5rt_pdl_trigger() to let the next one start.
Stream capture records such a launch as a programmatic edge, so a captured CUDA graph keeps the
overlap. Every cuda-python call here goes through `check`.

    launch(fn, grid, block, args, shared_mem, stream_ptr)   # fn: a cupy RawKernel or Function
"""

from __future__ import annotations

import ctypes
from typing import Any, Sequence

import numpy as np

from ..errors import BackendError, MissingDependencyError

# numpy scalar dtype -> the C type the kernel parameter has
_CTYPES = {
    np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64,
    np.dtype(np.uint32): ctypes.c_uint32, np.dtype(np.uint64): ctypes.c_uint64,
    np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double,
    np.dtype(np.bool_): ctypes.c_bool,
}

_cu: Any = None


def driver() -> Any:
    """cuda-python's driver module (cuda.bindings.driver; cuda.cuda before cuda-python 12.6)."""
    global _cu
    if _cu is None:
        try:
            from cuda.bindings import driver as cu
        except ImportError:
            try:
                from cuda import cuda as cu  # type: ignore[no-redef]
            except ImportError as e:
                raise MissingDependencyError("programmatic dependent launch", "cuda", "cuda-python") from e
        _cu = cu
    return _cu


def check(result: Any, what: str) -> Any:
    """A cuda-python call's (error, *values): raise BackendError naming the error, else the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        cu = driver()
        name = cu.cuGetErrorName(err)
        raise BackendError(f"{what} failed: {name[1].decode() if int(name[0]) == 0 else int(err)}")
    return None if not values else values[0] if len(values) == 1 else tuple(values)


def _param(i: int, a: Any) -> Any:
    if a is None:
        return ctypes.c_void_p(0)
    data = getattr(a, "data", None)
    if data is not None and hasattr(data, "ptr"):  # a cupy array
        return ctypes.c_void_p(int(data.ptr))
    if isinstance(a, np.generic) and a.dtype in _CTYPES:
        return _CTYPES[a.dtype](a.item())
    raise BackendError(f"kernel argument {i} ({type(a).__name__}) is not an array, None or a numpy scalar")


_configs: dict[tuple, Any] = {}  # (function, grid, block, shared_mem, stream) -> CUlaunchConfig


def launch(fn: Any, grid: Sequence[int], block: Sequence[int], args: Sequence[Any], shared_mem: int,
           stream_ptr: int) -> None:
    """Launch cupy Function `fn` with programmatic stream serialization allowed."""
    cu = driver()
    f = int(getattr(fn, "kernel", fn).ptr)  # a RawKernel's cupy Function, or the Function itself
    key = (f, tuple(grid), tuple(block), int(shared_mem), int(stream_ptr))
    cfg = _configs.get(key)
    if cfg is None:
        if len(_configs) > 256:
            _configs.clear()
        cfg = _configs[key] = _config(cu, grid, block, shared_mem, stream_ptr)
    values = [_param(i, a) for i, a in enumerate(args)]  # alive until the launch has copied them
    argv = (ctypes.c_void_p * max(1, len(values)))(*[ctypes.addressof(v) for v in values])
    check(cu.cuLaunchKernelEx(cfg, cu.CUfunction(f), ctypes.addressof(argv), 0), "cuLaunchKernelEx")


def _config(cu: Any, grid: Sequence[int], block: Sequence[int], shared_mem: int, stream_ptr: int) -> Any:
    g = tuple(int(v) for v in grid) + (1,) * (3 - len(grid))
    b = tuple(int(v) for v in block) + (1,) * (3 - len(block))
    cfg = cu.CUlaunchConfig()
    cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ = g
    cfg.blockDimX, cfg.blockDimY, cfg.blockDimZ = b
    cfg.sharedMemBytes = int(shared_mem)
    cfg.hStream = cu.CUstream(int(stream_ptr))
    attr = cu.CUlaunchAttribute()
    attr.id = cu.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
    attr.value.programmaticStreamSerializationAllowed = 1
    cfg.attrs = [attr]
    cfg.numAttrs = 1
    return cfg
