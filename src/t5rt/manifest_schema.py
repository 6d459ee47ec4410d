"""manifest.json's schema, read field by field (DESIGN.md §11: exports are untrusted input).

`parse(doc, where)` turns the decoded JSON into a `Manifest` or raises `InvalidExportError`
naming the field ("dims.vocab_size", "graphs.encoder.inputs[1].dtype", ...) and what it must
be. Checked here, without touching any file but manifest.json:

- every field's JSON type and range (format_version 2; unknown top-level keys are ignored,
  unknown keys inside a structure are refused);
- every file name is a relative path inside the export (no absolute path, no `..`, no NUL),
  and every file the runtime reads (graphs, external data, tokenizer files) has an entry in
  "files" with its sha256 and size;
- roles: each names, per graph, an input/output tensor of that graph whose dtype and shape are
  what the runtime allocates for it from "dims" and "precision" (`role_table`), and every
  tensor of every graph is bound by exactly one role.

The files themselves (sha256, sizes, the graphs' real inputs/outputs) are `export_check.py`'s.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any, NoReturn

from .errors import InvalidExportError

SYMBOLS = ("batch", "src_len", "cache_len")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_STR = 4096
_MAX_DIM = 1 << 24

# dims field -> (lowest, highest) accepted value
DIM_RANGES = {
    "d_model": (1, 1 << 16), "d_kv": (1, 1 << 12), "d_ff": (1, 1 << 20), "num_heads": (1, 1 << 10),
    "num_encoder_layers": (1, 1 << 10), "num_decoder_layers": (1, 1 << 10), "vocab_size": (2, 1 << 24),
}
# dims field -> the Hugging Face config key it restates
CONFIG_KEYS = {"d_model": "d_model", "d_kv": "d_kv", "d_ff": "d_ff", "num_heads": "num_heads",
               "num_encoder_layers": "num_layers", "num_decoder_layers": "num_decoder_layers",
               "vocab_size": "vocab_size"}
LEN_RANGE = (1, 1 << 16)  # max_input_len, max_output_len


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"the boolean {str(v).lower()}"
    if isinstance(v, str):
        return f"the string {v[:40]!r}"
    if isinstance(v, (int, float)):
        return f"the number {v!r}"
    if isinstance(v, list):
        return "a JSON list"
    if isinstance(v, dict):
        return "a JSON object"
    return type(v).__name__


class _Fields:
    """Typed reads of one JSON object; `fail` raises with the dotted field path."""

    def __init__(self, value: Any, path: str, fail: Callable[[str, str], NoReturn], closed: bool = True):
        if not isinstance(value, dict):
            fail(path or "<top level>", f"must be a JSON object, got {_kind(value)}")
        self.d, self.path, self.fail = value, path, fail
        self.read: set[str] = set()
        self.closed = closed

    def field(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, optional: bool = False) -> Any:
        self.read.add(key)
        if key not in self.d:
            if optional:
                return None
            self.fail(self.field(key), "is missing")
        return self.d[key]

    def int(self, key: str, lo: int, hi: int) -> int:
        return _int(self.get(key), lo, hi, self.field(key), self.fail)

    def str(self, key: str, choices: tuple[str, ...] | None = None) -> str:
        v = self.get(key)
        if not isinstance(v, str) or len(v) > _MAX_STR:
            self.fail(self.field(key), f"must be a string, got {_kind(v)}")
        if choices is not None and v not in choices:
            self.fail(self.field(key), f"must be one of {', '.join(map(repr, choices))}, got {v!r}")
        return v

    def obj(self, key: str, closed: bool = True) -> "_Fields":
        return _Fields(self.get(key), self.field(key), self.fail, closed)

    def list(self, key: str, max_len: int = 4096) -> list[Any]:
        v = self.get(key)
        if not isinstance(v, list) or len(v) > max_len:
            self.fail(self.field(key), f"must be a JSON list (at most {max_len} items), got {_kind(v)}")
        return v

    def done(self) -> None:
        """Refuse keys nobody read (closed structures only)."""
        extra = sorted(set(self.d) - self.read)
        if self.closed and extra:
            self.fail(self.field(extra[0]), "is not a known field here (a typo, or a newer t5rt's export?)")


def _int(v: Any, lo: int, hi: int, field: str, fail: Callable[[str, str], NoReturn]) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        fail(field, f"must be an integer in [{lo}, {hi}], got {_kind(v)}")
    if not lo <= v <= hi:
        fail(field, f"must be an integer in [{lo}, {hi}], got {v}")
    return v


def file_name(v: Any, field: str, fail: Callable[[str, str], NoReturn]) -> str:
    """A relative path that stays inside the export directory (symlinks: export_check.py)."""
    if not isinstance(v, str) or not v or len(v) > 255:
        fail(field, f"must be a file name inside the export directory, got {_kind(v)}")
    if "\x00" in v or "\\" in v:
        fail(field, f"{v!r} is not a plain file name (NUL or backslash)")
    p = PurePosixPath(v)
    if p.is_absolute() or v.startswith("~"):
        fail(field, f"{v!r} is an absolute path; an export names its files relative to its directory")
    if any(part in ("..", ".") for part in v.split("/")) or not p.parts or v.endswith("/"):
        fail(field, f"{v!r} leaves or names the export directory itself ('..', '.' or a trailing '/'); "
                    "an export's files live inside it")
    return v


def role_table(dims: Any, precision: str, cache_update: str) -> dict[str, dict[str, tuple]]:
    """What the runtime binds per graph: role -> (input|output, dtype, shape, per_layer).

    Shapes use the symbols "batch", "src_len", "cache_len" and ints from `dims` (runtime/buffers.py
    allocates exactly these)."""
    from .manifest import PRECISION_DTYPE

    act = PRECISION_DTYPE[precision]
    B, S, T = SYMBOLS
    D, H, Dk, V = dims.d_model, dims.num_heads, dims.d_kv, dims.vocab_size
    kv_s, kv_t = (B, H, S, Dk), (B, H, T, Dk)
    step = {
        "input_ids": ("input", "int64", (B, 1), False),
        "position": ("input", "int64", (B,), False),
        "encoder_attention_mask": ("input", "int64", (B, S), False),
        "cross_k": ("input", act, kv_s, True), "cross_v": ("input", act, kv_s, True),
        "self_k": ("input", act, kv_t, True), "self_v": ("input", act, kv_t, True),
        "logits": ("output", "float32", (B, V), False),
    }
    if cache_update == "write":
        step.update(new_self_k=("output", act, (B, H, 1, Dk), True), new_self_v=("output", act, (B, H, 1, Dk), True))
    else:
        step.update(present_self_k=("output", act, kv_t, True), present_self_v=("output", act, kv_t, True))
    return {
        "encoder": {"input_ids": ("input", "int64", (B, S), False),
                    "attention_mask": ("input", "int64", (B, S), False),
                    "hidden": ("output", act, (B, S, D), False)},
        "cross_kv": {"hidden": ("input", act, (B, S, D), False),
                     "cross_k": ("output", act, kv_s, True), "cross_v": ("output", act, kv_s, True)},
        "decoder_step": step,
    }


def parse(doc: Any, where: str, directory: Any = None) -> Any:
    """Decoded manifest.json -> Manifest; InvalidExportError naming the first bad field."""
    from . import manifest as mf

    def fail(field: str, why: str) -> NoReturn:
        raise InvalidExportError(f"{where} is not a valid t5rt manifest: field '{field}' {why}; "
                                 "re-export the model with 't5rt export' (or restore the original files)")

    top = _Fields(doc, "", fail, closed=False)
    fmt = top.get("format")
    if fmt != mf.FORMAT:
        fail("format", f"is {_kind(fmt)}, expected {mf.FORMAT!r}")
    version = top.get("format_version")
    if version != mf.FORMAT_VERSION or isinstance(version, bool):
        if isinstance(version, int) and not isinstance(version, bool) and version < mf.FORMAT_VERSION:
            fail("format_version", f"is {version}: an export of an older t5rt (without file hashes); "
                                   f"this t5rt reads format_version {mf.FORMAT_VERSION}")
        newer = isinstance(version, int) and not isinstance(version, bool)
        fail("format_version", f"is {_kind(version)}; this t5rt reads format_version {mf.FORMAT_VERSION}"
                               + (" (a newer t5rt wrote it? upgrade t5rt)" if newer else ""))
    strings = {k: top.str(k) for k in ("exporter_version", "source", "source_checksum", "model_type")}
    config = top.get("config")
    if not isinstance(config, dict):
        fail("config", f"must be a JSON object, got {_kind(config)}")

    d = top.obj("dims")
    dims = mf.Dims(**{k: d.int(k, *DIM_RANGES[k]) for k in DIM_RANGES})
    d.done()
    for k, ck in CONFIG_KEYS.items():  # dims restate the model config the exporter saved
        if ck in config and config[ck] != getattr(dims, k):
            fail(f"dims.{k}", f"is {getattr(dims, k)} but config.{ck} is {_kind(config[ck])}")
    precision = top.str("precision", mf.PRECISIONS)
    max_input_len, max_output_len = top.int("max_input_len", *LEN_RANGE), top.int("max_output_len", *LEN_RANGE)
    cache_update = top.str("cache_update", mf.CACHE_UPDATES)
    opset = top.int("opset", 1, 1000)
    st = top.obj("special_tokens")
    special = mf.SpecialTokens(**{k: st.int(k, 0, dims.vocab_size - 1)
                                  for k in ("pad_token_id", "eos_token_id", "decoder_start_token_id")})
    st.done()

    files_obj = top.obj("files")
    files: dict[str, mf.FileEntry] = {}
    for name in list(files_obj.d):
        file_name(name, f"files key {name[:80]!r}", fail)
        e = files_obj.obj(name)
        digest = e.str("sha256")
        if not _HEX64.fullmatch(digest):
            fail(e.field("sha256"), f"must be 64 lowercase hex digits, got {digest[:80]!r}")
        files[name] = mf.FileEntry(sha256=digest, bytes=e.int("bytes", 0, 1 << 50))
        e.done()

    def listed(name: str, field: str) -> str:
        file_name(name, field, fail)
        if name not in files:
            fail(field, f"names {name!r}, which has no entry (sha256, bytes) in 'files'")
        return name

    tok = top.list("tokenizer_files", 64)
    tokenizer_files = tuple(listed(t, f"tokenizer_files[{i}]") for i, t in enumerate(tok))

    g_obj = top.obj("graphs")
    graphs: dict[str, mf.GraphSpec] = {}
    for g in mf.GRAPH_NAMES:
        graphs[g] = _graph(g_obj.obj(g), fail, listed, files)
    g_obj.done()
    used = [graphs[g].file for g in mf.GRAPH_NAMES]
    if len(set(used)) != len(used):
        fail("graphs", f"name the same file twice ({', '.join(used)}); each graph has its own file")

    r_obj = top.obj("roles")
    table = role_table(dims, precision, cache_update)
    canonical = mf.canonical_roles(dims.num_decoder_layers, cache_update)
    roles: dict[str, dict[str, Any]] = {}
    for g in mf.GRAPH_NAMES:
        roles[g] = _roles(r_obj.obj(g), graphs[g], table[g], dims.num_decoder_layers, fail)
        for role, name in canonical[g].items():
            if roles[g][role] != name:
                fail(f"roles.{g}.{role}", f"is {roles[g][role]!r}; t5rt exports bind {name!r} there (a tensor "
                                          "bound to another role would give silently different tokens)")
    r_obj.done()

    weights = _weights(top, fail, listed, files) if top.get("weights", optional=True) is not None else None

    return mf.Manifest(
        format_version=version, **strings, config=config, dims=dims, precision=precision,
        max_input_len=max_input_len, max_output_len=max_output_len, cache_update=cache_update,
        opset=opset, special_tokens=special, graphs=graphs, roles=roles,
        tokenizer_files=tokenizer_files, files=files, weights=weights, directory=directory)


_WEIGHT_DTYPES = ("float32", "float16", "bfloat16", "int32", "int64")


def _weights(top: _Fields, fail: Callable[[str, str], NoReturn], listed: Callable[[str, str], str],
             files: dict[str, Any]) -> Any:
    """The optional "weights" entry: the native engine's decoder weights file (t5rt.weights)."""
    from .weights import WeightsSpec

    o = top.obj("weights")
    file = listed(o.get("file"), o.field("file"))
    digest = o.str("sha256")
    if digest != files[file].sha256:
        fail(o.field("sha256"), f"is {digest[:80]!r} but files.{file}.sha256 is {files[file].sha256!r}")
    o.str("format", ("safetensors",))
    dt = o.obj("dtypes", closed=False)
    if len(dt.d) > 100_000:
        fail(dt.path, "lists too many tensors")
    dtypes = {}
    for name in dt.d:
        if not isinstance(name, str) or len(name) > _MAX_STR:
            fail(dt.path, "has a tensor name that is not a short string")
        dtypes[name] = dt.str(name, _WEIGHT_DTYPES)
    nums = {}
    for key, lo, hi in (("logit_scale", 0.0, 1e6), ("residual_clamp", 0.0, 1e38)):
        v = o.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= float(v) <= hi:
            fail(o.field(key), f"must be a number in [{lo}, {hi}], got {_kind(v)}")
        nums[key] = float(v)
    o.done()
    return WeightsSpec(file=file, sha256=digest, dtypes=dtypes, **nums)


