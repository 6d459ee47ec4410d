"""The export's decoder weights file for the native engine: safetensors, read and written with numpy.

Why a file of its own rather than the ONNX initializers of decoder_step.onnx: the graph passes
(fusion, precision casts, folded constants, renamed initializers) change what the graph holds
and how it is named, so reading initializers would tie the native engine to every pass and to
onnx; this file holds Hugging Face's own tensors under Hugging Face's own names, in exactly the
dtype the native engine computes with, plus the relative-position bucket table computed by HF's
own function. The manifest lists it (file, sha256, tensor names): see `WeightsSpec`.

Format: safetensors (8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}}, then the raw little-endian data). bfloat16 is stored and returned as uint16 bits.
Torch-free: the exporter writes it from numpy arrays, the runtime reads it with numpy only.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import NotAnExportError

FILE_NAME = "decoder_weights.safetensors"

# safetensors dtype name <-> numpy storage dtype (bf16 as its uint16 bits)
_TO_NUMPY = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I32": np.int32, "I64": np.int64}
_FROM_NAME = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "int32": "I32", "int64": "I64"}


@dataclass(frozen=True)
class WeightsSpec:
    """manifest["weights"]: the native engine's weights file (see module docstring)."""

    file: str
    sha256: str
    dtypes: dict[str, str]  # tensor name -> "float32" | "float16" | "bfloat16" | "int32"
    logit_scale: float = 1.0  # multiplier of the final hidden state before lm_head (tied T5 v1.0: d_model**-0.5)
    residual_clamp: float = 0.0  # the export clips the residual stream to +-this (fp16); 0: off

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "format": "safetensors", "dtypes": dict(self.dtypes),
                "logit_scale": self.logit_scale, "residual_clamp": self.residual_clamp}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "WeightsSpec":
        if d.get("format", "safetensors") != "safetensors":
            raise ValueError(f"weights format {d.get('format')!r} is not 'safetensors'")
        return cls(file=str(d["file"]), sha256=str(d["sha256"]), dtypes={str(k): str(v) for k, v in d["dtypes"].items()},
                   logit_scale=float(d.get("logit_scale", 1.0)), residual_clamp=float(d.get("residual_clamp", 0.0)))


def write(path: str | Path, tensors: dict[str, tuple[np.ndarray, str]]) -> dict[str, str]:
    """Write {name: (array, dtype name)} as safetensors; bfloat16 arrays are uint16 bits. -> {name: dtype}."""
    header: dict[str, Any] = {}
    blobs = []
    offset = 0
    for name, (arr, dtype) in tensors.items():
        code = _FROM_NAME[dtype]
        a = np.ascontiguousarray(arr, dtype=_TO_NUMPY[code]).astype(np.dtype(_TO_NUMPY[code]).newbyteorder("<"), copy=False)
        raw = a.tobytes()
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    return {name: dtype for name, (_, dtype) in tensors.items()}


def read(path: str | Path) -> dict[str, np.ndarray]:
    """{name: array} from a safetensors file (bf16 as uint16 bits); a malformed file is NotAnExportError."""
    p = Path(path)
    try:
        data = p.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        if n > len(data) - 8:
            raise ValueError(f"header length {n} exceeds the file")
        header = json.loads(data[8:8 + n])
        body = memoryview(data)[8 + n:]
        out = {}
        for name, h in header.items():
            if name == "__metadata__":
                continue
            dt = np.dtype(_TO_NUMPY[h["dtype"]]).newbyteorder("<")
            lo, hi = (int(x) for x in h["data_offsets"])
            shape = tuple(int(s) for s in h["shape"])
            if not 0 <= lo <= hi <= len(body) or hi - lo != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
                raise ValueError(f"tensor {name!r}: offsets {lo}..{hi} do not fit shape {shape} {h['dtype']}")
            out[name] = np.frombuffer(body[lo:hi], dtype=dt).reshape(shape).astype(dt.newbyteorder("="))
        return out
    except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
        raise NotAnExportError(f"{p} is not a readable weights file ({type(e).__name__}: {e}); re-export the model") from None


# -- precision helpers (numpy; shared by the exporter and the native reference) ------------------

_FINITE_MAX = {"float16": 65504.0, "bfloat16": float(np.frombuffer(np.uint32(0x7F7F0000).tobytes(), np.float32)[0])}


def to_storage(values: np.ndarray, dtype: str) -> np.ndarray:
    """fp32 values -> storage of `dtype` (float32 | float16 | bfloat16 as uint16 bits), rounded to
    nearest even and saturated to the finite range, as the exporter's precision pass converts constants."""
    v = np.asarray(values, np.float32)
    if dtype == "float32":
        return v.copy()
    v = np.clip(v, -_FINITE_MAX[dtype], _FINITE_MAX[dtype])
    if dtype == "float16":
        return v.astype(np.float16)
    bits = v.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(v), np.uint16(0x7FC0), rounded).astype(np.uint16)


def from_storage(stored: np.ndarray, dtype: str) -> np.ndarray:
    """Storage of `dtype` -> fp32 values (bf16 uint16 bits widened)."""
    if dtype == "bfloat16":
        return (np.asarray(stored, np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.asarray(stored).astype(np.float32)
