"""TensorRT backend behind the Engine protocol: one engine per graph, one context per bucket.

    sessions = open_sessions(DIR, device)          # builds or reuses DIR/engines (trt_build)
    eng = sessions["decoder_step"].engine()        # a TrtEngine: one execution context
    eng.bind(name, cupy_array) ...; eng.run()      # enqueue on the runtime's stream, no sync

Only the name-based API is used: `set_input_shape`, `set_tensor_address`, `execute_async_v3`.
Buffers are the runtime's cupy arrays; TensorRT allocates no I/O memory. Context scratch memory
is allocated once per engine (the largest any profile needs) and shared by every context of
that engine (ExecutionContextAllocationStrategy.USER_MANAGED + set_device_memory, or the
older create_execution_context_without_device_memory): contexts of one engine must therefore
never run concurrently, which holds because the runtime enqueues everything on one stream.
Several contexts may select the same optimization profile (TensorRT 10 shares profiles).

In-place cache form (manifest cache_update == "inplace", TensorRT with IKVCacheUpdateLayer):
`present_self_k.{l}` aliases `self_k.{l}`; the runtime binds the *same* array to both and
`aliased_outputs` names the pairs. The engine refuses to run if an aliased pair differs.
The in-place decoder engine is built for a static cache length (max_output_len): bind caches
of exactly that many rows (see trt_build.pinned_cache_len / TrtSession.static_cache_len).

CUDA graphs — what the runtime must do:
  1. bind every buffer of the bucket, then call `run()` once outside capture (the warm
     enqueue): it selects the optimization profile (`set_optimization_profile_async` on the
     runtime stream), sets input shapes and tensor addresses, and lets TensorRT do its
     first-enqueue setup;
  2. capture `run()` (with the decoding kernels) on the same stream; replay the graph;
  3. shapes and addresses are frozen per bucket: never rebind a captured engine (a rebind
     marks it dirty and the next `run()` would reconfigure outside the graph). Use one
     TrtEngine (context) per bucket — `TrtSession.engine()` makes one each call.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BackendError, InvalidOptionError
from ..manifest import GraphSpec, Manifest, load_manifest
from . import trt_build
from . import trt_compat as compat
from .trt_build import BuildOptions, Profile, dims_of, read_engine_file, read_sidecar, select_profile

if TYPE_CHECKING:
    import tensorrt

log = logging.getLogger("t5rt.trt")

# manifest dtype -> itemsize of the runtime's storage (bfloat16 is stored as 2-byte words)
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "bool": 1}


def _ptr(a: Any) -> int:
    if isinstance(a, np.ndarray):
        raise InvalidOptionError("the TensorRT backend needs device (cupy) arrays, not numpy arrays")
    return int(a.data.ptr)


def aliases_for(m: Manifest) -> dict[str, str]:
    """decoder_step output -> input it aliases (in-place form), from the manifest roles."""
    if m.cache_update != "inplace":
        return {}
    r = m.roles["decoder_step"]
    pairs = zip(list(r["present_self_k"]) + list(r["present_self_v"]), list(r["self_k"]) + list(r["self_v"]))
    return dict(pairs)


def check_engine_io(engine: "tensorrt.ICudaEngine", spec: GraphSpec) -> None:
    """The deserialized engine's I/O tensors must be the manifest's (names, direction, dtype)."""
    trt = compat.trt
    got: dict[str, tuple[str, str]] = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
        got[name] = (mode, trt_build.trt_dtype_name(engine.get_tensor_dtype(name)))
    want = {t.name: ("input", t.dtype) for t in spec.inputs}
    want.update({t.name: ("output", t.dtype) for t in spec.outputs})
    if got != want:
        diff = sorted(set(got.items()) ^ set(want.items()))
        raise BackendError(f"engine for {spec.file} does not match the manifest ({diff[:6]}); "
                           f"rebuild with 't5rt build DIR --force'")


class ContextMemory:
    """Device scratch memory for the execution contexts of one engine (cupy allocation)."""

    def __init__(self, nbytes: int):
        import cupy

        self.nbytes = int(nbytes)
        self._mem = cupy.cuda.alloc(max(self.nbytes, 1))  # 256-byte aligned by cupy's allocator
        self.ptr = int(self._mem.ptr)


class TrtSession:
    """One deserialized TensorRT engine (one graph of an export). Makes per-bucket TrtEngines."""

    def __init__(self, engine_path: Path, spec: GraphSpec, device: Any, *, aliases: dict[str, str] | None = None,
                 static_cache_len: int | None = None):
        compat.load()
        trt = compat.trt
        self.info = compat.info()
        self.spec = spec
        self.device = device
        self.path = Path(engine_path)
        self.aliases = dict(aliases or {}) if self.info.has_in_place_kv else {}
        if aliases and not self.info.has_in_place_kv:
            raise BackendError(f"{self.path.name} uses the in-place cache form, which {self.info.module} "
                               f"{self.info.version_str} cannot run; re-export with cache_update='write'")
        self.static_cache_len = static_cache_len
        plan = read_engine_file(self.path, None)
        side = read_sidecar(self.path)
        self.profiles: list[Profile] = side["profiles"]
        self._logger, self._errors = trt_build._make_logger(False)
        self.runtime = trt.Runtime(self._logger)
        engine = self.runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise BackendError(f"TensorRT could not load {self.path} ({' | '.join(self._errors[-3:])}); "
                               f"rebuild it with 't5rt build DIR --force'")
        self.engine_obj = engine
        check_engine_io(engine, spec)
        if engine.num_optimization_profiles != len(self.profiles):
            raise BackendError(f"{self.path.name} has {engine.num_optimization_profiles} profiles, its sidecar "
                               f"{len(self.profiles)}; rebuild with 't5rt build DIR --force'")
        self._memory: ContextMemory | None = None

    @property
    def context_memory_bytes(self) -> int:
        e = self.engine_obj
        if self.info.has_device_memory_v2:
            return int(e.device_memory_size_v2)
        return int(e.device_memory_size)

    def _create_context(self) -> "tensorrt.IExecutionContext":
        trt = compat.trt
        e = self.engine_obj
        if self._memory is None:
            self._memory = ContextMemory(self.context_memory_bytes)
        mem = self._memory
        if self.info.has_user_managed_memory:
            ctx = e.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            if ctx is not None:
                ctx.set_device_memory(mem.ptr, mem.nbytes)
        elif hasattr(e, "create_execution_context_without_device_memory"):
            ctx = e.create_execution_context_without_device_memory()
            if ctx is not None:
                setattr(ctx, "device_memory", mem.ptr)  # pre-10.1 property
        else:
            ctx = e.create_execution_context()
        if ctx is None:
            raise BackendError(f"TensorRT could not create an execution context for {self.path.name} "
                               f"({' | '.join(self._errors[-3:])})")
        return ctx

    def engine(self) -> "TrtEngine":
        return TrtEngine(self, self._create_context())


class TrtEngine:
    """One execution context bound to one bucket's buffers (Engine protocol)."""

    backend = "trt"
    device = "cuda"

    def __init__(self, session: TrtSession, context: "tensorrt.IExecutionContext"):
        self._s = session
        self.spec = session.spec
        self.context = context
        self._inputs = {t.name: t for t in self.spec.inputs}
        self._outputs = {t.name: t for t in self.spec.outputs}
        self._bound: dict[str, Any] = {}
        self._dirty = True
        self.profile_index: int | None = None

    @property
    def aliased_outputs(self) -> dict[str, str]:
        return dict(self._s.aliases)

    @property
    def configured(self) -> bool:
        """True once shapes/addresses are set: the next run() is capturable in a CUDA graph."""
        return not self._dirty

    def bind(self, name: str, array: Any) -> None:
        spec = self._inputs.get(name) or self._outputs.get(name)
        if spec is None:
            raise KeyError(f"{self.spec.file} has no tensor {name!r}")
        if array.dtype.itemsize != ITEMSIZE[spec.dtype]:
            raise InvalidOptionError(f"buffer for {name!r} has dtype {array.dtype}; the engine wants {spec.dtype}")
        if not array.flags.c_contiguous:
            raise InvalidOptionError(f"buffer for {name!r} must be C-contiguous")
        _ptr(array)
        self._bound[name] = array  # keeps the buffer alive while it is bound
        self._dirty = True

    def _configure(self, stream: int) -> None:
        ctx = self.context
        missing = [n for n in list(self._inputs) + list(self._outputs) if n not in self._bound]
        if missing:
            raise BackendError(f"{self.spec.file}: unbound tensors {missing}")
        shapes = {n: tuple(int(x) for x in self._bound[n].shape) for n in self._inputs}
        values = dims_of(self.spec, shapes)
        T = self._s.static_cache_len
        if T is not None and values.get("cache_len", T) != T:
            raise InvalidOptionError(f"this in-place decoder engine has a static cache of {T} rows; bind caches "
                                     f"[rows, H, {T}, Dk], not cache_len={values['cache_len']}")
        idx = select_profile(self._s.profiles, values)
        if idx != self.profile_index:
            if not ctx.set_optimization_profile_async(idx, stream):
                raise BackendError(f"{self.spec.file}: TensorRT refused optimization profile {idx}")
            self.profile_index = idx
        for name, shape in shapes.items():
            if not ctx.set_input_shape(name, shape):
                raise BackendError(f"{self.spec.file}: TensorRT refused shape {shape} for {name!r} "
                                   f"(profile {self._s.profiles[idx].to_json()})")
        for out, inp in self._s.aliases.items():
            if _ptr(self._bound[out]) != _ptr(self._bound[inp]):
                raise InvalidOptionError(f"in-place cache: bind the same buffer to {out!r} and {inp!r}")
        for name, arr in self._bound.items():
            if not ctx.set_tensor_address(name, _ptr(arr)):
                raise BackendError(f"{self.spec.file}: TensorRT refused the address of {name!r}")
        for name in self._outputs:
            dims = ctx.get_tensor_shape(name)
            want = tuple(int(dims[i]) for i in range(len(dims)))
            got = tuple(int(x) for x in self._bound[name].shape)
            if want != got:
                raise InvalidOptionError(f"output buffer {name!r} has shape {got}; the engine writes {want}")
        self._dirty = False

    def run(self) -> None:
        stream = int(self._s.device.stream_ptr)
        if self._dirty:
            self._configure(stream)
        if not self.context.execute_async_v3(stream):
            raise BackendError(f"TensorRT failed to enqueue {self.spec.file} "
                               f"({' | '.join(self._s._errors[-3:]) or 'no error was logged'})")


