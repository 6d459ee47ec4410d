"""Inference backends behind one Engine protocol (ONNX Runtime, TensorRT).

`open_sessions` picks the backend ("auto": TensorRT when it imports and a GPU is present, else
ONNX Runtime) and opens one session per graph of an export; a session makes one Engine (one set
of bound buffers) per bucket.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import BackendError, InvalidOptionError
from ..manifest import GRAPH_NAMES, Manifest
from .base import Engine

__all__ = ["Engine", "open_sessions", "pick_backend"]

ORT_REWRITE_ENV = "T5RT_ORT_REWRITE"  # 0/1: the ORT load-time rewrite when RuntimeOptions leaves it None


def pick_backend(requested: str, device: Any) -> tuple[str, str]:
    """-> (backend, reason). 'auto': TensorRT when it imports and a GPU is present, else ORT."""
    if requested not in ("auto", "ort", "trt"):
        raise InvalidOptionError(f"backend={requested!r} is invalid: use 'auto', 'ort' or 'trt'")
    if requested != "auto":
        return requested, "asked for"
    if not device.is_cuda:
        return "ort", "CPU device (TensorRT needs a GPU)"
    from . import trt_compat  # imports TensorRT lazily; rejects stub-only installs and unusable GPUs

    return trt_compat.pick_backend("cuda")


def _ort_rewrite(options: Any, device: Any) -> bool:
    """RuntimeOptions.ort_rewrite; None -> $T5RT_ORT_REWRITE (0/1) if set, else on."""
    choice = getattr(options, "ort_rewrite", None)
    if choice is None:
        env = os.environ.get(ORT_REWRITE_ENV, "").strip().lower()
        return env not in ("0", "false", "no", "off")
    return bool(choice)


def open_sessions(m: Manifest, requested: str, device: Any, options: Any) -> tuple[str, str, dict[str, Any]]:
    backend, reason = pick_backend(requested, device)
    sessions: dict[str, Any] = {}
    if backend == "ort" and not device.is_cuda and m.precision == "bf16":
        raise BackendError(f"{m.directory} is a bf16 export, which ONNX Runtime cannot run on the CPU (it has "
                           "no bf16 CPU kernels): load it with device='cuda', or re-export with "
                           "--precision fp32 (or fp16) for the CPU")
    if backend == "ort":
        from .ort import OrtSession

        for g in GRAPH_NAMES:
            sessions[g] = OrtSession(
                m.graph_path(g), m.graphs[g], device,
                cuda_graph=options.cuda_graphs,  # one ORT CUDA graph per bucket, every graph
                threads=options.threads,
                spin=options.cpu_spin,
                tf32=options.tf32,
                rewrite=_ort_rewrite(options, device),  # Add + RMSNorm -> one ORT kernel
            )
    else:
        from .trt import open_trt_sessions  # noqa: PLC0415 - TensorRT only when asked for

        sessions = open_trt_sessions(m, device, options)
    return backend, reason, sessions
