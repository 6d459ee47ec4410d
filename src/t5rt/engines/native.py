"""backend="native": t5rt's own CUDA kernels run the decoder step (DESIGN.md §9, issue 13).

The decoder step is one kernel per phase, with programmatic dependent launch on sm_90+ (or, with
RuntimeOptions.native_persistent, one persistent kernel; kernels/native_decoder.cu through
t5rt.kernels.native) over the weights the exporter wrote to decoder_weights.safetensors (listed
in the manifest with its sha256; read torch-free with numpy). The engine takes the same named
buffers as the ONNX decoder_step graph (Engine protocol), so the runner, the CUDA graphs and the
decoding code work unchanged; it writes the new K/V rows into the caches itself (`writes_cache`),
so the runner skips its cache-write kernel. The encoder and cross K/V graphs stay on ONNX Runtime
(once per request): its CUDA EP where installed, else its CPU EP behind host copies
(engines/host_mirror.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import BackendError, NotAnExportError
from ..manifest import Manifest
from ..weights import read as read_weights

log = logging.getLogger("t5rt.native")


def unsupported_reason(m: Manifest) -> str | None:
    """Why backend="native" cannot run this export (cheap: no weights read), or None."""
    if m.weights is None:
        return "the export has no decoder_weights.safetensors (re-export with this t5rt)"
    from ..kernels.native import activation

    try:
        activation(m.config)
    except Exception as e:  # noqa: BLE001 - InvalidInputError names the activation
        return str(e)
    if m.dims.d_kv > 512:
        return f"d_kv={m.dims.d_kv} > 512"
    return None


def weights_path(m: Manifest) -> Path:
    """The weights file, confined to the export directory. Its sha256 and size are in the
    manifest's "files", which load() verifies with every other file (export_check.py)."""
    if m.weights is None or m.directory is None:
        raise NotAnExportError("the export has no native decoder weights; re-export it with this t5rt")
    name = m.weights.file
    if Path(name).is_absolute() or Path(name).name != name:
        raise NotAnExportError(f"manifest weights file {name!r} must be a plain file name inside the export")
    path = Path(m.directory) / name
    if not path.is_file():
        raise NotAnExportError(f"{path} is missing; re-export the model")
    return path


def load_model(m: Manifest) -> Any:
    """The export's NativeModel (host numpy arrays), verified."""
    from ..kernels.native import NativeModel

    arrays = read_weights(weights_path(m))
    for name, dtype in m.weights.dtypes.items():
        if name not in arrays:
            raise NotAnExportError(f"weights file lacks {name!r} listed in the manifest; re-export")
    clamp = m.weights.residual_clamp
    return NativeModel.from_weights(arrays, m.config, m.act_dtype, m.weights.logit_scale, clamp)


class NativeSession:
    """The decoder step of one export on the GPU; makes one NativeEngine per bucket."""

    def __init__(self, m: Manifest, device: Any, persistent: bool = False, launcher: Any = None,
                 pdl: bool = True):
        """launcher: None (the CUDA kernels) or t5rt.kernels.host.HostKernels (CPU tests: the same
        kernels built as host C++ over numpy buffers, one launch per phase). pdl: the per-phase
        launches (persistent False) use programmatic dependent launch."""
        from ..kernels import load as load_kernels
        from ..kernels.native import DeviceModel, unsupported_reason as kernel_reason

        if not device.is_cuda and launcher is None:
            raise BackendError("backend='native' runs on CUDA only; use backend='ort' on the CPU")
        if why := unsupported_reason(m):
            raise BackendError(f"backend='native' cannot run this export: {why}")
        self.manifest = m
        self.spec = m.graphs["decoder_step"]
        self.device = device
        self.persistent = persistent and launcher is None  # the host build has no grid barrier
        model = load_model(m)
        if why := kernel_reason(model):
            raise BackendError(f"backend='native' cannot run this export: {why}")
        if launcher is None:
            load_kernels()  # compile / load now, not inside the first step
        with device.use():
            self.model = DeviceModel(model, launcher)
        self.pdl = pdl and self.model.pdl_capable
        log.info("native: %d layers, %.1f MB of weights on the GPU", len(model.layers), self.model.nbytes() / 1e6)

    def engine(self) -> "NativeEngine":
        return NativeEngine(self)


class NativeEngine:
    """The buffers of one bucket bound by the manifest's names (Engine protocol)."""

    backend = "native"
    writes_cache = True  # the step writes the new K/V rows into self_k / self_v at `position`
    capturable = True    # run() only launches kernels (no allocation after the first run, no sync)

    def __init__(self, session: NativeSession):
        self._s = session
        self.spec = session.spec
        self.device = session.device.name
        roles = session.manifest.roles["decoder_step"]
        self._role_of: dict[str, tuple[str, int]] = {}
        for role, names in roles.items():
            if isinstance(names, list):
                for i, name in enumerate(names):
                    self._role_of[name] = (role, i)
            else:
                self._role_of[names] = (role, -1)
        self._bound: dict[tuple[str, int], Any] = {}
        self._table: Any = None

    @property
    def aliased_outputs(self) -> dict[str, str]:
        return {}

    def bind(self, name: str, array: Any) -> None:
        if name not in self._role_of:
            raise KeyError(f"{self.spec.file} has no tensor {name!r}")
        self._bound[self._role_of[name]] = array
        self._table = None  # rebuilt on the next run

    def _per_layer(self, role: str) -> list[Any]:
        n = self._s.manifest.dims.num_decoder_layers
        return [self._bound.get((role, i)) for i in range(n)]

    def table(self) -> Any:
        """The bucket's StepTable (built on first use after binding)."""
        if self._table is None:
            from ..kernels.native import StepBuffers, StepTable

            need = ["input_ids", "position", "encoder_attention_mask", "logits"]
            missing = [r for r in need if (r, -1) not in self._bound]
            missing += [r for r in ("cross_k", "cross_v", "self_k", "self_v") if _unbound(self._per_layer(r))]
            if missing:
                raise BackendError(f"native decoder step: unbound tensors for {missing}")
            new_k, new_v = self._per_layer("new_self_k"), self._per_layer("new_self_v")
            bufs = StepBuffers(
                input_ids=self._bound[("input_ids", -1)], position=self._bound[("position", -1)],
                encoder_attention_mask=self._bound[("encoder_attention_mask", -1)],
                cross_k=self._per_layer("cross_k"), cross_v=self._per_layer("cross_v"),
                self_k=self._per_layer("self_k"), self_v=self._per_layer("self_v"),
                logits=self._bound[("logits", -1)],
                new_k=None if _unbound(new_k) else new_k, new_v=None if _unbound(new_v) else new_v)
            with self._s.device.use():
                self._table = StepTable(self._s.model, bufs)
        return self._table

    def run(self) -> None:
        table = self.table()
        with self._s.device.use():
            if self._s.persistent and table.coresident:
                table.launch()
            else:
                table.launch_phases(pdl=self._s.pdl)


def _unbound(arrays: list[Any]) -> bool:
    return any(a is None for a in arrays)  # (`None in arrays` would compare arrays elementwise)
