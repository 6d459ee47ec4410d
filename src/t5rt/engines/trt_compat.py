"""One place that imports TensorRT and says what the imported build can do.

`tensorrt` (TensorRT 10.x / 11.x, data-center and workstation GPUs) and `tensorrt_rtx`
(TensorRT for RTX, same Python API family) are tried in that order. Every other TensorRT
module of t5rt asks this one, never `import tensorrt` itself, and branches on the feature
checks below rather than on version strings scattered through the code.

    load()            -> the imported module (raises MissingDependencyError if none works)
    info()            -> TrtInfo: which module, version tuple, feature flags
    pick_backend(dev) -> ("trt" | "ort", reason): the backend="auto" rule

Typing: under TYPE_CHECKING the name `trt` is the `tensorrt` stub package (tensorrt-stubs,
10.13 API), so `compat.trt.Builder(...)` type-checks in the other modules; at run time it is
bound by `load()`. APIs newer than 10.13 are reached through `getattr` behind a feature check.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import MissingDependencyError

if TYPE_CHECKING:
    import tensorrt as trt
else:
    trt = None  # bound to the imported module (tensorrt or tensorrt_rtx) by load()

log = logging.getLogger("t5rt.trt")

MODULES = ("tensorrt", "tensorrt_rtx")
# TensorRT >= 10.15 maps ONNX TensorScatter (opset 24) to IKVCacheUpdateLayer: the in-place cache.
IN_PLACE_KV_MIN_VERSION = (10, 15)
# TensorRT-RTX builds everywhere but runs engines only on these compute capabilities (RTX GPUs).
RTX_RUNS_ON = {(7, 5), (8, 6), (8, 9), (12, 0), (12, 1)}


@dataclass(frozen=True)
class TrtInfo:
    """What the imported TensorRT is and which of the APIs t5rt uses it has."""

    module: str                       # "tensorrt" | "tensorrt_rtx"
    version: tuple[int, ...]          # e.g. (10, 13, 0, 35) or (1, 7, 1, 0) for RTX
    version_str: str
    is_rtx: bool
    has_strongly_typed: bool          # NetworkDefinitionCreationFlag.STRONGLY_TYPED
    has_builder_precision_flags: bool  # BuilderFlag.FP16/BF16 (gone in TensorRT 11; never used)
    has_in_place_kv: bool             # IKVCacheUpdateLayer (TensorRT >= 10.15 / RTX with the layer)
    has_progress_monitor: bool        # IProgressMonitor + IBuilderConfig.progress_monitor
    has_user_managed_memory: bool     # ExecutionContextAllocationStrategy.USER_MANAGED + set_device_memory
    has_device_memory_v2: bool        # ICudaEngine.device_memory_size_v2 (10.1+)
    has_timing_cache: bool            # IBuilderConfig.create_timing_cache / set_timing_cache
    has_optimization_level: bool      # IBuilderConfig.builder_optimization_level
    has_compute_capability_api: bool  # RTX: IBuilderConfig.set_compute_capability

    def describe(self) -> str:
        feats = [k.removeprefix("has_") for k, v in self.__dict__.items() if k.startswith("has_") and v]
        return f"{self.module} {self.version_str} ({', '.join(feats)})"


def parse_version(text: str) -> tuple[int, ...]:
    """'10.13.0.35' -> (10, 13, 0, 35); non-numeric tails ('10.15.1.post1') are cut off."""
    out: list[int] = []
    for part in str(text).split("."):
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def _is_real_module(mod: Any) -> bool:
    # tensorrt-stubs installs a `tensorrt/` folder holding only .pyi files: it imports as an
    # empty namespace package. A real build has the Builder class.
    return hasattr(mod, "Builder") and hasattr(mod, "Runtime")


def _try_import() -> tuple[Any, str] | tuple[None, str]:
    reasons = []
    for name in MODULES:
        if importlib.util.find_spec(name) is None:
            reasons.append(f"{name} is not installed")
            continue
        try:
            mod = importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - a broken install (missing libnvinfer) must not crash import t5rt
            reasons.append(f"{name} failed to import ({type(e).__name__}: {e})")
            continue
        if not _is_real_module(mod):
            reasons.append(f"{name} is only type stubs (tensorrt-stubs), not the TensorRT library")
            continue
        return mod, name
    return None, "; ".join(reasons)


@functools.lru_cache(maxsize=None)
def _import_once() -> tuple[Any, str]:
    return _try_import()


def available() -> bool:
    """True when a usable TensorRT module imports (no GPU check)."""
    return _import_once()[0] is not None


def unavailable_reason() -> str:
    mod, why = _import_once()
    return "" if mod is not None else why


def load() -> Any:
    """Import TensorRT (or TensorRT-RTX), bind this module's `trt` and return it."""
    global trt
    mod, why = _import_once()
    if mod is None:
        raise MissingDependencyError(f"the TensorRT backend ({why})", "trt", "tensorrt")
    trt = mod
    return mod


