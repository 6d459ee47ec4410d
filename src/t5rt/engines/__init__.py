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

__all__ = ["BACKENDS", "Engine", "open_sessions", "pick_backend"]

ORT_REWRITE_ENV = "T5RT_ORT_REWRITE"  # 0/1: the ORT load-time rewrite when RuntimeOptions leaves it None


BACKENDS = ("auto", "ort", "trt", "native")


def pick_backend(requested: str, device: Any) -> tuple[str, str]:
    """-> (backend, reason). 'auto' on CUDA: TensorRT when it imports, else ORT; on the CPU: ORT.

    The native kernels are chosen only when asked for (backend="native"): on the H100 their step
    measured level with ONNX Runtime's at batch 1 (t5-base bf16 0.87-0.99 ms against 0.97 ms) and
    several times slower at batch 32 (5.2 ms), where the in-flight batcher runs (bench/results/
    h100-gpu-tests-2026-12-07.md). 'auto' picks them once they are measured faster."""
    if requested not in BACKENDS:
        raise InvalidOptionError(f"backend={requested!r} is invalid: use {', '.join(map(repr, BACKENDS))}")
    if requested != "auto":
        return requested, "asked for"
    if not device.is_cuda:
        return "ort", "CPU device (TensorRT and the native kernels need a GPU)"
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
    if backend == "native":
        from .native import NativeSession

        sessions = _ort_encoder_sessions(m, device, options)
        sessions["decoder_step"] = NativeSession(m, device, persistent=getattr(options, "native_persistent", False),
                                                 pdl=getattr(options, "native_pdl", True))
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
    elif backend == "trt":
        from .trt import open_trt_sessions  # noqa: PLC0415 - TensorRT only when asked for

        sessions = open_trt_sessions(m, device, options)
    return backend, reason, sessions


def _ort_encoder_sessions(m: Manifest, device: Any, options: Any) -> dict[str, Any]:
    """encoder + cross_kv on ONNX Runtime: its CUDA EP where installed, else CPU EP behind host copies."""
    from ..runtime.device import Device
    from .ort import OrtSession, _import_ort

    cuda_ep = "CUDAExecutionProvider" in _import_ort().get_available_providers()
    sessions: dict[str, Any] = {}
    for g in ("encoder", "cross_kv"):
        if cuda_ep:
            sessions[g] = OrtSession(m.graph_path(g), m.graphs[g], device, cuda_graph=options.cuda_graphs,
                                     threads=options.threads, tf32=options.tf32, rewrite=_ort_rewrite(options, device))
        else:
            if m.precision == "bf16":
                raise BackendError("backend='native' runs the encoder on ONNX Runtime, which has no CUDA "
                                   "execution provider here and no bf16 CPU kernels: install onnxruntime-gpu "
                                   "('t5rt[ort-gpu]') for bf16 exports")
            from .host_mirror import HostMirrorSession

            cpu = OrtSession(m.graph_path(g), m.graphs[g], Device("cpu"), threads=options.threads,
                             rewrite=_ort_rewrite(options, Device("cpu")))
            sessions[g] = HostMirrorSession(cpu, device)
    return sessions