def _graph(o: _Fields, fail: Callable[[str, str], NoReturn], listed: Callable[[str, str], str],
           files: dict[str, Any]) -> Any:
    from .manifest import DTYPES, GraphSpec, TensorSpec

    file = listed(o.get("file"), o.field("file"))
    digest = o.str("sha256")
    if digest != files[file].sha256:
        fail(o.field("sha256"), f"is {digest[:80]!r} but files.{file}.sha256 is {files[file].sha256!r}")
    ext = o.get("external_data")
    if ext is not None:
        ext = listed(ext, o.field("external_data"))
        if ext == file:
            fail(o.field("external_data"), "names the graph file itself")
    specs: dict[str, tuple[TensorSpec, ...]] = {}
    names: set[str] = set()
    for io in ("inputs", "outputs"):
        items = o.list(io, 4096)
        if not items:
            fail(o.field(io), "is empty; every graph has inputs and outputs")
        out = []
        for i, t in enumerate(items):
            to = _Fields(t, f"{o.field(io)}[{i}]", fail)
            name = to.str("name")
            if not name:
                fail(to.field("name"), "is empty")
            if name in names:
                fail(to.field("name"), f"{name!r} appears twice in this graph")
            names.add(name)
            dtype = to.str("dtype", DTYPES)
            shape = to.list("shape", 8)
            for j, dim in enumerate(shape):
                if isinstance(dim, str):
                    if dim not in SYMBOLS:
                        fail(f"{to.field('shape')}[{j}]", f"is {dim!r}; symbolic dims are {', '.join(SYMBOLS)}")
                else:
                    _int(dim, 1, _MAX_DIM, f"{to.field('shape')}[{j}]", fail)
            to.done()
            out.append(TensorSpec(name, dtype, tuple(shape)))
        specs[io] = tuple(out)
    o.done()
    return GraphSpec(file=file, sha256=digest, inputs=specs["inputs"], outputs=specs["outputs"], external_data=ext)


