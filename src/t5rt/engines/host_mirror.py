"""An ONNX Runtime CPU session serving GPU buffers: host copies in, run on the CPU, copies back.

For the once-per-request graphs (encoder, cross K/V) of backend="native" where ONNX Runtime has
no CUDA execution provider: the runtime binds cupy buffers as usual; run() copies the inputs to
host mirrors, runs the CPU session and uploads the outputs (it synchronises: not for the step).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..runtime.device import Device


class HostMirrorSession:
    def __init__(self, cpu_session: Any, device: Device):
        self.cpu = cpu_session
        self.spec = cpu_session.spec
        self.device = device

    def engine(self) -> "HostMirrorEngine":
        return HostMirrorEngine(self)


class HostMirrorEngine:
    backend = "ort"

    def __init__(self, session: HostMirrorSession):
        self._s = session
        self.spec = session.spec
        self.device = "cuda"
        self._cpu = session.cpu.engine()
        self._inputs = {t.name for t in self.spec.inputs}
        self._dev: dict[str, Any] = {}
        self._host: dict[str, np.ndarray] = {}

    @property
    def aliased_outputs(self) -> dict[str, str]:
        return {}

    def bind(self, name: str, array: Any) -> None:
        host = np.empty(array.shape, dtype=array.dtype)
        self._cpu.bind(name, host)
        self._dev[name], self._host[name] = array, host

    def run(self) -> None:
        dev = self._s.device
        with dev.use():
            for name in self._inputs & set(self._dev):
                self._dev[name].get(stream=dev.stream, out=self._host[name])
            dev.synchronize()
            self._cpu.run()
            for name in set(self._dev) - self._inputs:
                self._dev[name].set(self._host[name], stream=dev.stream)
