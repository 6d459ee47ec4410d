"""What a bench run found: one Row per (system, case), plus the machine and the options."""

from __future__ import annotations

import dataclasses
import os
import platform
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    system: str  # "t5rt", "hf", "hf-compile", "optimum", "ct2"
    precision: str
    device: str
    batch: int
    beams: int
    src_len: int
    new_tokens: int
    status: str = "ok"  # "ok" | "unavailable" | "failed"
    reason: str = ""  # why not ok (one line)
    runs: int = 0
    encode_ms: float | None = None  # median encoder latency (HF: encoder called alone)
    step_ms: float | None = None  # median decoder-step latency (HF: derived, see README)
    host_step_ms: float | None = None  # t5rt: host time to issue one step (JSON/CSV only)
    p50_ms: float | None = None  # full generate() latency
    p90_ms: float | None = None
    mean_ms: float | None = None
    tokens_per_s: float | None = None  # batch * new_tokens / p50
    speedup_vs_hf_fp32: float | None = None  # HF eager fp32 p50 / this p50
    speedup_vs_hf_same: float | None = None  # HF eager (this precision) p50 / this p50
    agreement: float | None = None  # fraction of tokens equal to HF eager's (same precision)
    peak_mem_mb: float | None = None  # device memory, see README "Memory"
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.system}@{self.precision}"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class BenchResult:
    machine: dict[str, Any]
    options: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    systems: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> versions etc.

    def to_json(self) -> dict[str, Any]:
        return {"machine": self.machine, "options": self.options, "systems": self.systems,
                "rows": [r.to_json() for r in self.rows]}


def describe_machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count(), "cpu": _cpu_name(), "device": device,
                            "loadavg_start": loadavg()}
    if device == "cuda":
        try:
            import cupy

            props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
            info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        except Exception as e:  # noqa: BLE001 - description only
            info["gpu"] = f"unknown ({type(e).__name__})"
    return info


def loadavg() -> float | None:
    """1-minute load average: on a shared machine, how many other runnable processes competed."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
