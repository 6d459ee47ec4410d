"""Every kernel of kernels/*.cu compiled as host C++ and launched on numpy arrays (CPU tests).

    host = HostKernels(cache_dir)                  # builds (or reuses) one shared library
    t5rt.kernels.argmax_rows(x, launcher=host)     # the typed wrapper, its real arguments

The library is kernels/host_prelude.h (threads, shared memory, barriers, warp shuffles and
atomics emulated as that file describes) + the exact unit NVRTC compiles (`nvrtc_source()`) +
one exported trampoline per `extern "C"` kernel. The kernels are listed by preprocessing the
unit, so a new kernels/*.cu (macro-generated kernels included) is picked up without a list.

A launch checks every argument against the kernel's C++ parameter types (order, count, scalar
width, pointer vs value), so the host path also tests what the wrappers pass. Needs a C++20
compiler ($CXX, else c++ / g++ / clang++); `compiler()` is None without one.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from t5rt.errors import BackendError, InvalidInputError

PRELUDE = "host_prelude.h"
CACHE_ENV = "T5RT_HOST_KERNELS_CACHE"
# No FMA contraction (nvcc contracts, but the references compute unfused too; tolerances cover
# the GPU), no fast-math: IEEE float like the GPU's default division and sqrt. No _FORTIFY_SOURCE:
# its longjmp check refuses the fiber switches between stacks (host_prelude.h).
CXXFLAGS = ("-std=c++20", "-O1", "-pthread", "-fPIC", "-shared", "-ffp-contract=off", "-U_FORTIFY_SOURCE", "-w")

_KERNEL = re.compile(r'extern\s+"C"\s+t5rt_host_kernel\s+void\s+(\w+)\s*\(')
# `extern __shared__ T name[];` (dynamic shared memory) -> a pointer to the launch's buffer
_DYNAMIC_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?(\w+)\s+(\w+)\s*\[\s*\]\s*;")

# C++ parameter code (host_prelude.h: param_code) -> the numpy scalar type the wrapper must pass
_SCALARS = {"i": (np.int32, ctypes.c_int32), "I": (np.uint32, ctypes.c_uint32),
            "l": (np.int64, ctypes.c_int64), "L": (np.uint64, ctypes.c_uint64),
            "f": (np.float32, ctypes.c_float), "d": (np.float64, ctypes.c_double),
            "b": (np.bool_, ctypes.c_bool)}


def compiler() -> str | None:
    """The C++ compiler the host build uses: $CXX, else c++, g++ or clang++ on PATH."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and (path := shutil.which(name)):
            return path
    return None


def _kernels_dir() -> Path:
    from t5rt import kernels

    return kernels.KERNELS_DIR


def unit_source(source: str | None = None) -> str:
    """The translation unit the host build compiles (before the exports): the prelude, then
    `source` (default: the NVRTC unit of every kernels/*.cu)."""
    from t5rt import kernels

    text = kernels.nvrtc_source() if source is None else source
    return f'#include "{PRELUDE}"\n' + _DYNAMIC_SHARED.sub(r"\1* \2 = t5rt_host::dynamic_shared<\1>();", text)


def _run(cmd: list[str], what: str) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BackendError(f"host build of kernels/*.cu failed ({what}):\n{r.stderr[-6000:]}")
    return r


def kernel_names(cxx: str | None = None, source: str | None = None) -> list[str]:
    """Every `extern "C"` kernel of kernels/*.cu (or `source`), found by preprocessing (sorted)."""
    cxx = cxx or compiler()
    if cxx is None:
        raise BackendError("listing the kernels needs a C++ compiler (set $CXX or install g++)")
    with tempfile.TemporaryDirectory() as d:
        unit = Path(d) / "scan.cpp"
        unit.write_text(unit_source(source))
        out = _run([cxx, "-E", "-P", "-x", "c++", "-std=c++20", "-DT5RT_HOST_SCAN",
                    "-I", str(_kernels_dir()), str(unit)], "preprocessing").stdout
    return sorted(set(_KERNEL.findall(out)))


