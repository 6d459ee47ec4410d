"""An export's files against its manifest, before any of them is run (DESIGN.md §11).

    report = verify_export(manifest, hashes=True)   # InvalidExportError naming file and field

Checks, in order (the manifest's own schema was checked by manifest_schema.py when it was read):
1. confinement: every file the manifest names resolves (symlinks followed) to a regular file
   inside the export directory;
2. size: each file's size equals files.<name>.bytes (a cheap catch of truncation, always on);
3. sha256: each file's digest, streamed in 1 MiB chunks, equals files.<name>.sha256 (skipped with
   RuntimeOptions.verify=False for a disk you trust; the time it takes is in the report);
4. graphs: each graph's real inputs/outputs (onnx_io.py reads them without loading weights)
   are exactly the manifest's: names, dtypes, ranks, fixed sizes and symbolic dims; every
   external-data file a graph reads is the one the manifest names (so it was hashed too).
"""

from __future__ import annotations

import logging
import os
import posixpath
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidExportError
from .manifest import GRAPH_NAMES, Manifest, sha256_file
from .onnx_io import OnnxFormatError, read_graph_io
from .runtime.device import DTYPE_TABLE

log = logging.getLogger("t5rt")

_ONNX_DTYPE = {elem: name for name, (_, elem) in DTYPE_TABLE.items()}  # ONNX elem type -> manifest dtype
_REEXPORT = "re-export the model with 't5rt export' (or restore the original files)"


@dataclass
class VerifyReport:
    files: int = 0           # files checked
    bytes: int = 0           # bytes hashed (0 with hashes=False)
    hash_s: float = 0.0      # time spent hashing
    total_s: float = 0.0     # the whole verification
    hashed: bool = True      # False: RuntimeOptions.verify=False skipped the sha256 step


def confined_path(directory: Path, name: str, field: str) -> Path:
    """DIR/name with symlinks resolved; InvalidExportError unless it is a regular file inside DIR."""
    root = Path(os.path.realpath(directory))
    try:
        real = Path(os.path.realpath(directory / name))
        st = os.stat(real)
    except (OSError, ValueError) as e:
        raise InvalidExportError(f"{directory}: {field} names {name!r}, which cannot be opened "
                                 f"({type(e).__name__}: {e}); {_REEXPORT}") from None
    if real != root and root not in real.parents:
        raise InvalidExportError(f"{directory}: {field} names {name!r}, which resolves to {real}, outside the "
                                 f"export directory (a symlink?); an export's files must live inside it")
    if not stat.S_ISREG(st.st_mode):
        raise InvalidExportError(f"{directory}: {field} names {name!r}, which is not a regular file; {_REEXPORT}")
    return real


def verify_export(m: Manifest, hashes: bool = True) -> VerifyReport:
    """Check the export's files against manifest `m` (see the module doc); -> what it cost."""
    if m.directory is None:
        raise InvalidExportError("the manifest was not loaded from a directory; load the export with t5rt.load(DIR)")
    d = m.directory
    t0 = time.perf_counter()
    report = VerifyReport(hashed=hashes)
    paths = {}
    for name, entry in m.files.items():
        p = confined_path(d, name, f"files.{name}")
        size = p.stat().st_size
        if size != entry.bytes:
            raise InvalidExportError(f"{d}: {name} is {size} bytes, but the manifest's files.{name}.bytes says "
                                     f"{entry.bytes} (truncated or replaced?); {_REEXPORT}")
        paths[name] = p
    if hashes:
        th = time.perf_counter()
        for name, entry in m.files.items():
            digest = sha256_file(paths[name])
            if digest != entry.sha256:
                raise InvalidExportError(f"{d}: {name} has sha256 {digest}, but the manifest's files.{name}.sha256 "
                                         f"says {entry.sha256} (corrupted or replaced?); {_REEXPORT}")
            report.bytes += entry.bytes
        report.hash_s = time.perf_counter() - th
    for g in GRAPH_NAMES:
        _check_graph(m, g, paths[m.graphs[g].file])
    report.files = len(m.files)
    report.total_s = time.perf_counter() - t0
    if hashes:
        log.info("t5rt: verified %d files of %s (%.1f MiB sha256 in %.3f s)", report.files, d,
                 report.bytes / 2**20, report.hash_s)
    else:
        log.info("t5rt: verified %s without sha256 (verify=False)", d)
    return report


def _check_graph(m: Manifest, graph: str, path: Path) -> None:
    spec = m.graphs[graph]
    where = f"{m.directory}: graph {graph!r} ({spec.file})"
    try:
        real = read_graph_io(path)
    except (OnnxFormatError, OSError) as e:
        raise InvalidExportError(f"{where} is not a readable ONNX model ({e}); {_REEXPORT}") from None
    for kind, declared, actual in (("input", spec.inputs, real.inputs), ("output", spec.outputs, real.outputs)):
        names = {t.name for t in declared}
        missing = [t.name for t in declared if t.name not in actual]
        extra = [n for n in actual if n not in names]
        if missing or extra:
            raise InvalidExportError(
                f"{where}: the manifest's graphs.{graph}.{kind}s do not match the graph's real {kind}s "
                f"(manifest only: {missing[:4]}, graph only: {extra[:4]}; swapped or edited files?); {_REEXPORT}")
        for i, t in enumerate(declared):
            elem, dims = actual[t.name]
            field = f"graphs.{graph}.{kind}s[{i}]"
            dtype = _ONNX_DTYPE.get(elem, f"ONNX element type {elem}")
            if dtype != t.dtype:
                raise InvalidExportError(f"{where}: {field}.dtype is {t.dtype} but the graph's {kind} {t.name!r} is "
                                         f"{dtype} (precision edited?); {_REEXPORT}")
            # a fixed size must be that size; a symbolic dim must stay symbolic under the same name
            if tuple(dims) != tuple(t.shape):
                raise InvalidExportError(f"{where}: {field}.shape is {list(t.shape)} but the graph's {kind} "
                                         f"{t.name!r} is {list(dims)} (dims edited?); {_REEXPORT}")
    allowed = {spec.external_data} if spec.external_data else set()
    # ONNX Runtime reads a location relative to the graph file's own folder, not the export's
    here = posixpath.dirname(spec.file)
    stray = sorted(loc for loc in real.external_files if posixpath.normpath(posixpath.join(here, loc)) not in allowed)
    if stray:
        raise InvalidExportError(f"{where} reads weights from {stray[0]!r}, which is not its manifest "
                                 f"graphs.{graph}.external_data ({spec.external_data!r}); {_REEXPORT}")
    if spec.external_data and not real.external_files:
        raise InvalidExportError(f"{where}: graphs.{graph}.external_data names {spec.external_data!r}, "
                                 f"but the graph stores no weights outside itself; {_REEXPORT}")

