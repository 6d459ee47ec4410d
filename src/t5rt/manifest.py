"""manifest.json: the contract between the exporter and every backend (DESIGN.md §3).

The exporter writes it; runtimes read I/O names, dtypes and shapes from it and never
from hard-coded strings. Torch-free: both `t5rt.exporters` and the runtime import it.

Layout (format_version 1)::

    {
      "format": "t5rt-export", "format_version": 1, "exporter_version": "0.1.0",
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
      "graphs": {"encoder": GRAPH, "cross_kv": GRAPH, "decoder_step": GRAPH},
      "roles": {"encoder": {...}, "cross_kv": {...}, "decoder_step": {...}},
      "weights": null | {"file": "decoder_weights.safetensors", "sha256": "...", "format": "safetensors",
                         "dtypes": {name: dtype}, "logit_scale": 1.0}   (the native engine's; t5rt.weights)
    }

    GRAPH = {"file": "encoder.onnx", "sha256": "...", "external_data": null | "encoder.onnx.data",
             "inputs": [TENSOR...], "outputs": [TENSOR...]}
    TENSOR = {"name": "input_ids", "dtype": "int64", "shape": ["batch", "src_len"]}

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

from .errors import NotAnExportError
from .weights import WeightsSpec

FORMAT = "t5rt-export"
FORMAT_VERSION = 1
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

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TensorSpec":
        if d["dtype"] not in DTYPES:
            raise ValueError(f"tensor {d['name']!r} has unknown dtype {d['dtype']!r}")
        return cls(str(d["name"]), str(d["dtype"]), tuple(d["shape"]))


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

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "GraphSpec":
        return cls(
            file=str(d["file"]),
            sha256=str(d["sha256"]),
            inputs=tuple(TensorSpec.from_json(t) for t in d["inputs"]),
            outputs=tuple(TensorSpec.from_json(t) for t in d["outputs"]),
            external_data=d.get("external_data"),
        )


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
        if self.directory is None:
            raise ValueError("manifest was not loaded from a directory")
        return self.directory / self.graphs[graph].file

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
            "graphs": {k: g.to_json() for k, g in self.graphs.items()},
            "roles": self.roles,
            **({"weights": self.weights.to_json()} if self.weights is not None else {}),
        }

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n")
        return path

    @classmethod
    def from_json(cls, d: dict[str, Any], directory: Path | None = None) -> "Manifest":
        if d.get("format") != FORMAT:
            raise ValueError(f"'format' is {d.get('format')!r}, expected {FORMAT!r}")
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"format_version {d.get('format_version')} is not supported by this t5rt "
                f"(reads {FORMAT_VERSION}); re-export the model with this version"
            )
        m = cls(
            format_version=int(d["format_version"]),
            exporter_version=str(d["exporter_version"]),
            source=str(d["source"]),
            source_checksum=str(d["source_checksum"]),
            model_type=str(d["model_type"]),
            config=dict(d["config"]),
            dims=Dims(**d["dims"]),
            precision=str(d["precision"]),
            max_input_len=int(d["max_input_len"]),
            max_output_len=int(d["max_output_len"]),
            cache_update=str(d["cache_update"]),
            opset=int(d["opset"]),
            special_tokens=SpecialTokens(**d["special_tokens"]),
            tokenizer_files=tuple(d.get("tokenizer_files", ())),
            graphs={k: GraphSpec.from_json(g) for k, g in d["graphs"].items()},
            roles={k: dict(v) for k, v in d["roles"].items()},
            weights=WeightsSpec.from_json(d["weights"]) if d.get("weights") else None,
            directory=directory,
        )
        m.validate()
        return m

    def validate(self) -> None:
        """Internal consistency; raises ValueError naming the first problem."""
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} not in {PRECISIONS}")
        if self.cache_update not in CACHE_UPDATES:
            raise ValueError(f"cache_update {self.cache_update!r} not in {CACHE_UPDATES}")
        missing = [g for g in GRAPH_NAMES if g not in self.graphs]
        if missing:
            raise ValueError(f"graphs missing: {', '.join(missing)}")
        for g in GRAPH_NAMES:
            if g not in self.roles:
                raise ValueError(f"roles missing for graph {g!r}")
        step = self.roles["decoder_step"]
        need = ["input_ids", "position", "encoder_attention_mask", "cross_k", "cross_v",
                "self_k", "self_v", "logits"]
        need += (["new_self_k", "new_self_v"] if self.cache_update == "write"
                 else ["present_self_k", "present_self_v"])
        for r in need:
            if r not in step:
                raise ValueError(f"decoder_step role {r!r} missing")
        for r in ("cross_k", "cross_v", "self_k", "self_v"):
            if len(step[r]) != self.dims.num_decoder_layers:
                raise ValueError(f"decoder_step role {r!r} has {len(step[r])} names, "
                                 f"expected num_decoder_layers={self.dims.num_decoder_layers}")


def load_manifest(directory: str | Path, *, check_files: bool = True) -> Manifest:
    """Read DIR/manifest.json; NotAnExportError says what is missing or broken."""
    d = Path(directory)
    if not d.is_dir():
        raise NotAnExportError(f"{d} is not a directory; pass the --out directory of 't5rt export'")
    path = d / MANIFEST_NAME
    if not path.is_file():
        raise NotAnExportError(
            f"{d} is not a t5rt export: it has no {MANIFEST_NAME} (create one with 't5rt export MODEL --out {d}')"
        )
    try:
        m = Manifest.from_json(json.loads(path.read_text()), directory=d)
    except (ValueError, KeyError, TypeError) as e:
        raise NotAnExportError(f"{path} is not a valid t5rt manifest: {e}; re-export the model") from None
    if check_files:
        for name, g in m.graphs.items():
            if not (d / g.file).is_file():
                raise NotAnExportError(f"{d} is an incomplete export: {name} graph {g.file} is missing; re-export")
    return m


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()
