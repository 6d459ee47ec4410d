"""ONNX Runtime backend: one session per graph, one IO binding per bucket (Engine protocol).

CPU: CPUExecutionProvider, buffers are numpy arrays bound by address (no copies).
CUDA: CUDAExecutionProvider on the runtime's own stream (`user_compute_stream`), buffers are cupy
arrays bound by device address, no host synchronisation after a run, and optionally ONNX Runtime's
own CUDA graph (`enable_cuda_graph`), one graph per bucket (`gpu_graph_id`).
With `rewrite=True` (RuntimeOptions.ort_rewrite) the graph is first rewritten in memory by
ort_rewrite.py (fp32: residual Add + RMSNorm -> com.microsoft.SkipSimplifiedLayerNormalization,
exact; bf16 on CUDA: each fp32 norm island -> one all-bf16 SimplifiedLayerNormalization); the
export on disk is never changed, and a rewritten graph ORT refuses is loaded unchanged instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import BackendError, MissingDependencyError
from ..manifest import GraphSpec
from ..runtime.device import Device, data_ptr, onnx_elem_type, storage_dtype, usable_cpus

log = logging.getLogger("t5rt.ort")


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("the ONNX Runtime backend", "ort", "onnxruntime") from None
    return onnxruntime


class OrtSession:
    """An ONNX Runtime InferenceSession for one graph of an export. Makes per-bucket engines."""

    def __init__(self, path: Path, spec: GraphSpec, device: Device, *, cuda_graph: bool = False,
                 threads: int | None = None, optimization: str = "all", tf32: bool = False,
                 rewrite: bool = False, spin: bool = False):
        ort = _import_ort()
        self.spec = spec
        self.device = device
        self.cuda_graph = cuda_graph and device.is_cuda
        so = ort.SessionOptions()
        so.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[optimization]
        so.log_severity_level = 3
        if not device.is_cuda:
            # One intra-op thread per core this process may use (not the host's count), and no
            # spinning: ORT's spinning pool burns the cores it waits on, which on a small or busy
            # machine takes them from the very work it waits for (2 cores under load: 1.7x slower).
            so.intra_op_num_threads = threads or usable_cpus()
            so.inter_op_num_threads = 1
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        elif threads:
            so.intra_op_num_threads = threads
        if device.is_cuda:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendError(
                    "ONNX Runtime here has no CUDAExecutionProvider (onnxruntime CPU build); "
                    "install onnxruntime-gpu ('t5rt[ort-gpu]') or use device='cpu'"
                )
            import cupy

            opts = {
                "device_id": str(cupy.cuda.Device().id),
                "user_compute_stream": str(device.stream_ptr),
                "has_user_compute_stream": "1",
                "cudnn_conv_algo_search": "DEFAULT",
                "do_copy_in_default_stream": "1",
                # fp32 graphs are the parity reference: no TF32 unless asked for
                "use_tf32": "1" if tf32 else "0",
            }
            if self.cuda_graph:
                opts["enable_cuda_graph"] = "1"
            providers: list[Any] = [("CUDAExecutionProvider", opts)]
        else:
            providers = ["CPUExecutionProvider"]
        model: str | bytes = str(path)
        self.rewrite_note = "off"
        if rewrite:
            from .ort_rewrite import rewrite_model_file

            data, self.rewrite_note = rewrite_model_file(path, cuda=device.is_cuda)
            log.info("ort_rewrite %s: %s", path.name, self.rewrite_note)
            if data is not None:
                model = data
        disabled = disabled_optimizers(io_dtypes(spec), device.is_cuda)

        def open_session(m: str | bytes) -> Any:
            return ort.InferenceSession(m, sess_options=so, providers=providers, disabled_optimizers=disabled)

        try:
            try:
                self.session = open_session(model)
            except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
                # only a graph ORT cannot place or build is blamed on the rewrite (not e.g. OOM)
                if not isinstance(model, bytes) or type(e).__name__ not in _GRAPH_ERRORS:
                    raise
                # a speed rewrite must never stop a load: fall back to the export as it is
                log.warning("ort_rewrite %s: ONNX Runtime refused the rewritten graph (%s); "
                            "loading it unchanged", path.name, e)
                self.rewrite_note = f"refused by ONNX Runtime ({type(e).__name__}); loaded unchanged"
                self.session = open_session(str(path))
        except Exception as e:  # noqa: BLE001
            raise BackendError(f"ONNX Runtime could not load {path.name}: {e}") from None
        self._ort = ort
        self._next_graph_id = 0

    def engine(self) -> "OrtEngine":
        gid = None
        if self.cuda_graph:
            gid = self._next_graph_id
            self._next_graph_id += 1
        return OrtEngine(self, gid)


# ORT's exception classes for "this graph cannot be loaded" (onnxruntime_pybind11_state)
_GRAPH_ERRORS = {"Fail", "NotImplemented", "InvalidGraph", "InvalidArgument"}


def io_dtypes(spec: GraphSpec) -> set[str]:
    """The dtypes of a graph's inputs and outputs (what `disabled_optimizers` decides on)."""
    return {t.dtype for t in spec.inputs + spec.outputs}


