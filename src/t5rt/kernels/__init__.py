"""CUDA kernels of the decoding step (kernels/*.cu), loaded once, called on cupy arrays.

Every kernel lives in kernels/*.cu (cache ops, token choice, beam top-k, the decoding
strategies' state updates, ...); this module is their one loader, one ABI check and the typed
wrappers; `reference` holds a NumPy reference of each, `host` runs the same sources on the CPU.

Where the kernels come from (`source()` says which was used):

1. the CMake build, a fatbin: `$T5RT_KERNELS_FATBIN`, else `build/kernels/t5rt_kernels.fatbin`
   beside this folder (`cmake -S . -B build/kernels && cmake --build build/kernels`);
2. otherwise NVRTC through `cupy.RawModule(code=...)` on the same sources (`nvrtc_source()`).

`$T5RT_KERNELS` = `auto` (default) | `fatbin` | `nvrtc` forces one. A fatbin older than the
sources, or built for another ABI, is never used silently: `auto` warns and compiles with NVRTC,
`fatbin` raises. When nothing loads, `BackendError` says why for each way tried.

Every wrapper takes cupy arrays, launches on the current cupy stream and, given its `out=` /
workspace buffers, allocates nothing and never reads device memory on the host, so a step
can be captured in a CUDA graph. Scalars that change per step (position, step counter, seed,
parents, valid length) are device arrays for the same reason.

`launcher=` (every wrapper, PointerTable, the workspaces): who runs the kernel. Default: the
CUDA module above (`CudaLauncher`, cupy arrays). `t5rt.kernels.host.HostKernels()` runs the
same sources compiled for the CPU on numpy arrays (tests), through these same wrappers.

`import t5rt.kernels` needs neither cupy nor a GPU (cupy is imported on first use).
"""

from __future__ import annotations

import enum
import os
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from t5rt.errors import BackendError, InvalidInputError, InvalidOptionError, MissingDependencyError

HEADER = "t5rt_kernels.cuh"


def _sources_dir() -> Path:
    """Where the .cu/.cuh sources are: `t5rt/kernels/cuda/` in an installed wheel (pyproject maps
    the repo's kernels/ there), else the checkout's top-level kernels/ (editable install)."""
    here = Path(__file__).resolve().parent
    for d in (here / "cuda", here.parents[2] / "kernels"):
        if (d / HEADER).is_file():
            return d
    return here / "cuda"  # absent: kernel_sources() is empty and load() says so


KERNELS_DIR = _sources_dir()
FATBIN_ENV = "T5RT_KERNELS_FATBIN"
SOURCE_ENV = "T5RT_KERNELS"
DEFAULT_FATBIN = KERNELS_DIR.parent / "build" / "kernels" / "t5rt_kernels.fatbin"  # the checkout's CMake build
NVRTC_OPTIONS = ("--std=c++17",)

# Mirrors T5RT_KERNELS_ABI in kernels/t5rt_kernels.cuh (a build lacking t5rt_abi_<ABI> is refused).
ABI = 7


class Geometry(enum.IntEnum):
    """Launch geometry; mirrors `enum T5rtGeometry` in kernels/t5rt_kernels.cuh."""

    COPY_THREADS = 256
    SAMPLE_THREADS = 1024
    ARGMAX_THREADS = 1024
    TOPK_THREADS = 256
    TOPK_CHUNK = 4096
    TOPK_MAX_K = 64
    DEC_THREADS = 256
    DEC_MAX_K = 64


class CopyUnit(enum.IntEnum):
    """Bytes moved per thread by the cache kernels; mirrors `enum T5rtCopyUnit` (t5rt_kernels.cuh)."""

    U16 = 2
    U32 = 4
    U64 = 8
    U128 = 16


_UNIT_SUFFIX = {CopyUnit.U16: "u16", CopyUnit.U32: "u32", CopyUnit.U64: "u64", CopyUnit.U128: "u128"}

# Every kernel the wrappers launch (tests check each is in the build and in the NVRTC source).
KERNEL_NAMES: tuple[str, ...] = tuple(
    [f"t5rt_{op}_{s}" for op in ("kv_write", "beam_gather", "beam_scatter", "rows_copy") for s in _UNIT_SUFFIX.values()]
    + ["t5rt_topk_topp_sample", "t5rt_sample_logprob", "t5rt_argmax_rows", "t5rt_argmax_logsumexp", "t5rt_topk_partial", "t5rt_topk_merge",
       "t5rt_row_logsumexp", "t5rt_dec_sample_update", "t5rt_dec_beam_update", "t5rt_dec_min_new_tokens",
       "t5rt_pool_set", "t5rt_pool_step", f"t5rt_abi_{ABI}"]
    # the native decoder step (kernels/native_decoder.cu; wrappers in t5rt.kernels.native)
    + [f"t5rt_native_{k}_{s}" for k in ("step", "phase") for s in ("f32", "f16", "bf16")]
)

__all__ = [
    "ABI", "BeamUpdateWorkspace", "CopyUnit", "CudaLauncher", "Geometry", "KERNEL_NAMES", "Launcher",
    "PointerTable", "PoolField", "PoolState", "SampleOptions", "TopKWorkspace",
    "argmax_logsumexp", "argmax_rows", "beam_reorder", "beam_step", "beam_topk", "beam_update",
    "cuda_launcher", "fatbin_path", "get_function", "kernel_sources", "kv_write", "load",
    "min_new_tokens", "nvrtc_source", "pool_set", "pool_step", "pool_update_row", "reorder_scratch", "row_logsumexp", "rows_copy", "sample_logprob",
    "sample_update", "source", "topk_topp_sample",
]


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def kernel_sources() -> list[Path]:
    """kernels/*.cu in the order the CMake unity build includes them (sorted)."""
    return sorted(KERNELS_DIR.glob("*.cu"))


def nvrtc_source() -> str:
    """One self-contained translation unit: the header inlined, then every .cu (NVRTC has no -I)."""
    parts = [f'#line 1 "{HEADER}"\n', (KERNELS_DIR / HEADER).read_text()]
    include = re.compile(r'^\s*#\s*include\s+"' + re.escape(HEADER) + r'"\s*$', re.M)
    for path in kernel_sources():
        parts.append(f'\n#line 1 "{path.name}"\n')
        parts.append(include.sub("// (header inlined above)", path.read_text()))
    return "".join(parts)


