"""One load run: materialize + export the model, then per system (one loaded at a time):
warm up, [t5rt-serial: fit the solo latency], and drive every rate until it saturates."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..results import describe_machine
from ..runner import prepare_model
from ..t5rt_system import export_model, exporter_version
from .driver import SoloModel, closed_loop, drive, saturated, summarize
from .http import http_target, overhead
from .options import HTTP, LoadOptions
from .report import summary
from .targets import HFSerialTarget, RuntimeTarget
from .workload import LoadRequest, make_requests, poisson_arrivals

Log = Callable[[str], None]


@dataclass
class Prepared:
    """The model a load run drives: HF weights, the t5rt export, and the request factory."""

    opts: LoadOptions
    device: str
    precision: str
    label: str
    hf_dir: Path
    export_dir: Path
    config: dict[str, Any]

    def requests(self, n: int, seed: int, every_mode: bool = False) -> list[LoadRequest]:
        o = self.opts
        return make_requests(n, src=o.src, new=o.new, mix=o.mix, vocab_size=int(self.config["vocab_size"]),
                             eos_token_id=int(self.config.get("eos_token_id", 1)), seed=seed, every_mode=every_mode)


def prepare(opts: LoadOptions, log: Log = print) -> Prepared:
    """Materialize the weights and export them for t5rt (both cached under opts.cache_dir)."""
    opts.validate()
    m = prepare_model(opts.model, opts.device, opts.precision, opts.cache_dir, log)
    max_in, max_out = max(64, opts.src[1]), max(64, opts.new[1])
    export_dir = export_model(m.hf_dir, m.cache / f"t5rt-{m.precision}-in{max_in}-out{max_out}-exp{exporter_version()}",
                              m.precision, max_in, max_out, log)
    return Prepared(opts, m.device, m.precision, m.source.label, m.hf_dir, export_dir, m.config)


def run_load(opts: LoadOptions, log: Log = print) -> dict[str, Any]:
    p = prepare(opts, log)
    device, precision, hf_dir, export_dir, requests = p.device, p.precision, p.hf_dir, p.export_dir, p.requests

    def make(system: str) -> Any:
        if system == HTTP:
            return http_target(opts, export_dir, device, log)
        if system == "hf":
            return HFSerialTarget(hf_dir, device=device, precision=precision)
        return RuntimeTarget(export_dir, inflight=system == "t5rt", backend=opts.backend, device=device,
                             max_batch=opts.max_batch, inflight_kernels=opts.inflight_kernels,
                             warm_shapes=opts.warm_shapes, **opts.switches)

    rows: list[dict[str, Any]] = []
    outcomes: dict[tuple[str, float], list] = {}  # (system, rate) -> outcomes, to pair t5rt and http
    solo: SoloModel | None = None
    warm_s: dict[str, float] = {}  # Runtime.warmup() seconds per t5rt system
    order = sorted(opts.systems, key=lambda s: s != "t5rt-serial")  # the solo fit comes first
    for system in order:
        log(f"[load] {system}: loading")
        target = make(system)
        warmed = getattr(target, "warmed", None)
        if warmed:
            warm_s[system] = warmed["seconds"]
            log(f"[load] {system}: warmup() made every bucket's shapes in {warmed['seconds']:.1f} s: {warmed}")
        try:
            asyncio.run(closed_loop(target, requests(opts.warmup, opts.seed + 7, every_mode=True)))
            if system == "t5rt-serial":
                calib = asyncio.run(closed_loop(target, requests(opts.calibrate, opts.seed + 11, every_mode=True)))
                solo = SoloModel.fit(calib)
                log(f"[load] solo latency a + b * new_tokens per mode: {solo.coef}")
            for i, rate in enumerate(sorted(opts.rates)):
                arrivals = poisson_arrivals(rate, opts.duration, opts.seed + 1000 + i)
                reqs = requests(len(arrivals), opts.seed + 2000 + i)  # the same requests for every system
                before = target.counters()
                outs, sent, elapsed = asyncio.run(drive(target, reqs, arrivals, opts.drain))
                outcomes[(system, rate)] = outs
                row = summarize(target.name if system != "hf" else system, rate, outs, sent, elapsed,
                                solo if system != "hf" else None, before, target.counters())
                rows.append(row)
                log(f"[load] {system} @ {rate:g} req/s: {row['completed']}/{sent} done, "
                    f"{row['throughput_rps']:.2f} req/s, p99 {row['latency_p99_s']}")
                if saturated(row):
                    log(f"[load] {system} saturated at {rate:g} req/s; higher rates skipped")
                    break
        finally:
            target.close()
    for row in rows:
        if row["system"] == HTTP and ("t5rt", row["offered_rps"]) in outcomes:
            row.update(overhead(outcomes[("t5rt", row["offered_rps"])], outcomes[(HTTP, row["offered_rps"])]))
    return {"machine": describe_machine(device), "model": p.label, "precision": precision,
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
            "solo_model": solo and solo.coef, "warmup_s": warm_s, "rows": rows, "summary": summary(rows)}