def features_of(mod: Any, name: str) -> TrtInfo:
    """Feature checks on a module object (tests call it with a real or absent module)."""
    version_str = str(getattr(mod, "__version__", "0"))
    version = parse_version(version_str)
    is_rtx = name == "tensorrt_rtx"
    flag = getattr(mod, "NetworkDefinitionCreationFlag", None)
    bflag = getattr(mod, "BuilderFlag", None)
    cfg = getattr(mod, "IBuilderConfig", None)
    eng = getattr(mod, "ICudaEngine", None)
    ctx = getattr(mod, "IExecutionContext", None)
    strategy = getattr(mod, "ExecutionContextAllocationStrategy", None)
    kv_layer = hasattr(mod, "IKVCacheUpdateLayer")
    has_in_place = kv_layer and (is_rtx or version >= IN_PLACE_KV_MIN_VERSION)
    return TrtInfo(
        module=name,
        version=version,
        version_str=version_str,
        is_rtx=is_rtx,
        has_strongly_typed=flag is not None and hasattr(flag, "STRONGLY_TYPED"),
        has_builder_precision_flags=bflag is not None and hasattr(bflag, "FP16"),
        has_in_place_kv=bool(has_in_place),
        has_progress_monitor=hasattr(mod, "IProgressMonitor") and cfg is not None
        and hasattr(cfg, "progress_monitor"),
        has_user_managed_memory=strategy is not None and hasattr(strategy, "USER_MANAGED")
        and ctx is not None and hasattr(ctx, "set_device_memory"),
        has_device_memory_v2=eng is not None and hasattr(eng, "device_memory_size_v2"),
        # TensorRT-RTX 1.7 has the calls, but serialising its timing cache after a build crashed the
        # process (SIGSEGV in ITimingCache.serialize, seen on the H100): RTX builds use none.
        has_timing_cache=not is_rtx and cfg is not None and hasattr(cfg, "create_timing_cache")
        and hasattr(cfg, "set_timing_cache"),
        has_optimization_level=cfg is not None and hasattr(cfg, "builder_optimization_level"),
        has_compute_capability_api=cfg is not None and hasattr(cfg, "set_compute_capability"),
    )


@functools.lru_cache(maxsize=None)
def info() -> TrtInfo:
    """Which TensorRT was imported and what it supports (raises if none imports)."""
    mod = load()
    return features_of(mod, mod.__name__.split(".")[0])


# -- the GPU the engines are built for / run on -------------------------------------------------
@dataclass(frozen=True)
class GpuIdentity:
    name: str
    compute_capability: tuple[int, int]

    @property
    def sm(self) -> str:
        return f"sm{self.compute_capability[0]}{self.compute_capability[1]}"


def gpu_identity(device_id: int | None = None) -> GpuIdentity:
    """Name and compute capability of the current CUDA device (cupy; raises BackendError if none)."""
    from ..errors import BackendError

    if importlib.util.find_spec("cupy") is None:
        raise MissingDependencyError("building or running TensorRT engines", "cuda", "cupy")
    try:
        import cupy

        dev = cupy.cuda.Device(device_id) if device_id is not None else cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        return GpuIdentity(name=name, compute_capability=(int(props["major"]), int(props["minor"])))
    except Exception as e:  # noqa: BLE001 - no driver, no device
        raise BackendError(f"no usable CUDA device for TensorRT ({type(e).__name__}: {e})") from None


def _gpu_present() -> tuple[bool, str]:
    if importlib.util.find_spec("cupy") is None:
        return False, "cupy is not installed"
    try:
        import cupy

        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001
        return False, f"no usable CUDA device ({type(e).__name__})"
    return (n > 0), ("" if n > 0 else "no CUDA device")


def pick_backend(device: str = "auto") -> tuple[str, str]:
    """backend="auto": ("trt", why) when TensorRT imports and a GPU is present, else ("ort", why).

    `device` is the runtime's device ("auto" | "cpu" | "cuda"); TensorRT needs "cuda" or "auto".
    The caller logs the reason (`t5rt.trt` logger gets it at INFO too).
    """
    if device == "cpu":
        choice = ("ort", "device='cpu' was asked for: TensorRT runs on CUDA GPUs only")
    elif not available():
        choice = ("ort", f"TensorRT is not usable here: {unavailable_reason()}")
    else:
        ok, why = _gpu_present()
        if not ok:
            choice = ("ort", f"TensorRT imports but there is no GPU ({why})")
        else:
            i = info()
            gpu = gpu_identity()
            if i.is_rtx and gpu.compute_capability not in RTX_RUNS_ON:
                choice = ("ort", f"{i.module} {i.version_str} cannot run engines on {gpu.name} "
                                 f"(compute capability {gpu.compute_capability[0]}.{gpu.compute_capability[1]})")
            else:
                choice = ("trt", f"{i.module} {i.version_str} imports and {gpu.name} is present")
    log.info("backend=auto -> %s: %s", *choice)
    return choice