class HostKernels:
    """A launcher (t5rt.kernels.Launcher) running kernels/*.cu on the CPU over numpy arrays.

    cache_dir: where the library is built, keyed by a hash of its sources and flags (default
    $T5RT_HOST_KERNELS_CACHE, else ~/.cache/t5rt/host_kernels: a private folder, since an
    existing build there is loaded as it is).
    os_threads: False (default) runs a block's threads as fibers taking turns at every barrier
    on the calling thread (fast, deterministic, detects a barrier not every thread reaches);
    True as that many OS threads running at once (slow with 1024-thread blocks on few cores,
    but atomics and shared memory then see real concurrency).
    source: CUDA text to build instead of kernels/*.cu (tests of the emulation itself).
    """

    xp = np

    def __init__(self, cache_dir: str | os.PathLike | None = None, os_threads: bool = False,
                 source: str | None = None):
        self.os_threads = bool(os_threads)
        cxx = compiler()
        if cxx is None:
            raise BackendError("HostKernels needs a C++ compiler (set $CXX or install g++)")
        self.names: tuple[str, ...] = tuple(kernel_names(cxx, source))
        code = unit_source(source) + "\n// ---- host trampolines (host.py) ----\n" + "".join(
            f"T5RT_HOST_EXPORT({n})\n" for n in self.names)
        prelude = (_kernels_dir() / PRELUDE).read_text()
        key = hashlib.sha256("\0".join([prelude, code, cxx, *CXXFLAGS]).encode()).hexdigest()[:16]
        root = Path(cache_dir or os.environ.get(CACHE_ENV) or _default_cache())
        d = root / key
        d.mkdir(parents=True, exist_ok=True)
        self.library = d / "t5rt_kernels_host.so"
        if not self.library.exists():
            src = d / "t5rt_kernels_host.cpp"
            src.write_text(code)
            tmp = d / f"t5rt_kernels_host.{os.getpid()}.{threading.get_ident()}.so"
            _run([cxx, *CXXFLAGS, "-I", str(_kernels_dir()), "-o", str(tmp), str(src)], "compiling")
            os.replace(tmp, self.library)
        self._lib = ctypes.CDLL(str(self.library))
        self._kernels: dict[str, tuple[Any, str]] = {}
        self.launched: set[str] = set()  # kernel names launched so far (tests check coverage)

    def signature(self, name: str) -> str:
        """One code per C++ parameter of kernel `name` (p pointer, i int, l int64, f float...)."""
        return self._kernel(name)[1]

    def _kernel(self, name: str) -> tuple[Any, str]:
        k = self._kernels.get(name)
        if k is None:
            if name not in self.names:
                raise InvalidInputError(f"no kernel {name!r} in kernels/*.cu (host build has {len(self.names)})")
            fn = getattr(self._lib, f"t5rt_host_launch_{name}")
            fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_void_p], ctypes.c_int
            sig = getattr(self._lib, f"t5rt_host_signature_{name}")
            sig.restype = ctypes.c_char_p
            k = self._kernels[name] = (fn, sig().decode())
        return k

    def launch(self, name: str, grid: Sequence[int], block: Sequence[int], args: Sequence[Any],
               shared_mem: int = 0, pdl: bool = False) -> None:
        """Run kernel `name` over grid x block (1 to 3 dims each) with the wrapper's arguments and
        `shared_mem` bytes of dynamic shared memory per block (`pdl`: nothing to overlap here; the
        kernel's t5rt_pdl_wait() is a no-op on the host build)."""
        fn, sig = self._kernel(name)
        if "?" in sig:
            raise InvalidInputError(f"{name} takes a struct by value; the host build cannot pass it")
        if len(args) != len(sig):
            raise InvalidInputError(f"{name} takes {len(sig)} arguments, got {len(args)}")
        values = [_ctype(name, i, code, a) for i, (code, a) in enumerate(zip(sig, args))]
        argv = (ctypes.c_void_p * max(1, len(values)))(*[ctypes.addressof(v) for v in values])
        if not 0 <= int(shared_mem) < 1 << 31:
            raise InvalidInputError(f"{name}: shared_mem={shared_mem} bytes is out of range")
        dims = (ctypes.c_uint * 8)(*_dim3(grid, "grid"), *_dim3(block, "block"), int(self.os_threads), int(shared_mem))
        rc = fn(dims, argv)
        if rc == 1:
            raise InvalidInputError(f"{name}: grid {tuple(grid)} / block {tuple(block)} is empty or over 1024 threads")
        if rc == 3:
            raise BackendError(f"{name}: deadlock: a __syncthreads / warp barrier that not every thread "
                               f"of the block reaches (grid {tuple(grid)}, block {tuple(block)})")
        if rc != 0:
            raise BackendError(f"{name}: the host could not start {int(np.prod(block))} threads")
        self.launched.add(name)


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "t5rt" / "host_kernels"


def _dim3(d: Sequence[int], what: str) -> list[int]:
    d = [int(x) for x in d]
    if not 1 <= len(d) <= 3 or min(d) < 1:
        raise InvalidInputError(f"{what} dims {tuple(d)} must be 1 to 3 positive ints")
    return d + [1] * (3 - len(d))


def _ctype(kernel: str, i: int, code: str, a: Any) -> Any:
    """The ctypes value of argument i, refused unless it is exactly the parameter's type."""
    if code == "p":
        if a is None:
            return ctypes.c_void_p(None)
        if isinstance(a, np.ndarray):
            return ctypes.c_void_p(a.ctypes.data)
        raise InvalidInputError(f"{kernel} argument {i} is a pointer; got {type(a).__name__} (pass a numpy array or None)")
    want, ctype = _SCALARS[code]
    if type(a) is not want:
        raise InvalidInputError(f"{kernel} argument {i} must be np.{want.__name__}, got {type(a).__name__}")
    return ctype(np.asarray(a).item())