def _roles(o: _Fields, spec: Any, table: dict[str, tuple], layers: int,
           fail: Callable[[str, str], NoReturn]) -> dict[str, Any]:
    tensors = {"input": {t.name: t for t in spec.inputs}, "output": {t.name: t for t in spec.outputs}}
    bound: dict[str, str] = {}
    roles: dict[str, Any] = {}
    for role, (io, dtype, shape, per_layer) in table.items():
        v = o.get(role)
        field = o.field(role)
        if per_layer:
            if not isinstance(v, list) or len(v) != layers:
                fail(field, f"must list one tensor name per decoder layer ({layers}), got {_kind(v)}"
                            + (f" of {len(v)}" if isinstance(v, list) else ""))
            names = v
        else:
            names = [v]
        for i, name in enumerate(names):
            f = f"{field}[{i}]" if per_layer else field
            if not isinstance(name, str):
                fail(f, f"must be a tensor name, got {_kind(name)}")
            t = tensors[io].get(name)
            if t is None:
                fail(f, f"names {name!r}, which is not an {io} of {spec.file}")
            if t.dtype != dtype:
                fail(f, f"names {name!r} of dtype {t.dtype}, but the runtime binds {dtype} there "
                        "(precision and graph disagree)")
            if tuple(t.shape) != shape:
                fail(f, f"names {name!r} of shape {list(t.shape)}, but dims make it {list(shape)}")
            if name in bound:
                fail(f, f"names {name!r}, already bound as role {bound[name]!r}")
            bound[name] = role
        roles[role] = list(v) if per_layer else v
    o.done()
    unbound = [t.name for t in spec.inputs + spec.outputs if t.name not in bound]
    if unbound:
        fail(o.path, f"leave {spec.file}'s tensor(s) {', '.join(map(repr, unbound[:4]))} without a role "
                     "(the runtime would not bind them)")
    return roles