def disabled_optimizers(io_dtypes: Iterable[str], cuda: bool) -> list[str]:
    """ORT graph optimizers a t5rt graph must run without.

    On CUDA, ORT folds a bf16 graph's fp32 RMSNorm island (Cast -> Pow -> ... -> Mul(weight))
    into SimplifiedLayerNormalization with mixed bf16/fp32 types, for which ORT 1.31's CUDA EP has
    no kernel: the session would fail to load (seen on the H100). The unfused subgraph is exact.
    """
    return ["SimplifiedLayerNormFusion"] if cuda and "bfloat16" in set(io_dtypes) else []


class OrtEngine:
    """One IO binding of an OrtSession: the buffers of one bucket (Engine protocol)."""

    backend = "ort"

    def __init__(self, session: OrtSession, graph_id: int | None):
        self._s = session
        self.spec = session.spec
        self.device = session.device.name
        self._binding = session.session.io_binding()
        self._inputs = {t.name: t for t in self.spec.inputs}
        self._outputs = {t.name: t for t in self.spec.outputs}
        self._bound: dict[str, Any] = {}
        self._run_options = session._ort.RunOptions()
        if session.device.is_cuda:
            # The runtime synchronises when it needs results; ORT must not block the host per run.
            self._run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        self.graph_id = graph_id
        if graph_id is not None:
            self._run_options.add_run_config_entry("gpu_graph_id", str(graph_id))
        self._dev_type = "cuda" if session.device.is_cuda else "cpu"
        self._dev_id = 0
        if session.device.is_cuda:
            import cupy

            self._dev_id = cupy.cuda.Device().id

    @property
    def aliased_outputs(self) -> dict[str, str]:
        return {}

    def bind(self, name: str, array: Any) -> None:
        if name in self._inputs:
            spec = self._inputs[name]
            fn = self._binding.bind_input
        elif name in self._outputs:
            spec = self._outputs[name]
            fn = self._binding.bind_output
        else:
            raise KeyError(f"{self.spec.file} has no tensor {name!r}")
        if not array.flags.c_contiguous:
            raise ValueError(f"buffer for {name!r} must be C-contiguous")
        # ORT reads and writes the buffer as the dtype and shape given here: a mismatch with the
        # array (a manifest that lies, say) would corrupt memory, so it is refused (DESIGN.md §11)
        if array.dtype != storage_dtype(spec.dtype) or array.ndim != len(spec.shape) or any(
                isinstance(d, int) and d != n for d, n in zip(spec.shape, array.shape)):
            raise BackendError(f"{self.spec.file}: buffer for {name!r} is {array.dtype} {list(array.shape)}, "
                               f"but the graph's tensor is {spec.dtype} {list(spec.shape)}")
        fn(name, self._dev_type, self._dev_id, onnx_elem_type(spec.dtype), list(array.shape), data_ptr(array))
        self._bound[name] = array  # keep the buffer alive as long as it is bound

    def run(self) -> None:
        missing = [n for n in list(self._inputs) + list(self._outputs) if n not in self._bound]
        if missing:
            raise BackendError(f"{self.spec.file}: unbound tensors {missing}")
        try:
            self._s.session.run_with_iobinding(self._binding, self._run_options)
        except Exception as e:  # noqa: BLE001
            raise BackendError(f"ONNX Runtime failed running {self.spec.file}: {e}") from None