def open_sessions(export_dir: str | Path, device: Any, options: BuildOptions | None = None, *,
                  build_missing: bool = True) -> dict[str, TrtSession]:
    """graph name -> TrtSession for an export; builds (or reuses) engines through trt_build."""
    m = load_manifest(export_dir)
    options = options or BuildOptions(progress=False)
    if build_missing:
        paths = trt_build.build_engines(export_dir, options)
    else:
        paths = {}
        info, gpu = compat.info(), compat.gpu_identity()
        for g in options.graphs:
            profiles = trt_build.compute_profiles(m, g, options)
            key, _ = trt_build.engine_key(m, g, profiles, trt_module=info.module, trt_version=info.version_str,
                                          gpu_name=gpu.name, compute_capability=gpu.compute_capability,
                                          options=options)
            path, _ = trt_build.engine_paths(Path(export_dir), g, key)
            read_engine_file(path, key)  # EngineFileError (a BackendError) says what is wrong
            paths[g] = path
    aliases = aliases_for(m)
    T = trt_build.pinned_cache_len(m, options)
    out = {}
    for g, path in paths.items():
        out[g] = TrtSession(path, m.graphs[g], device,
                            aliases=aliases if g == "decoder_step" else None,
                            static_cache_len=T if g == "decoder_step" else None)
    return out


