"""manifest.json: the contract between the exporter and every backend (DESIGN.md §3).

The exporter writes it; runtimes read I/O names, dtypes and shapes from it and never
from hard-coded strings. Torch-free: both `t5rt.exporters` and the runtime import it.

Layout (format_version 2)::

    {
      "format": "t5rt-export", "format_version": 2, "exporter_version": "0.1.0",
      "source": "t5-small" | "/path/to/dir", "source_checksum": "sha256:...",
      "model_type": "t5" | "mt5" | "umt5" ...,
      "config": {...T5Config.to_dict()...},
      "dims": {"d_model", "d_kv", "num_heads", "num_encoder_layers", "num_decoder_layers",
               "vocab_size", "d_ff"},
      "precision": "fp32" | "fp16" | "bf16",
      "max_input_len": 512, "max_output_len": 256,
      "cache_update": "write" | "inplace",
      "opset": 17,
      "special_tokens": {"pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0},
      "tokenizer_files": ["spiece.model", ...],
      "files": {"encoder.onnx": {"sha256": "<64 hex>", "bytes": 1234}, ...},   every file read
      "graphs": {"encoder": GRAPH, "cross_kv": GRAPH, "decoder_step": GRAPH},
      "roles": {"encoder": {...}, "cross_kv": {...}, "decoder_step": {...}},
      "weights": null | {"file": "decoder_weights.safetensors", "sha256": "...", "format": "safetensors",
                         "dtypes": {name: dtype}, "logit_scale": 1.0}   (the native engine's; t5rt.weights)
    }

    GRAPH = {"file": "encoder.onnx", "sha256": "...", "external_data": null | "encoder.onnx.data",
             "inputs": [TENSOR...], "outputs": [TENSOR...]}
    TENSOR = {"name": "input_ids", "dtype": "int64", "shape": ["batch", "src_len"]}

manifest_schema.py reads this field by field (types, ranges, roles against dims and precision)
and export_check.py checks the files against it (sha256, size, the graphs' real I/O); both raise
InvalidExportError naming the field. Version 1 (no "files") is refused: re-export.

Symbolic dims: "batch" (B, or B*num_beams for the decoder), "src_len" (S),
"cache_len" (T, the static self-attention cache length the runtime allocates,
<= max_output_len). Every other dim is an int.

Roles map what a tensor *is* to its name, per graph (lists are per layer):

    encoder:      input_ids, attention_mask -> hidden
    cross_kv:     hidden -> cross_k[l], cross_v[l]
    decoder_step: input_ids [B,1], position [B], encoder_attention_mask [B,S],
                  cross_k[l], cross_v[l] [B,H,S,Dk], self_k[l], self_v[l] [B,H,T,Dk]
                  -> logits [B,V] fp32 and
                     cache_update == "write":   new_self_k[l], new_self_v[l] [B,H,1,Dk]
                     cache_update == "inplace": present_self_k[l], present_self_v[l] [B,H,T,Dk]
                                                (aliases self_k[l] / self_v[l])
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidExportError, NotAnExportError
from .weights import WeightsSpec

FORMAT = "t5rt-export"
FORMAT_VERSION = 2  # 2: "files" (sha256 + size of every file), a checked schema
MAX_MANIFEST_BYTES = 64 << 20
MANIFEST_NAME = "manifest.json"
GRAPH_NAMES = ("encoder", "cross_kv", "decoder_step")
PRECISIONS = ("fp32", "fp16", "bf16")
CACHE_UPDATES = ("write", "inplace")
# ONNX element type names used in the manifest -> numpy dtype names (bf16 has no numpy name;
# runtimes map it themselves, e.g. ml_dtypes.bfloat16 or uint16 storage).
DTYPES = ("int64", "int32", "bool", "float32", "float16", "bfloat16")
PRECISION_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphSpec:
    file: str
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    external_data: str | None = None

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise KeyError(f"{self.file} has no input {name!r}")

    def output(self, name: str) -> TensorSpec:
        for t in self.outputs:
            if t.name == name:
                return t
        raise KeyError(f"{self.file} has no output {name!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "external_data": self.external_data,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }


@dataclass(frozen=True)
class FileEntry:
    sha256: str  # 64 lowercase hex digits
    bytes: int   # size


@dataclass(frozen=True)
class Dims:
    d_model: int
    d_kv: int
    d_ff: int
    num_heads: int
    num_encoder_layers: int
    num_decoder_layers: int
    vocab_size: int


@dataclass(frozen=True)
class SpecialTokens:
    pad_token_id: int
    eos_token_id: int
    decoder_start_token_id: int


@dataclass(frozen=True)
class Manifest:
    exporter_version: str
    source: str
    source_checksum: str
    model_type: str
    config: dict[str, Any]
    dims: Dims
    precision: str
    max_input_len: int
    max_output_len: int
    cache_update: str
    opset: int
    special_tokens: SpecialTokens
    graphs: dict[str, GraphSpec]
    roles: dict[str, dict[str, Any]]
    tokenizer_files: tuple[str, ...] = ()
    files: dict[str, FileEntry] = field(default_factory=dict)  # every file read: sha256, size
    weights: WeightsSpec | None = None  # decoder weights for backend="native" (optional)
    format_version: int = FORMAT_VERSION
    directory: Path | None = field(default=None, compare=False)

    # -- convenience ------------------------------------------------------------------
    @property
    def act_dtype(self) -> str:
        """dtype of hidden states and K/V tensors crossing graph boundaries."""
        return PRECISION_DTYPE[self.precision]

    def role(self, graph: str, role: str) -> Any:
        """Name (or per-layer list of names) playing `role` in `graph`."""
        try:
            return self.roles[graph][role]
        except KeyError:
            raise KeyError(f"manifest has no role {role!r} for graph {graph!r}") from None

    def graph_path(self, graph: str) -> Path:
        return self.file_path(self.graphs[graph].file)

    # -- (de)serialisation -------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "exporter_version": self.exporter_version,
            "source": self.source,
            "source_checksum": self.source_checksum,
            "model_type": self.model_type,
            "config": self.config,
            "dims": asdict(self.dims),
            "precision": self.precision,
            "max_input_len": self.max_input_len,
            "max_output_len": self.max_output_len,
            "cache_update": self.cache_update,
            "opset": self.opset,
            "special_tokens": asdict(self.special_tokens),
            "tokenizer_files": list(self.tokenizer_files),
            "files": {k: asdict(e) for k, e in self.files.items()},
            "graphs": {k: g.to_json() for k, g in self.graphs.items()},
            "roles": self.roles,
            **({"weights": self.weights.to_json()} if self.weights is not None else {}),
        }

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n")
        return path

    @classmethod
    def from_json(cls, d: Any, directory: Path | None = None, where: str = MANIFEST_NAME) -> "Manifest":
        """Decoded manifest.json -> Manifest; InvalidExportError names the first bad field."""
        from .manifest_schema import parse

        return parse(d, where, directory)

    def validate(self) -> None:
        """The schema check load() runs, on this manifest (the exporter runs it before saving);
        raises InvalidExportError (a ValueError) naming the first problem."""
        self.from_json(json.loads(json.dumps(self.to_json())), self.directory)

    def file_path(self, name: str) -> Path:
        if self.directory is None:
            raise ValueError("manifest was not loaded from a directory")
        return self.directory / name


def canonical_roles(num_decoder_layers: int, cache_update: str) -> dict[str, dict[str, Any]]:
    """The roles section every t5rt export has: what each tensor is -> its name, per graph
    (lists per decoder layer). The exporter writes it (exporters/io_spec.py) and load() requires
    it, so a manifest cannot rebind a tensor to another role (say, swap layers' caches)."""
    def per(kind: str) -> list[str]:
        return [f"{kind}.{layer}" for layer in range(num_decoder_layers)]

    step: dict[str, Any] = {
        "input_ids": "input_ids", "position": "position", "encoder_attention_mask": "encoder_attention_mask",
        "cross_k": per("cross_k"), "cross_v": per("cross_v"), "self_k": per("self_k"), "self_v": per("self_v"),
        "logits": "logits",
    }
    if cache_update == "write":
        step.update(new_self_k=per("new_self_k"), new_self_v=per("new_self_v"))
    else:
        step.update(present_self_k=per("present_self_k"), present_self_v=per("present_self_v"))
    return {
        "encoder": {"input_ids": "input_ids", "attention_mask": "attention_mask", "hidden": "hidden"},
        "cross_kv": {"hidden": "hidden", "cross_k": per("cross_k"), "cross_v": per("cross_v")},
        "decoder_step": step,
    }


def load_manifest(directory: str | Path, *, check_files: bool = True) -> Manifest:
    """Read and schema-check DIR/manifest.json (manifest_schema.py); with check_files, every file
    it names must be a regular file inside DIR (export_check.confined_path). NotAnExportError:
    no manifest; InvalidExportError: a manifest or file that fails a check (naming the field)."""
    d = Path(directory)
    if not d.is_dir():
        raise NotAnExportError(f"{d} is not a directory; pass the --out directory of 't5rt export'")
    path = d / MANIFEST_NAME
    if not path.is_file():
        raise NotAnExportError(
            f"{d} is not a t5rt export: it has no {MANIFEST_NAME} (create one with 't5rt export MODEL --out {d}')"
        )
    from .export_check import confined_path

    confined_path(d, MANIFEST_NAME, MANIFEST_NAME)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ValueError(f"it is larger than {MAX_MANIFEST_BYTES >> 20} MiB")
        doc = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (OSError, ValueError, RecursionError) as e:  # UnicodeDecodeError, JSONDecodeError are ValueErrors
        why = "nested too deeply" if isinstance(e, RecursionError) else e
        raise InvalidExportError(f"{path} is not a valid t5rt manifest: not readable JSON ({why}); "
                                 "re-export the model with 't5rt export'") from None
    m = Manifest.from_json(doc, directory=d, where=str(path))
    if check_files:
        for name in m.files:
            confined_path(d, name, f"files.{name}")
    return m


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()
