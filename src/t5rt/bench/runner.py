"""One bench run: build the systems, prime them (memory window), time them round-robin, fill rows.

Phases:
  1. materialize the weights (preset -> random-weight save_pretrained dir, cached);
  2. per system, alone: setup, then one priming run per case; device memory in use is read
     before setup and after each priming run (the system's memory window), and the priming
     outputs are the tokens compared with Hugging Face's;
  3. per case: `warmup` untimed rounds, then `runs` timed rounds, every round visiting every
     system once (round-robin);
  4. rows: medians, p90, tokens/s, speedups against HF eager, agreement, memory.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any, Callable

from ..errors import InvalidOptionError
from .options import BenchOptions
from .peers import CTranslate2, HFEager, OptimumORT
from .presets import materialize, resolve_model
from .results import BenchResult, Row, describe_machine, loadavg
from .systems import RunOutput, System, Workload, agreement, make_workload, one_line
from .t5rt_system import T5rtSystem, exporter_version
from ..runtime.device import usable_cpus
from .timing import Stats, device_memory_used, round_robin

Log = Callable[[str], None]
MB = 1024.0 * 1024.0


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    if importlib.util.find_spec("cupy") is None:
        return "cpu"
    try:
        import cupy

        return "cuda" if cupy.cuda.runtime.getDeviceCount() > 0 else "cpu"
    except Exception:  # noqa: BLE001 - any driver failure means no usable GPU
        return "cpu"


def resolve_precision(precision: str, device: str) -> str:
    if precision != "auto":
        return precision
    return "bf16" if device == "cuda" else "fp32"


def build_systems(opts: BenchOptions, device: str, precision: str, hf_dir: Path, cache: Path,
                  max_input_len: int, max_output_len: int, log: Log) -> list[System]:
    systems: list[System] = []
    if opts.include_t5rt:
        # "-nw": exports with the native engine's decoder weights file
        key = f"t5rt-{precision}-in{max_input_len}-out{max_output_len}-exp{exporter_version()}-nw"
        # on CUDA with backend auto: the ORT engine as "t5rt" and the native kernels as "t5rt-native"
        both = device == "cuda" and opts.backend == "auto"
        for name, backend in ([("t5rt", "ort"), ("t5rt-native", "native")] if both else [("t5rt", opts.backend)]):
            systems.append(T5rtSystem(name=name, precision=precision, device=device, model_dir=hf_dir,
                                      export_dir=cache / key, backend=backend,
                                      max_input_len=max_input_len, max_output_len=max_output_len, log=log))
    if "hf" in opts.peers:
        systems.append(HFEager(name="hf", precision="fp32", device=device, model_dir=hf_dir,
                               note="eager generate()"))
        if precision != "fp32":
            systems.append(HFEager(name="hf", precision=precision, device=device, model_dir=hf_dir,
                                   note="eager generate()"))
    if "hf-compile" in opts.peers:
        systems.append(HFEager(name="hf-compile", precision=precision, device=device, model_dir=hf_dir,
                               compile=True, note="static cache + torch.compile"))
    if "optimum" in opts.peers:
        systems.append(OptimumORT(name="optimum", precision="fp32", device=device, model_dir=hf_dir,
                                  convert_dir=cache / "optimum-onnx-fp32", python=opts.optimum_python,
                                  log_path=cache / "optimum_worker.log", note="ORTModelForSeq2SeqLM"))
    if "ct2" in opts.peers:
        systems.append(CTranslate2(name="ct2", precision=precision, device=device, model_dir=hf_dir,
                                   convert_dir=cache / "ct2", note="ctranslate2.Translator"))
    for s in systems:
        s.threads = opts.threads
    return systems


@dataclasses.dataclass
class _Track:
    """Everything measured for one (system, case)."""

    status: str = "ok"
    reason: str = ""
    seconds: list[float] = dataclasses.field(default_factory=list)
    encode: list[float] = dataclasses.field(default_factory=list)
    step: list[float] = dataclasses.field(default_factory=list)
    host_step: list[float] = dataclasses.field(default_factory=list)
    sequences: list[list[int]] | None = None
    mem_bytes: int | None = None

    def add(self, out: RunOutput) -> None:
        self.seconds.append(out.seconds)
        if out.encode_s is not None:
            self.encode.append(out.encode_s)
        if out.step_s is not None:
            self.step.append(out.step_s)
        if out.host_step_s is not None:
            self.host_step.append(out.host_step_s)


def _label(s: System) -> str:
    return f"{s.name}@{s.precision}"


@dataclasses.dataclass
class Model:
    """The weights a bench run measures, resolved: device, precision, cache folder, HF dir, config."""

    device: str
    precision: str
    source: Any
    cache: Path
    hf_dir: Path
    config: dict[str, Any]


def prepare_model(model: str | None, device: str, precision: str, cache_dir: Path, log: Log = print) -> Model:
    """--model / --device / --precision / --cache-dir -> the materialized weights (cached)."""
    device = resolve_device(device)
    if device == "cuda" and resolve_device("auto") != "cuda":
        raise InvalidOptionError("--device cuda asked, but cupy sees no CUDA device here; "
                                 "use --device cpu or install t5rt[cuda]")
    precision = resolve_precision(precision, device)
    if device == "cpu" and precision == "bf16":
        raise InvalidOptionError("--precision bf16 cannot run on the CPU (ONNX Runtime has no bf16 CPU "
                                 "kernels): use --precision fp32 on the CPU, or --device cuda")
    source = resolve_model(model)
    cache = Path(cache_dir).expanduser() / f"{source.label.replace('/', '--')}-{source.fingerprint()}"
    cache.mkdir(parents=True, exist_ok=True)
    hf_dir = materialize(source, cache / "hf", log)
    return Model(device, precision, source, cache, hf_dir, json.loads((hf_dir / "config.json").read_text()))


def run_bench(opts: BenchOptions, log: Log = print) -> BenchResult:
    opts.validate()
    model = prepare_model(opts.model, opts.device, opts.precision, opts.cache_dir, log)
    device, precision, source, cache, hf_dir = model.device, model.precision, model.source, model.cache, model.hf_dir
    vocab = int(model.config["vocab_size"])
    max_input_len = max(512, opts.src_len)
    max_output_len = max(256, max(opts.new_tokens) + 1)

    uniq = lambda xs: list(dict.fromkeys(xs))  # noqa: E731 - "1,1,8" measures 1 once
    workloads = [make_workload(b, k, opts.src_len, n, vocab, opts.seed)
                 for k in uniq(opts.beams) for b in uniq(opts.batch_sizes) for n in uniq(opts.new_tokens)]
    systems = build_systems(opts, device, precision, hf_dir, cache, max_input_len, max_output_len, log)
    tracks: dict[tuple[str, tuple], _Track] = {}
    alive: list[System] = []
    machine = describe_machine(device)
    result = BenchResult(machine=machine, options=_options_json(opts, device, precision, source.label))

    try:
        for s in systems:  # phase 2: one system at a time (its memory window)
            if _setup_and_prime(s, workloads, device, tracks, log):
                alive.append(s)
                result.systems[_label(s)] = dict(s.extra)
        for w in workloads:  # phase 3
            _time_case(w, alive, tracks, opts.warmup, opts.runs, log)
    finally:
        for s in systems:
            s.close()

    result.rows = _rows(systems, workloads, tracks, precision)
    result.machine["loadavg_end"] = loadavg()
    return result


def _setup_and_prime(s: System, workloads: list[Workload], device: str,
                     tracks: dict[tuple[str, tuple], _Track], log: Log) -> bool:
    """Set `s` up and run each case once (untimed), reading its device memory; False: unavailable."""
    before = device_memory_used(device)
    log(f"[bench] setting up {_label(s)}")
    try:
        s.setup()
    except Exception as e:  # noqa: BLE001 - any failure is reported, never fatal
        reason = one_line(e)
        log(f"[bench] {_label(s)} unavailable: {reason}")
        for w in workloads:
            tracks[(_label(s), w.key)] = _Track(status="unavailable", reason=reason)
        s.close()
        return False
    for w in workloads:
        t = tracks[(_label(s), w.key)] = _Track()
        try:
            t.sequences = s.run(w).sequences
        except Exception as e:  # noqa: BLE001
            t.status, t.reason = "failed", one_line(e)
            log(f"[bench] {_label(s)} failed on {w.key}: {t.reason}")
            continue
        after = device_memory_used(device)
        torch_peak = s.torch_peak_bytes()
        if torch_peak is not None:
            t.mem_bytes = torch_peak
        elif before is not None and after is not None:
            t.mem_bytes = max(after - before, 0)
    s.release_caches()
    return True


def _time_case(w: Workload, systems: list[System], tracks: dict[tuple[str, tuple], _Track],
               warmup: int, runs: int, log: Log) -> None:
    """`warmup` untimed then `runs` timed round-robin rounds of case `w` over the systems."""
    by_label = {_label(s): s for s in systems if tracks[(_label(s), w.key)].status == "ok"}
    log(f"[bench] batch {w.batch} beams {w.beams} new {w.new_tokens}: "
        f"{warmup}+{runs} rounds of {', '.join(by_label)}")

    def step(name: str, i: int) -> bool:
        t = tracks[(name, w.key)]
        try:
            out = by_label[name].run(w)
        except Exception as e:  # noqa: BLE001
            t.status, t.reason = "failed", one_line(e)
            log(f"[bench] {name} failed on {w.key}: {t.reason}")
            return False
        if i >= warmup:
            t.add(out)
        return True

    round_robin(list(by_label), warmup + runs, step)


def _rows(systems: list[System], workloads: list[Workload], tracks: dict, precision: str) -> list[Row]:
    rows: list[Row] = []
    for w in workloads:
        hf32 = tracks.get(("hf@fp32", w.key))
        hf_same = tracks.get((f"hf@{precision}", w.key))
        base32 = Stats.of(hf32.seconds).p50 if hf32 and hf32.status == "ok" and hf32.seconds else None
        base_same = Stats.of(hf_same.seconds).p50 if hf_same and hf_same.status == "ok" and hf_same.seconds else None
        ref = hf_same.sequences if hf_same and hf_same.status == "ok" else None
        for s in systems:
            t = tracks[(_label(s), w.key)]
            row = Row(system=s.name, precision=s.precision, device=s.device, batch=w.batch,
                      beams=w.beams, src_len=w.src_len, new_tokens=w.new_tokens, status=t.status,
                      reason=t.reason, note=s.note)
            if t.status == "ok" and t.seconds:
                st = Stats.of(t.seconds)
                row.runs = st.n
                row.p50_ms, row.p90_ms, row.mean_ms = st.p50 * 1e3, st.p90 * 1e3, st.mean * 1e3
                row.tokens_per_s = w.batch * w.new_tokens / st.p50
                row.encode_ms = Stats.of(t.encode).p50 * 1e3 if t.encode else None
                row.step_ms = Stats.of(t.step).p50 * 1e3 if t.step else None
                row.host_step_ms = Stats.of(t.host_step).p50 * 1e3 if t.host_step else None
                row.speedup_vs_hf_fp32 = base32 / st.p50 if base32 else None
                same = base_same if s.precision == precision else (base32 if s.precision == "fp32" else None)
                row.speedup_vs_hf_same = same / st.p50 if same else None
                if ref is not None and t.sequences is not None and s.precision == precision:
                    row.agreement = agreement(ref, t.sequences)
                elif hf32 and hf32.sequences is not None and t.sequences is not None and s.precision == "fp32":
                    row.agreement = agreement(hf32.sequences, t.sequences)
                row.peak_mem_mb = t.mem_bytes / MB if t.mem_bytes is not None else None
            rows.append(row)
    return rows


def _options_json(opts: BenchOptions, device: str, precision: str, label: str) -> dict[str, Any]:
    d = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(opts).items()}
    d.update(device_resolved=device, precision_resolved=precision, model_label=label,
             threads_resolved=opts.threads or (usable_cpus() if device == "cpu" else None))
    return d