def find_engine(m: Manifest, graph: str) -> Path | None:
    """A valid engine already in DIR/engines for this graph, TensorRT and GPU, whatever its profiles
    (so engines made by `t5rt build` with custom buckets are used as they are); None if none."""
    if m.directory is None:
        return None
    info, gpu = compat.info(), compat.gpu_identity()
    for path in sorted((m.directory / trt_build.ENGINE_DIR).glob(f"{graph}-*.engine")):
        try:
            side = json.loads(path.with_suffix(".json").read_text())
            same = (side.get("graph_sha256") == m.graphs[graph].sha256 and side.get("trt_module") == info.module
                    and side.get("trt_version") == info.version_str and side.get("gpu_name") == gpu.name
                    and tuple(side.get("compute_capability", ())) == gpu.compute_capability
                    and side.get("build_format") == trt_build.BUILD_FORMAT)
            if same:
                read_engine_file(path, side.get("key"))
                return path
        except (OSError, ValueError, KeyError, BackendError) as e:
            log.warning("%s: ignoring %s (%s)", graph, path.name, e)
    return None


def open_trt_sessions(m: Manifest, device: Any, options: Any = None) -> dict[str, TrtSession]:
    """The runtime's entry (engines/__init__.open_sessions): existing valid engines, else built now.

    `options` is the runtime's RuntimeOptions; a BuildOptions in its `trt_build` attribute (if any)
    sets how missing engines are built, else BuildOptions() defaults (max batch 8, 4 beams).
    """
    compat.load()
    build_opts = getattr(options, "trt_build", None) or BuildOptions(progress=False)
    if m.directory is None:
        raise BackendError("the manifest was not loaded from a directory; TensorRT engines live in DIR/engines")
    paths = {g: find_engine(m, g) for g in build_opts.graphs}
    missing = tuple(g for g, p in paths.items() if p is None)
    if missing:
        log.info("building TensorRT engines for %s (t5rt build DIR does this ahead of time)", ", ".join(missing))
        import dataclasses

        paths.update(trt_build.build_engines(m.directory, dataclasses.replace(build_opts, graphs=missing)))
    aliases = aliases_for(m)
    out = {}
    for g, path in paths.items():
        assert path is not None
        side = json.loads(path.with_suffix(".json").read_text())
        out[g] = TrtSession(path, m.graphs[g], device,
                            aliases=aliases if g == "decoder_step" else None,
                            static_cache_len=side.get("cache_len") if g == "decoder_step" else None)
    return out