def fatbin_path() -> Path:
    env = os.environ.get(FATBIN_ENV)
    return Path(env) if env else DEFAULT_FATBIN


def _stale_reason(path: Path) -> str | None:
    """Why the fatbin must not be used (missing, older than a source), or None."""
    if not path.is_file():
        return f"{path} does not exist"
    built = path.stat().st_mtime
    sources = kernel_sources() + [KERNELS_DIR / HEADER]
    newer = [p.name for p in sources if p.stat().st_mtime > built]
    if newer and not os.environ.get(FATBIN_ENV):  # an explicit path is trusted, still ABI-checked
        return f"{path} is older than {', '.join(newer)}: rebuild with `cmake --build build/kernels`"
    return None


class _Loaded:
    def __init__(self, module: Any, how: str):
        self.module = module
        self.how = how
        self.functions: dict[str, Any] = {}

    def function(self, name: str) -> Any:
        fn = self.functions.get(name)
        if fn is None:
            fn = self.functions[name] = self.module.get_function(name)
        return fn


_lock = threading.Lock()
_loaded: dict[str, _Loaded] = {}


def _cupy() -> Any:
    try:
        import cupy
    except ImportError as e:
        raise MissingDependencyError("t5rt.kernels (CUDA kernels)", "cuda", "cupy") from e
    return cupy


def _check_abi(mod: Any, how: str) -> None:
    try:
        mod.get_function(f"t5rt_abi_{ABI}")
    except Exception as e:  # noqa: BLE001 - cupy raises CUDADriverError / CompileException
        raise BackendError(
            f"kernels from {how} do not provide ABI {ABI} (t5rt_abi_{ABI}: {type(e).__name__}: {e}); "
            "rebuild with `cmake --build build/kernels`"
        ) from e


def _load_fatbin() -> _Loaded:
    cupy = _cupy()
    path = fatbin_path()
    if why := _stale_reason(path):
        raise BackendError(f"kernel fatbin not usable: {why}")
    how = f"fatbin:{path}"
    try:
        mod = cupy.RawModule(path=str(path))
    except Exception as e:  # noqa: BLE001
        raise BackendError(f"loading {path} failed ({type(e).__name__}: {e})") from e
    _check_abi(mod, how)
    return _Loaded(mod, how)


def _load_nvrtc() -> _Loaded:
    cupy = _cupy()
    how = "nvrtc"
    try:
        mod = cupy.RawModule(code=nvrtc_source(), options=NVRTC_OPTIONS, backend="nvrtc")
        mod.get_function(f"t5rt_abi_{ABI}")  # forces the compilation now, not at the first launch
    except Exception as e:  # noqa: BLE001 - cupy raises CompileException / CUDADriverError
        raise BackendError(f"NVRTC compilation of kernels/*.cu failed ({type(e).__name__}: {e})") from e
    return _Loaded(mod, how)


def load(how: str | None = None) -> _Loaded:
    """The kernel module: how = 'auto' | 'fatbin' | 'nvrtc' (default: $T5RT_KERNELS or 'auto')."""
    how = how or os.environ.get(SOURCE_ENV, "auto")
    if how not in ("auto", "fatbin", "nvrtc"):
        raise InvalidOptionError(f"kernel source {how!r} is invalid: use 'auto', 'fatbin' or 'nvrtc'")
    with _lock:
        if how in _loaded:
            return _loaded[how]
        if how == "fatbin":
            loaded = _load_fatbin()
        elif how == "nvrtc":
            loaded = _load_nvrtc()
        else:
            try:
                loaded = _load_fatbin()
            except MissingDependencyError:
                raise
            except BackendError as fatbin_error:
                if fatbin_path().is_file():  # a build exists but is stale/broken: say so
                    warnings.warn(f"t5rt.kernels: {fatbin_error}; compiling with NVRTC instead", stacklevel=2)
                try:
                    loaded = _load_nvrtc()
                except BackendError as nvrtc_error:
                    raise BackendError(
                        f"no CUDA kernels could be loaded: {fatbin_error}; {nvrtc_error}"
                    ) from nvrtc_error
        _loaded[how] = loaded
        return loaded


def source() -> str:
    """Where the kernels in use came from: 'fatbin:<path>' or 'nvrtc' (loads them if needed)."""
    return load().how


def get_function(name: str) -> Any:
    return load().function(name)


# ----------------------------------------------------------------------------------------------
# Launchers: who runs a kernel (the CUDA module on cupy arrays, or the host build on numpy)
# ----------------------------------------------------------------------------------------------


class Launcher(Protocol):
    """Runs kernel `name` over grid x block with the wrapper's arguments (arrays, numpy scalars,
    None = null pointer) and `shared_mem` bytes of dynamic shared memory per block; `pdl`: with
    programmatic dependent launch (t5rt.kernels.pdl; the kernel must call t5rt_pdl_wait()). `xp`
    is the array module of its arrays (cupy / numpy)."""

    xp: Any

    def launch(self, name: str, grid: tuple[int, ...], block: tuple[int, ...], args: Sequence[Any],
               shared_mem: int = 0, pdl: bool = False) -> None: ...


_NULL = np.uint64(0)


class CudaLauncher:
    """The loaded module (fatbin or NVRTC, `load()`) on the current cupy stream."""

    def __init__(self, how: str | None = None):
        self.xp = _cupy()
        self.loaded = load(how)

    def launch(self, name: str, grid: tuple[int, ...], block: tuple[int, ...], args: Sequence[Any],
               shared_mem: int = 0, pdl: bool = False) -> None:
        fn = self.loaded.function(name)
        if pdl:
            from . import pdl as _pdl

            _pdl.launch(fn, grid, block, args, shared_mem, self.xp.cuda.get_current_stream().ptr)
            return
        fn(grid, block, tuple(_NULL if a is None else a for a in args), shared_mem=shared_mem)


_cuda: dict[str, CudaLauncher] = {}


def cuda_launcher(how: str | None = None) -> CudaLauncher:
    """The default launcher of every wrapper: the kernels from `how` (default $T5RT_KERNELS or
    'auto', as `load`), loaded on first use."""
    how = how or os.environ.get(SOURCE_ENV, "auto")
    launcher = _cuda.get(how)
    if launcher is None:
        launcher = _cuda[how] = CudaLauncher(how)
    return launcher


def _launcher(launcher: Launcher | None) -> Launcher:
    return launcher if launcher is not None else cuda_launcher()


# ----------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise InvalidInputError(msg)


