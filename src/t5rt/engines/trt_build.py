"""TensorRT engines from an export: optimization profiles, builds, the on-disk engine cache.

    build_engines(DIR, BuildOptions()) -> {"encoder": Path, "cross_kv": Path, "decoder_step": Path}
    add_cli_arguments(parser) / run_cli(args)   the `t5rt build DIR ...` command

Pipeline per graph (encoder, cross_kv, decoder_step):
    profiles (from manifest + buckets) -> cache key -> cached file valid? reuse : parse ONNX ->
    check network I/O against the manifest -> strongly typed build (progress bar, timing cache)
    -> write the engine file (header with checksum) atomically.

Strongly typed: the ONNX graph carries every precision (casts, typed initializers); no builder
precision flag is ever set (TensorRT 11 removed them; 10.x honours STRONGLY_TYPED the same way).

Engine files: DIR/engines/<graph>-<key16>.engine, each a fixed header followed by the plan:

    magic b"T5RTPLAN" | u32 header version | u64 plan bytes | 32B sha256(plan) | 32B cache key

A truncated, corrupt or foreign file (wrong magic, size, checksum or key) is reported and
rebuilt, never handed to TensorRT. A JSON sidecar (<graph>-<key16>.json) holds the key's
inputs and the profiles in readable form; the runtime reads the profiles from it.

Profiles: one per (batch range x source-length range). Batch ranges come from buckets
1,2,4,..,max_batch (the decoder's rows go to max_batch*max_beams); a range covers
(previous bucket, bucket] with opt = bucket. Source length is one range [1, max_input_len]
unless --src-buckets splits it. cache_len spans [1, max_output_len] (opt = max_output_len);
the in-place form pins it to max_output_len (IKVCacheUpdateLayer wants a static cache length).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ..errors import BackendError, InvalidOptionError, NotAnExportError
from ..manifest import GRAPH_NAMES, PRECISIONS, GraphSpec, Manifest, load_manifest
from . import trt_compat as compat

if TYPE_CHECKING:
    import tensorrt

log = logging.getLogger("t5rt.trt")

BUILD_FORMAT = 1                     # bump when anything in how engines are built changes
ENGINE_DIR = "engines"
MAGIC = b"T5RTPLAN"
HEADER = struct.Struct("<8sIQ32s32s")  # magic, version, plan size, sha256(plan), key digest
HEADER_VERSION = 1
SYMBOLIC_DIMS = ("batch", "src_len", "cache_len")

DimRange = tuple[int, int, int]      # (min, opt, max)


class EngineFileError(BackendError):
    """An engine file on disk is truncated, corrupt, foreign or built for other inputs."""


# -- options ----------------------------------------------------------------------------------
@dataclass
class BuildOptions:
    """How `t5rt build` builds engines (defaults match the runtime's bucket policy)."""

    precision: str | None = None          # must equal the export's (strongly typed graphs)
    max_batch: int = 8                    # encoder / cross_kv batch; decoder rows = max_batch*max_beams
    max_beams: int = 4
    batch_buckets: tuple[int, ...] | None = None   # None: 1,2,4,..,max_batch
    src_buckets: tuple[int, ...] | None = None     # None: one range [1, max_input_len]
    workspace_mb: int | None = None       # builder workspace pool limit (None: TensorRT default)
    optimization_level: int | None = None  # builder_optimization_level 0..5 (None: default 3)
    timing_cache: Path | None = None      # None: DIR/engines/timing-<trt>-<sm>.cache
    graphs: tuple[str, ...] = GRAPH_NAMES
    static_inplace_cache: bool = True     # pin cache_len = max_output_len for the in-place form
    allow_tf32: bool = False              # fp32 exports are the parity reference: no TF32 matmuls
    force: bool = False                   # rebuild even when a valid cached engine exists
    progress: bool = True                 # progress bar on stderr (IProgressMonitor)
    verbose: bool = False

    def validate(self) -> None:
        for name in ("max_batch", "max_beams"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InvalidOptionError(f"{name}={v!r} is invalid: must be an integer >= 1")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise InvalidOptionError(f"precision={self.precision!r} is invalid: use one of {PRECISIONS}")
        for name in ("batch_buckets", "src_buckets"):
            b = getattr(self, name)
            if b is not None and (not b or any((not isinstance(x, int)) or x < 1 for x in b)):
                raise InvalidOptionError(f"{name}={b!r} is invalid: give positive integers, e.g. 1,2,4,8")
        if self.workspace_mb is not None and self.workspace_mb < 1:
            raise InvalidOptionError(f"workspace_mb={self.workspace_mb} is invalid: must be >= 1")
        if self.optimization_level is not None and not 0 <= self.optimization_level <= 5:
            raise InvalidOptionError(f"optimization_level={self.optimization_level} is invalid: use 0..5")
        bad = [g for g in self.graphs if g not in GRAPH_NAMES]
        if bad:
            raise InvalidOptionError(f"unknown graphs {bad}: choose from {GRAPH_NAMES}")


# -- profiles ---------------------------------------------------------------------------------
def pow2_buckets(limit: int, start: int = 1) -> tuple[int, ...]:
    """start, 2*start, ... below limit, then limit itself: 1,2,4,8 for 8; 1,2,4,6 for 6."""
    out = []
    b = start
    while b < limit:
        out.append(b)
        b *= 2
    out.append(limit)
    return tuple(out)


def ranges_from_buckets(buckets: tuple[int, ...] | list[int], limit: int) -> list[DimRange]:
    """Sorted buckets (capped at limit) -> contiguous ranges (prev+1, bucket, bucket)."""
    bs = sorted({min(int(b), limit) for b in buckets})
    if bs[-1] < limit:
        bs.append(limit)
    out: list[DimRange] = []
    lo = 1
    for b in bs:
        out.append((lo, b, b))
        lo = b + 1
    return out


@dataclass(frozen=True)
class Profile:
    """One optimization profile: a (min, opt, max) range per symbolic dim."""

    dims: tuple[tuple[str, DimRange], ...]

    def as_dict(self) -> dict[str, DimRange]:
        return dict(self.dims)

    def covers(self, values: dict[str, int]) -> bool:
        d = self.as_dict()
        return all(d[k][0] <= v <= d[k][2] for k, v in values.items() if k in d)

    def shapes(self, spec: GraphSpec) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """input name -> (min shape, opt shape, max shape) for every input of `spec`."""
        d = self.as_dict()
        out = {}
        for t in spec.inputs:
            mins, opts, maxs = [], [], []
            for dim in t.shape:
                if isinstance(dim, str):
                    if dim not in d:
                        raise NotAnExportError(f"{spec.file}: input {t.name!r} has symbolic dim {dim!r}; "
                                               f"t5rt knows {SYMBOLIC_DIMS}; re-export")
                    lo, opt, hi = d[dim]
                else:
                    lo = opt = hi = int(dim)
                mins.append(lo)
                opts.append(opt)
                maxs.append(hi)
            out[t.name] = (tuple(mins), tuple(opts), tuple(maxs))
        return out

    def to_json(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in self.dims}

    @classmethod
    def from_json(cls, d: dict[str, list[int]]) -> "Profile":
        return cls(tuple((k, (int(v[0]), int(v[1]), int(v[2]))) for k, v in sorted(d.items())))


def _graph_dims(spec: GraphSpec) -> set[str]:
    return {d for t in spec.inputs for d in t.shape if isinstance(d, str)}


def pinned_cache_len(m: Manifest, options: BuildOptions) -> int | None:
    """Static cache length the decoder engine is built for (in-place form), else None."""
    if m.cache_update == "inplace" and options.static_inplace_cache:
        return m.max_output_len
    return None


def compute_profiles(m: Manifest, graph: str, options: BuildOptions) -> list[Profile]:
    """The optimization profiles for one graph of export `m` under `options`."""
    options.validate()
    spec = m.graphs[graph]
    used = _graph_dims(spec)
    unknown = used - set(SYMBOLIC_DIMS)
    if unknown:
        raise NotAnExportError(f"{spec.file} uses symbolic dims {sorted(unknown)}; t5rt knows "
                               f"{SYMBOLIC_DIMS}; re-export with this t5rt")
    max_rows = options.max_batch * (options.max_beams if graph == "decoder_step" else 1)
    buckets = options.batch_buckets or pow2_buckets(options.max_batch)
    if graph == "decoder_step" and options.max_beams > 1:
        # rows = batch * beams: every product must fall inside some range; ranges are contiguous
        buckets = tuple(sorted(set(buckets) | set(pow2_buckets(max_rows))))
    batch_ranges = ranges_from_buckets(buckets, max_rows)
    if options.src_buckets:
        src_ranges = ranges_from_buckets(options.src_buckets, m.max_input_len)
    else:
        src_ranges = [(1, min(m.max_input_len, 128), m.max_input_len)]
    T = pinned_cache_len(m, options)
    cache_range: DimRange = (T, T, T) if T else (1, m.max_output_len, m.max_output_len)
    profiles = []
    for br in batch_ranges:
        for sr in src_ranges:
            dims = {"batch": br, "src_len": sr, "cache_len": cache_range}
            profiles.append(Profile(tuple((k, dims[k]) for k in SYMBOLIC_DIMS if k in used)))
    # Drop duplicates (a graph without src_len gets one profile per batch range).
    seen: dict[Profile, None] = {}
    for p in profiles:
        seen.setdefault(p, None)
    return list(seen)


def select_profile(profiles: list[Profile], values: dict[str, int]) -> int:
    """Index of the tightest profile covering `values` (symbolic dim -> size); raises if none."""
    best, best_size = -1, None
    for i, p in enumerate(profiles):
        if p.covers(values):
            size = tuple(hi for _, (_, _, hi) in p.dims)
            if best_size is None or size < best_size:
                best, best_size = i, size
    if best < 0:
        ranges = [p.to_json() for p in profiles]
        raise InvalidOptionError(f"shape {values} is outside every optimization profile of the engine "
                                 f"{ranges}; rebuild with larger --max-batch / --max-beams")
    return best


def dims_of(spec: GraphSpec, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Symbolic dim values from concrete input shapes; raises if two inputs disagree."""
    values: dict[str, int] = {}
    for t in spec.inputs:
        if t.name not in shapes:
            continue
        shape = tuple(shapes[t.name])
        if len(shape) != len(t.shape):
            raise InvalidOptionError(f"{t.name!r} has shape {shape}; the manifest says {list(t.shape)}")
        for sym, n in zip(t.shape, shape):
            if isinstance(sym, str):
                if values.setdefault(sym, int(n)) != int(n):
                    raise InvalidOptionError(f"dim {sym!r} is {values[sym]} in one input and {n} in "
                                             f"{t.name!r}: bind buffers of one bucket")
            elif int(sym) != int(n):
                raise InvalidOptionError(f"{t.name!r} has shape {shape}; the manifest says {list(t.shape)}")
    return values


# -- cache key and engine files ---------------------------------------------------------------
def engine_key(m: Manifest, graph: str, profiles: list[Profile], *, trt_module: str, trt_version: str,
               gpu_name: str, compute_capability: tuple[int, int], options: BuildOptions) -> tuple[str, dict[str, Any]]:
    """sha256 over everything that makes an engine valid; returns (hex digest, the fields)."""
    fields: dict[str, Any] = {
        "build_format": BUILD_FORMAT,
        "graph": graph,
        "graph_sha256": m.graphs[graph].sha256,
        "precision": m.precision,
        "cache_update": m.cache_update,
        "trt_module": trt_module,
        "trt_version": trt_version,
        "gpu_name": gpu_name,
        "compute_capability": list(compute_capability),
        "profiles": [p.to_json() for p in profiles],
        "workspace_mb": options.workspace_mb,
        "optimization_level": options.optimization_level,
        "allow_tf32": options.allow_tf32,
        "static_inplace_cache": options.static_inplace_cache,
    }
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest(), fields


def engine_paths(export_dir: Path, graph: str, key: str) -> tuple[Path, Path]:
    base = Path(export_dir) / ENGINE_DIR / f"{graph}-{key[:16]}"
    return base.with_suffix(".engine"), base.with_suffix(".json")


def pack_engine(plan: bytes, key: str) -> bytes:
    """Header + plan, as written to disk."""
    header = HEADER.pack(MAGIC, HEADER_VERSION, len(plan), hashlib.sha256(plan).digest(), bytes.fromhex(key))
    return header + plan


def unpack_engine(data: bytes, key: str | None, *, source: str = "engine file") -> bytes:
    """The plan inside `data`; EngineFileError says why the bytes are not a valid engine file."""
    if len(data) < HEADER.size:
        raise EngineFileError(f"{source} is truncated ({len(data)} bytes, header needs {HEADER.size})")
    magic, version, size, digest, kdigest = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise EngineFileError(f"{source} is not a t5rt engine file (magic {magic!r})")
    if version != HEADER_VERSION:
        raise EngineFileError(f"{source} has header version {version}; this t5rt writes {HEADER_VERSION}")
    plan = data[HEADER.size:]
    if len(plan) != size:
        raise EngineFileError(f"{source} is truncated or padded: plan has {len(plan)} bytes, header says {size}")
    if hashlib.sha256(plan).digest() != digest:
        raise EngineFileError(f"{source} is corrupt: plan checksum does not match")
    if key is not None and kdigest != bytes.fromhex(key):
        raise EngineFileError(f"{source} was built for other inputs (cache key differs)")
    return plan


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_engine_file(path: Path, plan: bytes, key: str, meta: dict[str, Any]) -> None:
    """Engine file + JSON sidecar, each written to a temp file and renamed into place."""
    _atomic_write(path, pack_engine(plan, key))
    side = dict(meta, key=key, plan_bytes=len(plan), plan_sha256=hashlib.sha256(plan).hexdigest())
    _atomic_write(path.with_suffix(".json"), (json.dumps(side, indent=2) + "\n").encode())


def read_engine_file(path: Path, key: str | None) -> bytes:
    """The plan stored at `path` (EngineFileError if missing, truncated, corrupt or foreign)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise EngineFileError(f"{path} does not exist") from None
    except OSError as e:
        raise EngineFileError(f"{path} cannot be read ({e})") from None
    return unpack_engine(data, key, source=str(path))


def read_sidecar(path: Path) -> dict[str, Any]:
    """The JSON sidecar of an engine file (profiles as Profile objects under 'profiles')."""
    side = json.loads(Path(path).with_suffix(".json").read_text())
    side["profiles"] = [Profile.from_json(p) for p in side["profiles"]]
    return side


# -- TensorRT pieces: logger, progress bar, network checks --------------------------------------
TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64",
              "INT32": "int32", "BOOL": "bool"}


def trt_dtype_name(dtype: Any) -> str:
    """tensorrt.DataType -> manifest dtype name ('float32', ...); unknown types keep their name."""
    name = getattr(dtype, "name", str(dtype).split(".")[-1])
    return TRT_DTYPES.get(name, name.lower())


def _make_logger(verbose: bool) -> tuple["tensorrt.ILogger", list[str]]:
    """A TensorRT logger and the list it appends error messages to."""
    trt = compat.trt
    errors: list[str] = []

    class CollectingLogger(compat.trt.ILogger):
        """Keeps errors and warnings for the error message; forwards to logging."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: "tensorrt.ILogger.Severity", msg: str) -> None:
            sev = int(severity)
            if sev <= int(trt.ILogger.Severity.ERROR):
                errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif sev == int(trt.ILogger.Severity.WARNING):
                log.warning("TensorRT: %s", msg)
            elif verbose:
                log.info("TensorRT: %s", msg)

    return CollectingLogger(), errors


def _make_progress_monitor(label: str, stream: TextIO) -> "tensorrt.IProgressMonitor":
    trt = compat.trt
    tty = bool(getattr(stream, "isatty", lambda: False)())

    class ProgressBar(compat.trt.IProgressMonitor):
        """Top-level phases as a bar: '[encoder] Building engine  [#####.....] 5/10'."""

        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, tuple[int, str | None]] = {}
            self.t0 = time.perf_counter()

        def phase_start(self, phase_name: str, parent_phase: str, num_steps: int) -> None:
            self.steps[phase_name] = (num_steps, parent_phase or None)
            if not parent_phase:
                self._draw(phase_name, 0, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            n, parent = self.steps.get(phase_name, (0, None))
            if parent is None and tty:
                self._draw(phase_name, step + 1, n)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            n, parent = self.steps.pop(phase_name, (0, None))
            if parent is None:
                self._draw(phase_name, n, n, done=True)

        def _draw(self, phase: str, k: int, n: int, done: bool = False) -> None:
            width = 24
            fill = int(width * k / n) if n else width
            bar = "#" * fill + "." * (width - fill)
            line = f"[{label}] {phase[:40]:<40} [{bar}] {k}/{n} {time.perf_counter() - self.t0:6.1f}s"
            if tty:
                stream.write("\r" + line + ("\n" if done else ""))
            elif done or k == 0:
                stream.write(line + "\n")
            stream.flush()

    return ProgressBar()


def check_network_io(network: "tensorrt.INetworkDefinition", spec: GraphSpec) -> None:
    """The parsed network's inputs/outputs must be the manifest's: names, dtypes, ranks."""
    problems = []
    for kind, tensors, count, get in (
        ("input", spec.inputs, network.num_inputs, network.get_input),
        ("output", spec.outputs, network.num_outputs, network.get_output),
    ):
        got = {get(i).name: get(i) for i in range(count)}
        want = {t.name: t for t in tensors}
        for name in sorted(set(want) - set(got)):
            problems.append(f"manifest {kind} {name!r} is not in the graph")
        for name in sorted(set(got) - set(want)):
            problems.append(f"graph {kind} {name!r} is not in the manifest")
        for name in sorted(set(got) & set(want)):
            dt = trt_dtype_name(got[name].dtype)
            if dt != want[name].dtype:
                problems.append(f"{kind} {name!r} is {dt} in the graph, {want[name].dtype} in the manifest")
            if len(got[name].shape) != len(want[name].shape):
                problems.append(f"{kind} {name!r} has rank {len(got[name].shape)} in the graph, "
                                f"{len(want[name].shape)} in the manifest")
    if problems:
        raise NotAnExportError(f"{spec.file} does not match manifest.json: " + "; ".join(problems)
                               + "; re-export the model")


def _pin_cache_inputs(network: "tensorrt.INetworkDefinition", m: Manifest, T: int) -> None:
    """In-place form: make the self-cache inputs' cache_len dim the static T."""
    r = m.roles["decoder_step"]
    names = set(r["self_k"]) | set(r["self_v"])
    spec = m.graphs["decoder_step"]
    for i in range(network.num_inputs):
        t = network.get_input(i)
        if t.name in names:
            sym = spec.input(t.name).shape
            t.shape = compat.trt.Dims([T if d == "cache_len" else (-1 if isinstance(d, str) else int(d)) for d in sym])


# -- building -----------------------------------------------------------------------------------
@dataclass
class BuildResult:
    graph: str
    path: Path
    cached: bool
    seconds: float
    engine_bytes: int
    key: str
    profiles: list[Profile] = field(default_factory=list)


def default_timing_cache(export_dir: Path, gpu: compat.GpuIdentity) -> Path:
    i = compat.info()
    return Path(export_dir) / ENGINE_DIR / f"timing-{i.module}-{i.version_str}-{gpu.sm}.cache"


class TimingCache:
    """Load a serialized timing cache into a builder config; save it back after builds."""

    def __init__(self, path: Path | None):
        self.path = path
        self.cache: Any = None

    def attach(self, config: "tensorrt.IBuilderConfig") -> None:
        if self.path is None or not compat.info().has_timing_cache:
            return
        if self.cache is None:
            data = b""
            if self.path.is_file():
                data = self.path.read_bytes()
            try:
                self.cache = config.create_timing_cache(data)
            except Exception as e:  # noqa: BLE001 - a damaged cache file is only a lost speed-up
                log.warning("timing cache %s is unusable (%s); starting an empty one", self.path, e)
                self.cache = config.create_timing_cache(b"")
        if not config.set_timing_cache(self.cache, False):
            log.warning("timing cache %s does not match this TensorRT/GPU; starting an empty one", self.path)
            self.cache = config.create_timing_cache(b"")
            config.set_timing_cache(self.cache, False)

    def save(self) -> None:
        if self.path is None or self.cache is None:
            return
        _atomic_write(self.path, bytes(self.cache.serialize()))


def _static_cache_model(path: Path, cache_len: int) -> bytes | None:
    """The graph with its symbolic "cache_len" dims set to `cache_len`, as bytes (None: onnx missing).

    TensorRT's parser maps TensorScatter to its KV-cache update layer only for caches whose sequence
    dim is static in the ONNX graph itself ("The KV cache tensor must have a static sequence length
    dimension", TensorRT-RTX 1.7 on the H100); pinning it in the optimization profile is too late.
    Weights in external data stay where they are (the parser resolves them from `path`).
    """
    try:
        import onnx
    except ImportError:
        return None
    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param == "cache_len":
                d.dim_value = cache_len
    return model.SerializeToString()


def build_plan(m: Manifest, graph: str, profiles: list[Profile], options: BuildOptions,
               timing: TimingCache | None = None, *, stream: TextIO | None = None) -> bytes:
    """Parse graph `graph` of export `m` and build a serialized engine (the plan bytes)."""
    compat.load()
    trt = compat.trt
    info = compat.info()
    spec = m.graphs[graph]
    path = m.graph_path(graph)
    if graph == "decoder_step" and m.cache_update == "inplace" and not info.has_in_place_kv:
        raise BackendError(
            f"this export uses the in-place cache form (ONNX TensorScatter -> IKVCacheUpdateLayer), which "
            f"{info.module} {info.version_str} lacks (TensorRT >= 10.15 has it); re-export with "
            f"cache_update='write' or upgrade TensorRT")
    logger, errors = _make_logger(options.verbose)
    builder = trt.Builder(logger)
    if info.has_strongly_typed:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    elif info.is_rtx:
        flags = 0  # TensorRT-RTX networks are strongly typed without the flag
    else:
        raise BackendError(f"{info.module} {info.version_str} has no strongly typed networks; t5rt needs "
                           f"TensorRT >= 10 ('pip install -U tensorrt')")
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    T = pinned_cache_len(m, options) if graph == "decoder_step" else None
    static = _static_cache_model(path, T) if T else None
    parsed = parser.parse(static, str(path)) if static is not None else parser.parse_from_file(str(path))
    if not parsed:
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BackendError(f"TensorRT could not parse {path.name}: " + " | ".join(errs or errors))
    check_network_io(network, spec)
    if T:
        _pin_cache_inputs(network, m, T)

    config = builder.create_builder_config()
    if options.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    if options.optimization_level is not None and info.has_optimization_level:
        config.builder_optimization_level = options.optimization_level
    tf32 = getattr(trt.BuilderFlag, "TF32", None)  # on by default; it is a math mode, not a precision flag
    if tf32 is not None and not options.allow_tf32:
        config.clear_flag(tf32)
    if options.progress and info.has_progress_monitor:
        config.progress_monitor = _make_progress_monitor(graph, stream or sys.stderr)
    if timing is not None:
        timing.attach(config)
    names = {t.name for t in spec.inputs}
    for p in profiles:
        prof = builder.create_optimization_profile()
        for name, (lo, opt, hi) in p.shapes(spec).items():
            if name in names:
                prof.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
        if config.add_optimization_profile(prof) < 0:
            raise BackendError(f"{path.name}: TensorRT rejected optimization profile {p.to_json()}: "
                               + " | ".join(errors[-3:]))
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendError(f"TensorRT failed to build {path.name}: "
                           + (" | ".join(errors[-5:]) or "no error was logged"))
    return bytes(memoryview(plan))


def build_engines(export_dir: str | Path, options: BuildOptions | None = None, *,
                  stream: TextIO | None = None) -> dict[str, Path]:
    """Build (or reuse from DIR/engines) the TensorRT engines of an export; graph -> engine path."""
    return {r.graph: r.path for r in build_engines_report(export_dir, options, stream=stream)}


def build_engines_report(export_dir: str | Path, options: BuildOptions | None = None, *,
                         stream: TextIO | None = None) -> list[BuildResult]:
    """build_engines, returning per-graph results (cached?, seconds, bytes, key, profiles)."""
    options = options or BuildOptions()
    options.validate()
    d = Path(export_dir)
    m = load_manifest(d)
    if options.precision is not None and options.precision != m.precision:
        raise InvalidOptionError(
            f"--precision {options.precision} differs from the export's {m.precision}: TensorRT builds "
            f"strongly typed networks, so the ONNX graph carries the precision; re-export with "
            f"'t5rt export ... --precision {options.precision}'")
    compat.load()
    info = compat.info()
    gpu = compat.gpu_identity()
    timing = TimingCache(Path(options.timing_cache) if options.timing_cache else default_timing_cache(d, gpu))
    results = []
    for graph in options.graphs:
        profiles = compute_profiles(m, graph, options)
        key, fields = engine_key(m, graph, profiles, trt_module=info.module, trt_version=info.version_str,
                                 gpu_name=gpu.name, compute_capability=gpu.compute_capability, options=options)
        path, _ = engine_paths(d, graph, key)
        if not options.force:
            try:
                plan = read_engine_file(path, key)
                log.info("%s: cached engine %s is valid (%d bytes)", graph, path.name, len(plan))
                results.append(BuildResult(graph, path, True, 0.0, len(plan), key, profiles))
                continue
            except EngineFileError as e:
                if path.exists():
                    log.warning("%s: %s; rebuilding", graph, e)
        t0 = time.perf_counter()
        plan = build_plan(m, graph, profiles, options, timing, stream=stream)
        seconds = time.perf_counter() - t0
        meta = dict(fields, cache_len=pinned_cache_len(m, options) if graph == "decoder_step" else None,
                    trt_info=asdict(info), built_at=time.time(), build_seconds=seconds)
        write_engine_file(path, plan, key, meta)
        timing.save()
        _prune_stale(d, graph, keep=path)
        log.info("%s: built %s in %.1fs (%d bytes)", graph, path.name, seconds, len(plan))
        results.append(BuildResult(graph, path, False, seconds, len(plan), key, profiles))
    return results


def _prune_stale(export_dir: Path, graph: str, keep: Path) -> None:
    """Remove this graph's engines built for other keys (old TensorRT, GPU or profiles)."""
    for p in (Path(export_dir) / ENGINE_DIR).glob(f"{graph}-*.engine"):
        if p != keep:
            for q in (p, p.with_suffix(".json")):
                try:
                    q.unlink()
                except OSError:
                    pass


# -- CLI ----------------------------------------------------------------------------------------
def _int_list(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 1,2,4,8") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 1,2,4,8")
    return vals


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `t5rt build DIR`."""
    parser.add_argument("dir", metavar="DIR", help="export directory written by 't5rt export'")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="expected precision of the export (checked; the ONNX graph carries it)")
    parser.add_argument("--max-batch", type=int, default=8, help="largest batch of inputs (default 8)")
    parser.add_argument("--max-beams", type=int, default=4,
                        help="largest num_beams; decoder rows go to max_batch*max_beams (default 4)")
    parser.add_argument("--buckets", type=_int_list, default=None, metavar="N,N,...",
                        help="batch buckets, one optimization profile each (default 1,2,4,..,max-batch)")
    parser.add_argument("--src-buckets", type=_int_list, default=None, metavar="N,N,...",
                        help="source-length buckets (default one range 1..max_input_len)")
    parser.add_argument("--workspace", type=int, default=None, metavar="MB", help="builder workspace limit in MiB")
    parser.add_argument("--opt-level", type=int, default=None, choices=range(6), metavar="0-5",
                        help="builder optimization level (TensorRT default 3; lower builds faster)")
    parser.add_argument("--timing-cache", type=Path, default=None, metavar="PATH",
                        help="timing cache file to load and update (default under DIR/engines)")
    parser.add_argument("--graphs", type=lambda s: tuple(s.split(",")), default=GRAPH_NAMES,
                        help="graphs to build (default encoder,cross_kv,decoder_step)")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached engines are valid")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true", help="show TensorRT's info messages")


def options_from_args(args: argparse.Namespace) -> BuildOptions:
    return BuildOptions(
        precision=args.precision, max_batch=args.max_batch, max_beams=args.max_beams,
        batch_buckets=args.buckets, src_buckets=args.src_buckets, workspace_mb=args.workspace,
        optimization_level=args.opt_level, timing_cache=args.timing_cache, graphs=tuple(args.graphs),
        force=args.force, progress=not args.no_progress, verbose=args.verbose,
    )


def run_cli(args: argparse.Namespace) -> int:
    """`t5rt build`: returns the exit code; T5rtError propagates for the CLI to print."""
    options = options_from_args(args)
    results = build_engines_report(args.dir, options)
    info = compat.info()
    print(f"TensorRT: {info.describe()}")
    for r in results:
        state = "cached" if r.cached else f"built in {r.seconds:.1f}s"
        print(f"{r.graph:<13} {state:<18} {r.engine_bytes / 2**20:8.1f} MiB  {len(r.profiles)} profiles  {r.path}")
    return 0
