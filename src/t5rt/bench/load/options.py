"""LoadOptions (what a load run is told) and `python -m t5rt.bench --load`'s command line."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from pathlib import Path

from ...errors import InvalidOptionError
from ..options import BACKENDS, DEVICES, PRECISIONS, check_choices, default_cache_dir
from ..presets import PRESETS
from .workload import DEFAULT_MIX, MODES, parse_mix

SYSTEMS = ("t5rt", "t5rt-serial", "hf")
HTTP = "http"  # `t5rt serve` driven over HTTP (--url or --serve): compared with "t5rt" in-process


def runtime_switches(pairs: list[str]) -> dict[str, bool]:
    """`--set OPTION=0|1` pairs of the bench scripts (soak, scheduler profile) -> boolean
    RuntimeOptions fields; ValueError names the pair that is not OPTION=0|1."""
    out = {}
    for kv in pairs:
        key, _, value = kv.partition("=")
        if not key or value not in ("0", "1"):
            raise ValueError(f"--set takes OPTION=0|1, got {kv!r}")
        out[key] = value == "1"
    return out


@dataclass
class LoadOptions:
    model: str | None = None
    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    rates: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    duration: float = 20.0      # seconds of arrivals per rate
    drain: float = 60.0         # seconds to wait for answers after the last arrival
    src: tuple[int, int] = (8, 256)
    new: tuple[int, int] = (16, 128)
    mix: tuple[tuple[str, int], ...] = DEFAULT_MIX
    systems: tuple[str, ...] = SYSTEMS
    calibrate: int = 24         # requests run one at a time to fit the solo latency
    warmup: int = 6
    max_batch: int = 64         # rows per in-flight slot pool
    inflight_kernels: bool = True  # RuntimeOptions.inflight_kernels for both t5rt systems
    warm_shapes: bool = True    # Runtime.warmup() after loading each t5rt system (every bucket's shapes)
    switches: dict[str, bool] = field(default_factory=dict)  # --set: boolean RuntimeOptions of both t5rt systems
    seed: int = 0
    json: Path | None = None
    plot: Path | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)
    url: str | None = None      # drive this `t5rt serve` (serving the bench's export) as system "http"
    serve: int | None = None    # or start `t5rt serve` on the bench's export with this many replicas
    api_key: str | None = None

    def validate(self) -> None:
        def bad(name: str, why: str) -> InvalidOptionError:
            return InvalidOptionError(f"--{name.replace('_', '-')}={getattr(self, name)!r} is invalid: {why}")

        check_choices(self, bad)
        if not self.rates or any(r <= 0 for r in self.rates):
            raise bad("rates", "give a comma-separated list of request rates > 0")
        if self.duration <= 0 or self.drain < 0:
            raise bad("duration", "must be > 0 (and --drain >= 0)")
        for name in ("src", "new"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise bad(name, "give LO,HI with 1 <= LO <= HI")
        unknown = [s for s in self.systems if s not in SYSTEMS + (HTTP,)]
        if unknown or not self.systems:
            raise bad("systems", f"choose from {', '.join(SYSTEMS + (HTTP,))}")
        if (HTTP in self.systems) != (self.url is not None or self.serve is not None):
            raise bad("systems", "the http system goes with --url URL or --serve N (and they add it)")
        if self.url is not None and self.serve is not None:
            raise bad("url", "give --url or --serve, not both")
        if self.serve is not None and self.serve < 1:
            raise bad("serve", "must be a number of replicas >= 1")
        if self.calibrate < 2:
            raise bad("calibrate", "must be >= 2")
        from ...runtime.runner import RuntimeOptions

        # (inflight and warmup are the systems' own: t5rt / t5rt-serial, --warm-shapes)
        flags = {f.name for f in fields(RuntimeOptions) if f.type in (bool, "bool")} - {"inflight", "warmup"}
        if wrong := sorted(set(self.switches) - flags):
            raise InvalidOptionError(f"--set {wrong[0]}=... is invalid: not a boolean RuntimeOptions field "
                                     f"(choose from {', '.join(sorted(flags))})")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def _range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LO,HI") from None
    return lo, hi


def _mix(text: str) -> tuple[tuple[str, int], ...]:
    try:
        return parse_mix(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m t5rt.bench --load",
        description="Open-loop Poisson load of mixed requests at increasing rates: t5rt with in-flight "
                    "batching against the same runtime one request at a time and Hugging Face generate() "
                    "one request at a time. Per rate: throughput, p50/p99 latency and time to first token.")
    p.add_argument("--model", default=None, help=f"preset shape ({', '.join(PRESETS)}), a local dir or a hub id")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="t5rt and HF (auto: bf16 on cuda)")
    p.add_argument("--rates", type=_floats, default=LoadOptions.rates, metavar="1,2,4", help="offered requests/s")
    p.add_argument("--duration", type=float, default=LoadOptions.duration, help="seconds of arrivals per rate")
    p.add_argument("--drain", type=float, default=LoadOptions.drain, help="seconds to wait for the answers")
    p.add_argument("--src", type=_range, default=LoadOptions.src, metavar="LO,HI", help="source tokens")
    p.add_argument("--new", type=_range, default=LoadOptions.new, metavar="LO,HI", help="new tokens (forced)")
    p.add_argument("--mix", type=_mix, default=DEFAULT_MIX, metavar="greedy=5,sample=3,beam4=2",
                   help=f"request modes and weights ({', '.join(MODES)})")
    p.add_argument("--systems", type=lambda t: tuple(s for s in t.split(",") if s), default=None,
                   metavar=",".join(SYSTEMS + (HTTP,)),
                   help=f"default: {','.join(SYSTEMS)}; with --url / --serve: t5rt,{HTTP}")
    p.add_argument("--url", default=None, metavar="http://HOST:PORT",
                   help="also drive this `t5rt serve` (it must serve the bench's export: the log names it); "
                        "the table gets the HTTP path's overhead against in-process t5rt at the same load")
    p.add_argument("--serve", type=int, default=None, metavar="N",
                   help="start `t5rt serve` on the bench's export with N replicas (local Ray) and drive it as --url")
    p.add_argument("--api-key", default=None, help="the server's API key (--url)")
    p.add_argument("--calibrate", type=int, default=LoadOptions.calibrate,
                   help="requests run alone to fit the solo latency (the slowdown column)")
    p.add_argument("--warmup", type=int, default=LoadOptions.warmup, help="untimed requests per system")
    p.add_argument("--max-batch", type=int, default=LoadOptions.max_batch, help="rows per in-flight slot pool")
    p.add_argument("--inflight-kernels", action=argparse.BooleanOptionalAction, default=LoadOptions.inflight_kernels,
                   help="RuntimeOptions.inflight_kernels: pooled rows and one-launch joins (CUDA; on by default)")
    p.add_argument("--warm-shapes", action=argparse.BooleanOptionalAction, default=LoadOptions.warm_shapes,
                   help="Runtime.warmup() after loading each t5rt system, so that no timed request pays a "
                        "first-use capture (on by default; --no-warm-shapes measures that cost)")
    p.add_argument("--set", action="append", default=[], metavar="OPTION=0|1", dest="switches",
                   help="a boolean RuntimeOptions field for both t5rt systems, e.g. --set gather_pools=1 (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, metavar="FILE")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png")
    p.add_argument("--cache-dir", type=Path, default=None)
    return p


def _default_systems(args: argparse.Namespace) -> tuple[str, ...]:
    return ("t5rt", HTTP) if args.url or args.serve else SYSTEMS


def options_from_args(args: argparse.Namespace) -> LoadOptions:
    try:
        switches = runtime_switches(args.switches)
    except ValueError as e:
        raise InvalidOptionError(str(e)) from None
    opts = LoadOptions(model=args.model, backend=args.backend, device=args.device, precision=args.precision,
                       rates=args.rates, duration=args.duration, drain=args.drain, src=args.src, new=args.new,
                       mix=args.mix, systems=args.systems or _default_systems(args), calibrate=args.calibrate,
                       warmup=args.warmup, url=args.url, serve=args.serve, api_key=args.api_key,
                       max_batch=args.max_batch, inflight_kernels=args.inflight_kernels,
                       warm_shapes=args.warm_shapes, switches=switches, seed=args.seed, json=args.json, plot=args.plot,
                       cache_dir=args.cache_dir or default_cache_dir())
    opts.validate()
    return opts