def _check_array(xp: Any, a: Any, name: str, dtype: Any, ndim: int | None = None, shape: tuple | None = None) -> None:
    _require(isinstance(a, xp.ndarray), f"{name} must be a {xp.__name__} array, got {type(a).__name__}")
    _require(a.dtype == np.dtype(dtype), f"{name} must be {np.dtype(dtype).name}, got {a.dtype}")
    if ndim is not None:
        _require(a.ndim == ndim, f"{name} must have {ndim} dims, got shape {a.shape}")
    if shape is not None:
        _require(tuple(a.shape) == tuple(shape), f"{name} must have shape {tuple(shape)}, got {a.shape}")


def _check_contiguous(a: Any, name: str) -> None:
    _require(a.flags.c_contiguous, f"{name} must be C-contiguous (use ascontiguousarray)")


def _check_buffer(xp: Any, a: Any, name: str, dtype: Any, shape: tuple) -> None:
    """A state / output buffer the kernel reads or writes in place: exact dtype, shape, contiguous."""
    _check_array(xp, a, name, dtype, shape=shape)
    _check_contiguous(a, name)


def _ptr(a: Any) -> int:
    return int(a.ctypes.data) if isinstance(a, np.ndarray) else int(a.data.ptr)


def _grid_1d(total: int, threads: int, cap: int = 65535 * 8) -> int:
    return max(1, min(cap, (total + threads - 1) // threads))


# ----------------------------------------------------------------------------------------------
# KV cache: write the new row of every layer, reorder by parent beams
# ----------------------------------------------------------------------------------------------


class PointerTable:
    """The decoder's self caches (or their new rows) as one device table of data pointers.

    arrays: 2*L same-shape, same-dtype, C-contiguous cupy arrays (self_k.0, self_v.0, ...), each
    [N, H, T, Dk] (caches) or [N, H, 1, Dk] (new rows). Built once per bucket: the table is a
    device uint64 array and the arrays are kept alive by it. launcher: whose arrays (module doc).
    """

    def __init__(self, arrays: Sequence[Any], launcher: Launcher | None = None):
        self.launcher = _launcher(launcher)
        xp = self.xp = self.launcher.xp
        _require(len(arrays) > 0, "PointerTable needs at least one array")
        first = arrays[0]
        for i, a in enumerate(arrays):
            _check_array(xp, a, f"arrays[{i}]", first.dtype, ndim=4, shape=first.shape)
            _check_contiguous(a, f"arrays[{i}]")
        _require(first.dtype.itemsize in (2, 4), f"cache dtype must be fp32/fp16/bf16(uint16), got {first.dtype}")
        self.arrays = list(arrays)
        self.shape: tuple[int, int, int, int] = tuple(int(d) for d in first.shape)  # type: ignore[assignment]
        self.dtype = first.dtype
        self.ptrs = xp.asarray(np.array([_ptr(a) for a in arrays], dtype=np.uint64))  # [2L]

    def __len__(self) -> int:
        return len(self.arrays)

    def row_bytes(self) -> int:
        return self.shape[3] * self.dtype.itemsize


def _copy_unit(row_bytes: int, pointers: Sequence[int]) -> CopyUnit:
    """Widest unit dividing a cache row and every base pointer."""
    for unit in (CopyUnit.U128, CopyUnit.U64, CopyUnit.U32, CopyUnit.U16):
        if row_bytes % unit == 0 and all(p % unit == 0 for p in pointers):
            return unit
    raise InvalidInputError(f"cache rows of {row_bytes} bytes are not a multiple of 2 bytes")


def kv_write(caches: PointerTable, rows: PointerTable, position: Any) -> None:
    """caches[l][n, :, position[n], :] = rows[l][n, :, 0, :] for every tensor l, one launch.

    caches: [N, H, T, Dk] x 2L; rows: [N, H, 1, Dk] x 2L (same dtype); position: [N] int64 on the
    device (a position outside [0, T) writes nothing).
    """
    n, h, t, dk = caches.shape
    _require(len(rows) == len(caches), f"{len(rows)} row tensors for {len(caches)} caches")
    _require(rows.shape == (n, h, 1, dk), f"rows must be {(n, h, 1, dk)}, got {rows.shape}")
    _require(rows.dtype == caches.dtype, f"rows are {rows.dtype}, caches {caches.dtype}")
    _require(rows.launcher is caches.launcher, "rows and caches are tables of different launchers")
    _check_array(caches.xp, position, "position", np.int64, shape=(n,))
    unit = _copy_unit(caches.row_bytes(), [_ptr(a) for a in caches.arrays + rows.arrays])
    row_units = caches.row_bytes() // unit
    total = len(caches) * n * h * row_units
    threads = int(Geometry.COPY_THREADS)
    caches.launcher.launch(
        f"t5rt_kv_write_{_UNIT_SUFFIX[unit]}", (_grid_1d(total, threads),), (threads,),
        (caches.ptrs, rows.ptrs, position, np.int32(len(caches)), np.int32(n), np.int32(h),
         np.int32(t), np.int32(row_units)),
    )


def rows_copy(dst: PointerTable, src: PointerTable, dst_rows: Any, src_rows: Any) -> None:
    """dst[l][dst_rows[j]] = src[l][src_rows[j]] for every tensor l and pair j, one launch.

    dst: [N, ...] x L, src: [M, ...] x L (the same trailing shape and dtype); dst_rows, src_rows:
    [k] int64 on the device, in range (not checked on the host: they are device arrays), and
    dst_rows distinct."""
    _require(len(dst) == len(src), f"{len(src)} source tensors for {len(dst)} destinations")
    _require(dst.shape[1:] == src.shape[1:] and dst.dtype == src.dtype,
             f"rows differ: {src.shape}/{src.dtype} into {dst.shape}/{dst.dtype}")
    _require(src.launcher is dst.launcher, "src and dst are tables of different launchers")
    xp = dst.xp
    _check_array(xp, dst_rows, "dst_rows", np.int64, ndim=1)
    _check_array(xp, src_rows, "src_rows", np.int64, shape=tuple(dst_rows.shape))
    k = int(dst_rows.shape[0])
    if k == 0:
        return
    row_bytes = int(np.prod(dst.shape[1:])) * dst.dtype.itemsize
    unit = _copy_unit(row_bytes, [_ptr(a) for a in dst.arrays + src.arrays])
    row_units = row_bytes // unit
    threads = int(Geometry.COPY_THREADS)
    dst.launcher.launch(
        f"t5rt_rows_copy_{_UNIT_SUFFIX[unit]}", (_grid_1d(len(dst) * k * row_units, threads),), (threads,),
        (dst.ptrs, src.ptrs, dst_rows, src_rows, np.int32(k), np.int32(len(dst)), np.int64(row_units)))


def reorder_scratch(caches: PointerTable, tensors: int | None = None) -> Any:
    """Scratch for beam_reorder: [S, N, H, T, Dk] in the cache dtype, S = tensors (default all 2L).

    Fewer tensors use less memory and cost 2 launches per group of S tensors instead of 2 in all.
    """
    s = len(caches) if tensors is None else int(tensors)
    _require(1 <= s <= len(caches), f"scratch tensors must be in [1, {len(caches)}], got {s}")
    return caches.xp.empty((s, *caches.shape), dtype=caches.dtype)


def beam_reorder(caches: PointerTable, parent: Any, length: Any, scratch: Any) -> None:
    """cache[l][n, :, :len, :] = old cache[l][parent[n], :, :len, :] for every tensor l.

    parent: [N] int64 device (global row of the parent beam, N = B * num_beams); length: [1] int64
    device (valid rows, = t + 1 after step t); scratch: from `reorder_scratch`. Rows whose parent
    is themselves are not copied. Two launches per group of scratch.shape[0] tensors.
    """
    n, h, t, dk = caches.shape
    xp = caches.xp
    _check_array(xp, parent, "parent", np.int64, shape=(n,))
    _check_array(xp, length, "length", np.int64)
    _require(length.size == 1, f"length must hold one element, got shape {length.shape}")
    _check_array(xp, scratch, "scratch", caches.dtype, ndim=5)
    _require(tuple(scratch.shape[1:]) == caches.shape and scratch.shape[0] >= 1,
             f"scratch must be [S, {n}, {h}, {t}, {dk}], got {scratch.shape}")
    _check_contiguous(scratch, "scratch")
    unit = _copy_unit(caches.row_bytes(), [_ptr(a) for a in caches.arrays] + [_ptr(scratch)])
    row_units = caches.row_bytes() // unit
    gather, scatter = (f"t5rt_beam_{op}_{_UNIT_SUFFIX[unit]}" for op in ("gather", "scatter"))
    slots = int(scratch.shape[0])
    threads = (int(Geometry.COPY_THREADS),)
    for start in range(0, len(caches), slots):
        count = min(slots, len(caches) - start)
        table = caches.ptrs[start:start + count]
        args = (table, scratch, parent, length, np.int32(n), np.int32(h), np.int32(t), np.int32(row_units))
        caches.launcher.launch(gather, (count * n * h,), threads, args)
        caches.launcher.launch(scatter, (count * n * h,), threads, args)


# ----------------------------------------------------------------------------------------------
# Token choice: sampling and argmax
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleOptions:
    """Hugging Face warpers applied before the draw (TemperatureLogitsWarper, TopK, TopP).

    top_k = 0 disables top-k; top_p = 1.0 disables top-p (as in `generate()`).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise InvalidOptionError(f"temperature={self.temperature} must be > 0 (use greedy for 0)")
        if int(self.top_k) != self.top_k or self.top_k < 0:
            raise InvalidOptionError(f"top_k={self.top_k} must be an integer >= 0 (0 = off)")
        if not 0.0 <= self.top_p <= 1.0:
            raise InvalidOptionError(f"top_p={self.top_p} must be in [0, 1] (1 = off)")


def _check_logits(xp: Any, logits: Any) -> tuple[int, int, int]:
    """-> (rows, V, row stride in elements); rows must be contiguous, stride may exceed V."""
    _check_array(xp, logits, "logits", np.float32, ndim=2)
    _require(logits.strides[1] == 4, "logits rows must be contiguous (last-axis stride 1)")
    rows, v = (int(d) for d in logits.shape)
    _require(rows >= 1 and v >= 1, f"logits must be non-empty, got shape {logits.shape}")
    return rows, v, int(logits.strides[0]) // 4


def _out(xp: Any, out: Any, shape: tuple[int, ...], dtype: Any, name: str) -> Any:
    if out is None:
        return xp.empty(shape, dtype=dtype)
    _check_buffer(xp, out, name, dtype, shape)
    return out


def _sampling_call(logits: Any, seed: Any, step: Any, launcher: Launcher | None) -> tuple[Any, Any, int, int, int]:
    """What both sampling kernels check first -> (launcher, xp, rows, vocab, row stride)."""
    launcher = _launcher(launcher)
    xp = launcher.xp
    rows, v, stride = _check_logits(xp, logits)
    _check_array(xp, seed, "seed", np.uint64)
    _check_array(xp, step, "step", np.int64)
    _require(seed.size == 1 and step.size == 1, "seed and step must each hold one element")
    return launcher, xp, rows, v, stride


def topk_topp_sample(logits: Any, seed: Any, step: Any, options: SampleOptions, out: Any = None,
                     launcher: Launcher | None = None) -> Any:
    """One token per row drawn from softmax(top_p(top_k(logits / temperature))).

    logits: [N, V] fp32; seed: [1] uint64 device; step: [1] int64 device counter (the draw is
    u(seed, step, row) of t5rt.decoding.rng, so a replayed graph draws fresh numbers when the
    step advances). Returns out: [N] int64.
    """
    launcher, xp, rows, v, stride = _sampling_call(logits, seed, step, launcher)
    out = _out(xp, out, (rows,), np.int64, "out")
    top_k = int(options.top_k) if 0 < options.top_k < v else 0
    launcher.launch(
        "t5rt_topk_topp_sample", (rows,), (int(Geometry.SAMPLE_THREADS),),
        (logits, np.int64(stride), np.int32(v), np.float32(options.temperature), np.int32(top_k),
         np.float32(options.top_p), seed, step, out),
    )
    return out


def sample_logprob(logits: Any, seed: Any, step: Any, options: SampleOptions, row_offset: int = 0,
                   out: Any = None, out_logprob: Any = None,
                   launcher: Launcher | None = None) -> tuple[Any, Any]:
    """topk_topp_sample's draw plus the token's log-probability under the warped distribution.

    The RNG row of logits row n is row_offset + n (a request split into batch chunks draws as
    one batch). logprob = (x[token] - max x) - log(sum of kept exp(x - max x)), x = logits /
    temperature: log_softmax of Hugging Face's warped scores at the token.
    Returns (out [N] int64, out_logprob [N] fp32).
    """
    launcher, xp, rows, v, stride = _sampling_call(logits, seed, step, launcher)
    _require(int(row_offset) >= 0, f"row_offset={row_offset} must be >= 0")
    out = _out(xp, out, (rows,), np.int64, "out")
    out_logprob = _out(xp, out_logprob, (rows,), np.float32, "out_logprob")
    top_k = int(options.top_k) if 0 < options.top_k < v else 0
    launcher.launch(
        "t5rt_sample_logprob", (rows,), (int(Geometry.SAMPLE_THREADS),),
        (logits, np.int64(stride), np.int32(v), np.float32(options.temperature), np.int32(top_k),
         np.float32(options.top_p), seed, step, np.int64(row_offset), out, out_logprob),
    )
    return out, out_logprob


def argmax_logsumexp(logits: Any, out: Any = None, row_max: Any = None, row_logsum: Any = None,
                     launcher: Launcher | None = None) -> tuple[Any, Any, Any]:
    """Greedy's token choice in one pass: logits [N, V] fp32 -> (out [N] int64 first argmax,
    row_max [N], row_logsum [N] = log(sum(exp(x - max)))); log-prob of the argmax token =
    (logits[n, out] - row_max) - row_logsum. One launch, one block per row."""
    launcher = _launcher(launcher)
    xp = launcher.xp
    rows, v, stride = _check_logits(xp, logits)
    out = _out(xp, out, (rows,), np.int64, "out")
    row_max = _out(xp, row_max, (rows,), np.float32, "row_max")
    row_logsum = _out(xp, row_logsum, (rows,), np.float32, "row_logsum")
    launcher.launch("t5rt_argmax_logsumexp", (rows,), (int(Geometry.ARGMAX_THREADS),),
                    (logits, np.int64(stride), np.int32(v), out, row_max, row_logsum))
    return out, row_max, row_logsum


def row_logsumexp(logits: Any, row_max: Any = None, row_logsum: Any = None,
                  launcher: Launcher | None = None) -> tuple[Any, Any]:
    """Per row of logits [N, V] fp32 (C-contiguous): row_max [N] = max, row_logsum [N] =
    log(sum(exp(x - max))), so log_softmax = (x - row_max) - row_logsum (beam_step's first half)."""
    launcher = _launcher(launcher)
    xp = launcher.xp
    _check_array(xp, logits, "logits", np.float32, ndim=2)
    _check_contiguous(logits, "logits")
    rows, v = (int(d) for d in logits.shape)
    row_max = _out(xp, row_max, (rows,), np.float32, "row_max")
    row_logsum = _out(xp, row_logsum, (rows,), np.float32, "row_logsum")
    launcher.launch("t5rt_row_logsumexp", (rows,), (int(Geometry.TOPK_THREADS),),
                    (logits, np.int32(v), row_max, row_logsum))
    return row_max, row_logsum


def argmax_rows(logits: Any, out: Any = None, launcher: Launcher | None = None) -> Any:
    """First index of each row's maximum: logits [N, V] fp32 -> out [N] int64."""
    launcher = _launcher(launcher)
    xp = launcher.xp
    rows, v, stride = _check_logits(xp, logits)
    out = _out(xp, out, (rows,), np.int64, "out")
    launcher.launch("t5rt_argmax_rows", (rows,), (int(Geometry.ARGMAX_THREADS),),
                    (logits, np.int64(stride), np.int32(v), out))
    return out


# ----------------------------------------------------------------------------------------------
# Beam search: top-k over num_beams * V, optionally fused with log_softmax + beam scores
# ----------------------------------------------------------------------------------------------


class TopKWorkspace:
    """Buffers of beam_topk / beam_step for one (batch, width = num_beams * V, k) bucket."""

    def __init__(self, batch: int, width: int, k: int, num_beams: int = 1, launcher: Launcher | None = None):
        self.launcher = _launcher(launcher)
        cupy = self.launcher.xp
        _require(1 <= k <= int(Geometry.TOPK_MAX_K), f"k={k} must be in [1, {int(Geometry.TOPK_MAX_K)}]")
        _require(k <= width, f"k={k} exceeds the row width {width}")
        self.batch, self.width, self.k, self.num_beams = batch, width, k, num_beams
        self.chunks = (width + int(Geometry.TOPK_CHUNK) - 1) // int(Geometry.TOPK_CHUNK)
        self.candidates = cupy.empty((batch, self.chunks, k), dtype=np.uint64)  # [B, chunks, k]
        self.row_max = cupy.empty((batch * num_beams,), dtype=np.float32)       # [B*nb]
        self.row_logsum = cupy.empty((batch * num_beams,), dtype=np.float32)    # [B*nb]
        self.row_argmax = cupy.empty((batch * num_beams,), dtype=np.int64)      # [B*nb] (by-product)
        self.values = cupy.empty((batch, k), dtype=np.float32)                  # [B, k]
        self.indices = cupy.empty((batch, k), dtype=np.int64)                   # [B, k]

    def matches(self, batch: int, width: int, k: int) -> bool:
        return (batch, width, k) == (self.batch, self.width, self.k)


def _topk_launch(scores: Any, ws: TopKWorkspace, fused: Any, v: int, num_beams: int) -> tuple[Any, Any]:
    b, m, k = ws.batch, ws.width, ws.k
    row_max, row_logsum, beam_scores = fused if fused is not None else (None, None, None)
    threads = (int(Geometry.TOPK_THREADS),)
    ws.launcher.launch(
        "t5rt_topk_partial", (ws.chunks, b), threads,
        (scores, np.int64(m), np.int32(k), row_max, row_logsum, beam_scores, np.int32(v),
         np.int32(num_beams), ws.candidates),
    )
    ws.launcher.launch(
        "t5rt_topk_merge", (b,), threads, (ws.candidates, np.int32(ws.chunks * k), np.int32(k), ws.values, ws.indices)
    )
    return ws.values, ws.indices


def beam_topk(scores: Any, k: int, workspace: TopKWorkspace | None = None,
              launcher: Launcher | None = None) -> tuple[Any, Any]:
    """Per row of scores [B, M] fp32 (C-contiguous): the k largest, descending, ties -> lower index.

    Returns (values [B, k] fp32, indices [B, k] int64), the workspace's own buffers (the
    workspace's launcher runs it).
    """
    if workspace is not None:
        launcher = workspace.launcher
    launcher = _launcher(launcher)
    _check_array(launcher.xp, scores, "scores", np.float32, ndim=2)
    _check_contiguous(scores, "scores")
    b, m = (int(d) for d in scores.shape)
    ws = workspace or TopKWorkspace(b, m, k, launcher=launcher)
    _require(ws.matches(b, m, k), f"workspace is for {(ws.batch, ws.width, ws.k)}, call is {(b, m, k)}")
    return _topk_launch(scores, ws, None, m, 1)


def beam_step(logits: Any, beam_scores: Any, num_beams: int, k: int,
              workspace: TopKWorkspace | None = None, launcher: Launcher | None = None) -> tuple[Any, Any]:
    """Fused beam-search candidate selection (what HF does with log_softmax + add + topk):

        scores[b, j*V + v] = log_softmax(logits[b*nb + j])[v] + beam_scores[b*nb + j]
        values, indices = top-k of scores[b] (descending, ties -> lower index)

    logits: [B*nb, V] fp32 C-contiguous; beam_scores: [B*nb] fp32. indices index nb*V
    (beam = index // V, token = index % V). Three launches, no allocation with a workspace.
    """
    if workspace is not None:
        launcher = workspace.launcher
    launcher = _launcher(launcher)
    xp = launcher.xp
    _check_array(xp, logits, "logits", np.float32, ndim=2)
    _check_contiguous(logits, "logits")
    rows, v = (int(d) for d in logits.shape)
    _require(num_beams >= 1 and rows % num_beams == 0, f"{rows} logit rows are not a multiple of num_beams={num_beams}")
    _check_array(xp, beam_scores, "beam_scores", np.float32, shape=(rows,))
    b = rows // num_beams
    ws = workspace or TopKWorkspace(b, num_beams * v, k, num_beams, launcher=launcher)
    _require(ws.matches(b, num_beams * v, k) and ws.num_beams == num_beams,
             f"workspace is for {(ws.batch, ws.width, ws.k, ws.num_beams)}, call is {(b, num_beams * v, k, num_beams)}")
    # row statistics in one pass of 1024 threads (t5rt_row_logsumexp: two passes of 256, which
    # is latency-bound with few rows)
    launcher.launch("t5rt_argmax_logsumexp", (rows,), (int(Geometry.ARGMAX_THREADS),),
                    (logits, np.int64(v), np.int32(v), ws.row_argmax, ws.row_max, ws.row_logsum))
    return _topk_launch(logits, ws, (ws.row_max, ws.row_logsum, beam_scores), v, num_beams)


# ----------------------------------------------------------------------------------------------
# Decoding strategies: each step's state update in one launch (decoding_step.cu)
# ----------------------------------------------------------------------------------------------


def _check_scalar(xp: Any, a: Any, name: str, dtype: Any) -> None:
    """A per-step device scalar (step counter, done flag): one element of `dtype`."""
    _check_array(xp, a, name, dtype)
    _require(a.size == 1, f"{name} must hold one element, got shape {a.shape}")


def sample_update(nxt: Any, history: Any, tokens: Any, unfinished: Any, seq_logprob: Any,
                  step_counter: Any, done: Any, *, pad: int, eos: int, scores: Any = None,
                  row_max: Any = None, row_logsum: Any = None, logprob: Any = None,
                  token_logprob: Any = None, launcher: Launcher | None = None) -> None:
    """Greedy / sampling bookkeeping of one step (t5rt.decoding.sampling), in place, one launch.

    With t = step_counter, T = history.shape[1] - 1 (max_new_tokens), col = min(t + 1, T), per
    row n (Hugging Face `_sample`):
        tok = nxt[n] if unfinished[n] else pad
        lp  = (scores[n, tok] - row_max[n]) - row_logsum[n]        (or logprob[n], scores=None)
        unless done: seq_logprob[n] += lp and token_logprob[n, col] = lp (unfinished rows);
                     history[n, col] = tok; tokens[n] = tok; unfinished[n] &= tok != eos, t+1 < T
        t += not done; done = not any(unfinished)
    nxt, tokens [N] int64; history [N, T+1] int64; unfinished [N] bool; seq_logprob [N] fp32;
    step_counter [] int64; done [] bool; scores [N, V] fp32 C-contiguous with row_max and
    row_logsum [N] fp32, or logprob [N] fp32; token_logprob [N, T+1] fp32 or None.
    """
    launcher = _launcher(launcher)
    xp = launcher.xp
    _check_buffer(xp, history, "history", np.int64, tuple(history.shape))
    _require(history.ndim == 2 and history.shape[1] >= 2, f"history must be [N, T+1], got {history.shape}")
    n, t = int(history.shape[0]), int(history.shape[1]) - 1
    for a, name, dtype in ((nxt, "nxt", np.int64), (tokens, "tokens", np.int64),
                           (unfinished, "unfinished", np.bool_), (seq_logprob, "seq_logprob", np.float32)):
        _check_buffer(xp, a, name, dtype, (n,))
    _check_scalar(xp, step_counter, "step_counter", np.int64)
    _check_scalar(xp, done, "done", np.bool_)
    v = 0
    if scores is not None:
        _check_array(xp, scores, "scores", np.float32, ndim=2)
        _check_contiguous(scores, "scores")
        _require(scores.shape[0] == n, f"scores has {scores.shape[0]} rows, history {n}")
        v = int(scores.shape[1])
        _check_buffer(xp, row_max, "row_max", np.float32, (n,))
        _check_buffer(xp, row_logsum, "row_logsum", np.float32, (n,))
    else:
        _require(logprob is not None, "sample_update needs scores (+ row_max, row_logsum) or logprob")
        _check_buffer(xp, logprob, "logprob", np.float32, (n,))
    if token_logprob is not None:
        _check_buffer(xp, token_logprob, "token_logprob", np.float32, (n, t + 1))
    launcher.launch("t5rt_dec_sample_update", (1,), (int(Geometry.DEC_THREADS),), (
        scores, row_max, row_logsum, logprob, nxt, history, tokens, unfinished, seq_logprob,
        token_logprob, step_counter, done, np.int32(n), np.int32(v), np.int32(t), np.int64(pad),
        np.int64(eos)))


class BeamUpdateWorkspace:
    """Scratch of beam_update for one (batch, num_beams, max_new_tokens, output_scores)."""

    def __init__(self, batch: int, num_beams: int, max_new_tokens: int, output_scores: bool,
                 launcher: Launcher | None = None):
        self.launcher = _launcher(launcher)
        xp = self.launcher.xp
        _require(1 <= 2 * num_beams <= int(Geometry.DEC_MAX_K),
                 f"beam_update keeps 2 * num_beams <= {int(Geometry.DEC_MAX_K)} candidates, num_beams={num_beams}")
        self.batch, self.num_beams, self.max_new_tokens = batch, num_beams, max_new_tokens
        self.output_scores = bool(output_scores)
        n, w = batch * num_beams, max_new_tokens + 1
        self.hist = xp.zeros((n, w), dtype=np.int64)  # [N, T+1] running sequences before the step
        self.fin = xp.zeros((n, w), dtype=np.int64)  # [B*nb, T+1] finished ones before the step
        self.tlp = xp.zeros((n, w), dtype=np.float32) if output_scores else None  # [N, T+1]
        self.fin_tlp = xp.zeros((n, w), dtype=np.float32) if output_scores else None  # [B*nb, T+1]
        self.sel_run = xp.zeros((batch, num_beams), dtype=np.int32)  # [B, nb] chosen candidate
        self.sel_fin = xp.zeros((batch, num_beams), dtype=np.int32)  # [B, nb] chosen merged entry


def beam_update(cand_score: Any, cand_idx: Any, cand_lp: Any, *, denom: Any, best_denom: float | None,
                early_stopping_true: bool, history: Any, tokens: Any, parent: Any, running_score: Any,
                fin_seq: Any, fin_score: Any, fin_flag: Any, fin_len: Any, heuristic_unsat: Any,
                token_logprob: Any, fin_token_logprob: Any, step_counter: Any, done: Any,
                vocab_size: int, eos: int, workspace: BeamUpdateWorkspace) -> None:
    """Beam search after candidate selection (t5rt.decoding.beam, Hugging Face `_beam_search`),
    in place, one launch (the workspace's launcher).

    Per input b, at t = step_counter (K = 2 nb candidates, descending): running beams = best nb
    of cand_score + (hit ? -1e9 : 0), hit = token == eos or t+1 >= T; finished hypotheses = best
    nb of (fin_score ++ cand_score / denom[t] masked by -1e9 where: early_stopping_true and all
    nb finished, the early-stop heuristic is satisfied, or the candidate is not a hit among the
    first nb); heuristic_unsat &= best running / (best_denom or denom[t]) beats the worst
    finished; sequences (and per-token log-probs) follow their parents with the token at
    column min(t+1, T); t += 1; done as HF's loop would stop. Once done, only parent changes
    (to the identity).
    cand_score [B, K] fp32; cand_idx [B, K] int64 into nb*V; cand_lp [B, K] fp32 (with
    token_logprob) or None; denom [T+1] fp32 = (t+1)**length_penalty; best_denom:
    T**length_penalty for early_stopping="never" with length_penalty > 0, else None.
    history [N, T+1], tokens, parent [N] int64; running_score, fin_score [B, nb] fp32;
    fin_seq [B, nb, T+1] int64; fin_flag [B, nb] bool; fin_len [B, nb] int64; heuristic_unsat
    [B] bool; token_logprob [N, T+1] / fin_token_logprob [B, nb, T+1] fp32, both or neither.
    """
    ws = workspace
    xp = ws.launcher.xp
    b, nb, t = ws.batch, ws.num_beams, ws.max_new_tokens
    n, k, w = b * nb, 2 * ws.num_beams, ws.max_new_tokens + 1
    _check_buffer(xp, cand_score, "cand_score", np.float32, (b, k))
    _check_buffer(xp, cand_idx, "cand_idx", np.int64, (b, k))
    _check_buffer(xp, denom, "denom", np.float32, (w,))
    for a, name, dtype, shape in (
            (history, "history", np.int64, (n, w)), (tokens, "tokens", np.int64, (n,)),
            (parent, "parent", np.int64, (n,)), (running_score, "running_score", np.float32, (b, nb)),
            (fin_seq, "fin_seq", np.int64, (b, nb, w)), (fin_score, "fin_score", np.float32, (b, nb)),
            (fin_flag, "fin_flag", np.bool_, (b, nb)), (fin_len, "fin_len", np.int64, (b, nb)),
            (heuristic_unsat, "heuristic_unsat", np.bool_, (b,))):
        _check_buffer(xp, a, name, dtype, shape)
    _check_scalar(xp, step_counter, "step_counter", np.int64)
    _check_scalar(xp, done, "done", np.bool_)
    _require((token_logprob is None) == (fin_token_logprob is None) == (not ws.output_scores),
             "token_logprob and fin_token_logprob: both (workspace with output_scores) or neither")
    if ws.output_scores:
        _check_buffer(xp, token_logprob, "token_logprob", np.float32, (n, w))
        _check_buffer(xp, fin_token_logprob, "fin_token_logprob", np.float32, (b, nb, w))
        _check_buffer(xp, cand_lp, "cand_lp", np.float32, (b, k))
    _require(vocab_size >= 1 and k <= nb * vocab_size, f"vocab_size={vocab_size} is too small for {k} candidates")
    ws.launcher.launch("t5rt_dec_beam_update", (1,), (int(Geometry.DEC_THREADS),), (
        cand_score, cand_idx, cand_lp if ws.output_scores else None, denom,
        np.float32(1.0 if best_denom is None else best_denom), np.int32(best_denom is not None),
        np.int32(bool(early_stopping_true)), history, tokens, parent, running_score, fin_seq,
        fin_score, fin_flag, fin_len, heuristic_unsat, token_logprob, fin_token_logprob, ws.hist,
        ws.fin, ws.tlp, ws.fin_tlp, ws.sel_run, ws.sel_fin, step_counter, done, np.int32(b),
        np.int32(nb), np.int32(vocab_size), np.int32(t), np.int64(eos)))


def min_new_tokens(scores: Any, step_counter: Any, min_new: int, eos: int,
                   launcher: Launcher | None = None) -> Any:
    """Hugging Face MinNewTokensLengthLogitsProcessor in place: scores[:, eos] = -inf while
    step_counter < min_new. scores [N, V] fp32 (rows contiguous; stride may exceed V); the step
    counter is read on the device, so the launch stays in a CUDA graph. Returns scores."""
    launcher = _launcher(launcher)
    xp = launcher.xp
    rows, v, stride = _check_logits(xp, scores)
    _require(0 <= eos < v, f"eos={eos} is outside the {v} scores of a row")
    _check_scalar(xp, step_counter, "step_counter", np.int64)
    threads = int(Geometry.DEC_THREADS)
    launcher.launch("t5rt_dec_min_new_tokens", (_grid_1d(rows, threads),), (threads,),
                    (scores, np.int64(stride), np.int32(rows), np.int64(eos), step_counter, np.int64(min_new)))
    return scores


# ----------------------------------------------------------------------------------------------
# In-flight slot pools: every single-row greedy / sampling request of a pool in one launch
# ----------------------------------------------------------------------------------------------


class PoolField(enum.IntEnum):
    """Columns of pool_set's update rows; mirrors `enum T5rtPoolField` (kernels/sampling_pool.cu)."""

    ROW = 0
    MODE = 1
    TOP_K = 2
    SEED = 3
    RNG_ROW = 4
    MAX_NEW = 5
    MIN_NEW = 6
    TEMPERATURE = 7
    TOP_P = 8
    FIELDS = 9


class PoolState:
    """The per-row decoding state of a slot pool's pooled rows (kernels/sampling_pool.cu).

    capacity C rows, history width W (the longest max_new_tokens + 1). input_ids [C] and
    position [C] int64 are the pool's decoder-step inputs (views of its buffers): the step kernel
    writes the next token and the row's step counter straight into them.
    """

    def __init__(self, capacity: int, width: int, input_ids: Any, position: Any,
                 launcher: Launcher | None = None):
        self.launcher = _launcher(launcher)
        xp = self.launcher.xp
        _require(capacity >= 1 and width >= 2, f"capacity={capacity} and width={width} must be >= 1 and >= 2")
        for a, name in ((input_ids, "input_ids"), (position, "position")):
            _check_array(xp, a, name, np.int64)
            _require(a.size == capacity, f"{name} must hold {capacity} rows, got shape {a.shape}")
            _check_contiguous(a, name)
        self.capacity, self.width = capacity, width
        C, W = capacity, width
        self.mode = xp.zeros((C,), dtype=np.int32)             # [C] 0 idle, 1 greedy, 2 sample
        self.top_k = xp.zeros((C,), dtype=np.int32)            # [C]
        self.temperature = xp.ones((C,), dtype=np.float32)     # [C]
        self.top_p = xp.ones((C,), dtype=np.float32)           # [C]
        self.seed = xp.zeros((C,), dtype=np.uint64)            # [C]
        self.rng_row = xp.zeros((C,), dtype=np.int64)          # [C]
        self.max_new = xp.zeros((C,), dtype=np.int64)          # [C]
        self.min_new = xp.zeros((C,), dtype=np.int64)          # [C]
        self.history = xp.zeros((C, W), dtype=np.int64)        # [C, W]
        self.token_logprob = xp.zeros((C, W), dtype=np.float32)  # [C, W]
        self.unfinished = xp.zeros((C,), dtype=np.bool_)       # [C]
        self.seq_logprob = xp.zeros((C,), dtype=np.float32)    # [C]
        self.input_ids = input_ids                             # [C] int64 (pool buffer)
        self.position = position                               # [C] int64 (pool buffer)


def pool_update_row(row: int, *, mode: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                    seed: int = 0, rng_row: int = 0, max_new: int = 0, min_new: int = 0,
                    vocab_size: int | None = None) -> np.ndarray:
    """One row of pool_set's upload [PoolField.FIELDS] int64 (floats as float32 bit patterns).
    top_k is normalized as sample_logprob does (0 unless 0 < top_k < V)."""
    u = np.zeros(int(PoolField.FIELDS), dtype=np.int64)
    k = int(top_k)
    if vocab_size is not None and not 0 < k < vocab_size:
        k = 0
    u[PoolField.ROW], u[PoolField.MODE], u[PoolField.TOP_K] = row, mode, k
    u[PoolField.SEED] = np.uint64(seed).view(np.int64)
    u[PoolField.RNG_ROW], u[PoolField.MAX_NEW], u[PoolField.MIN_NEW] = rng_row, max_new, min_new
    u[PoolField.TEMPERATURE] = int(np.float32(temperature).view(np.int32))
    u[PoolField.TOP_P] = int(np.float32(top_p).view(np.int32))
    return u


def pool_set(state: PoolState, updates: Any, *, pad: int, start: int) -> None:
    """Apply updates [k, PoolField.FIELDS] int64 (device, distinct rows): each row gets its options;
    mode > 0 also starts its sequence over (history = [start, pad...], position 0, input start)."""
    launcher = state.launcher
    xp = launcher.xp
    _check_array(xp, updates, "updates", np.int64, ndim=2)
    _require(updates.shape[1] == int(PoolField.FIELDS), f"updates must be [k, {int(PoolField.FIELDS)}]")
    _check_contiguous(updates, "updates")
    k = int(updates.shape[0])
    if k == 0:
        return
    s = state
    launcher.launch("t5rt_pool_set", (k,), (int(Geometry.DEC_THREADS),), (
        updates, np.int32(k), s.mode, s.top_k, s.temperature, s.top_p, s.seed, s.rng_row, s.max_new,
        s.min_new, s.history, s.token_logprob, np.int32(s.width), s.unfinished, s.seq_logprob,
        s.input_ids, s.position, np.int64(pad), np.int64(start)))


def pool_step(state: PoolState, scores: Any, n: int, *, eos: int) -> None:
    """One decoding step of the pool's rows 0..n-1 from scores [>= n, V] fp32 (rows contiguous,
    stride may exceed V; rows of min-new-tokens requests get scores[r, eos] = -inf in place)."""
    launcher = state.launcher
    xp = launcher.xp
    rows, v, stride = _check_logits(xp, scores)
    _require(1 <= n <= min(rows, state.capacity), f"n={n} must be in [1, {min(rows, state.capacity)}]")
    _require(0 <= eos < v, f"eos={eos} is outside the {v} scores of a row")
    s = state
    launcher.launch("t5rt_pool_step", (n,), (int(Geometry.SAMPLE_THREADS),), (
        scores, np.int64(stride), np.int32(v), s.mode, s.top_k, s.temperature, s.top_p, s.seed,
        s.rng_row, s.max_new, s.min_new, s.history, s.token_logprob, np.int32(s.width),
        s.unfinished, s.seq_logprob, s.input_ids, s.position, np.int64(eos)))
