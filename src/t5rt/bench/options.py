"""BenchOptions (everything a bench run is told) and the command line that fills it."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InvalidOptionError
from .presets import PRESETS

PEERS = ("hf", "hf-compile", "optimum", "ct2")
DEFAULT_PEERS = PEERS
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "ort", "trt", "native")
CACHE_ENV = "T5RT_BENCH_CACHE"


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "t5rt" / "bench"


@dataclass
class BenchOptions:
    model: str | None = None  # preset name, local dir or hub id; None: t5-small preset
    backend: str = "auto"
    device: str = "auto"  # auto: cuda when cupy sees a GPU, else cpu
    precision: str = "auto"  # auto: bf16 on cuda, fp32 on cpu
    batch_sizes: tuple[int, ...] = (1,)
    beams: tuple[int, ...] = (1,)
    src_len: int = 32
    new_tokens: tuple[int, ...] = (64,)
    runs: int = 10
    warmup: int = 2
    peers: tuple[str, ...] = DEFAULT_PEERS
    include_t5rt: bool = True
    json: Path | None = None
    csv: Path | None = None
    plot: Path | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)
    optimum_python: str = ""
    seed: int = 0
    threads: int | None = None  # CPU threads of every system (None: the cores this process may use)
    check: bool = False  # exit 1 when an installed peer is unavailable or fp32 agreement < 1 (bench/check.py)

    def validate(self) -> None:
        def bad(name: str, why: str) -> InvalidOptionError:
            return InvalidOptionError(f"--{name.replace('_', '-')}={getattr(self, name)!r} is invalid: {why}")

        check_choices(self, bad)
        for name in ("batch_sizes", "beams", "new_tokens"):
            v = getattr(self, name)
            if not v or any(x < 1 for x in v):
                raise bad(name, "give a comma-separated list of integers >= 1")
        if self.src_len < 1:
            raise bad("src_len", "must be >= 1")
        if self.runs < 1:
            raise bad("runs", "must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise bad("threads", "must be >= 1 (leave it out for the cores this process may use)")
        if self.warmup < 0:
            raise bad("warmup", "must be >= 0")
        unknown = [p for p in self.peers if p not in PEERS]
        if unknown:
            raise bad("peers", f"unknown {', '.join(unknown)}; choose from {', '.join(PEERS)} or 'none'")


def check_choices(opts: Any, bad: Callable[[str, str], Exception]) -> None:
    """--device / --precision / --backend of any bench's options must be known values."""
    for name, allowed in (("device", DEVICES), ("precision", PRECISIONS), ("backend", BACKENDS)):
        if getattr(opts, name) not in allowed:
            raise bad(name, f"use one of {', '.join(allowed)}")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def _peer_list(text: str) -> tuple[str, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    return tuple(p.strip() for p in text.split(",") if p.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m t5rt.bench",
        description="t5rt against Hugging Face generate() and other runtimes: same weights, same "
                    "inputs, forced output length. With no arguments: a random-weight t5-small "
                    "on the GPU if there is one, else the CPU.")
    p.add_argument("--model", default=None,
                   help=f"preset shape ({', '.join(PRESETS)}; random weights), a local "
                        "save_pretrained dir, or a hub id (default: t5-small)")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="t5rt engine backend")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto: bf16 on cuda, fp32 on cpu; HF eager also runs in fp32 as the baseline")
    p.add_argument("--batch-sizes", type=_int_list, default=(1,), metavar="1,8,32")
    p.add_argument("--beams", type=_int_list, default=(1,), metavar="1,4")
    p.add_argument("--src-len", type=int, default=32, help="source tokens (random ids)")
    p.add_argument("--new-tokens", type=_int_list, default=(64,), metavar="64",
                   help="generated tokens, forced (min_new_tokens = max_new_tokens); a list "
                        "draws the latency-vs-new-tokens curve")
    p.add_argument("--runs", type=int, default=10, help="timed runs per system and case")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before them")
    p.add_argument("--peers", type=_peer_list, default=DEFAULT_PEERS, metavar="hf,hf-compile,optimum,ct2",
                   help="peers to run beside t5rt ('none' for t5rt alone)")
    p.add_argument("--no-t5rt", dest="include_t5rt", action="store_false",
                   help="leave t5rt out (peers only)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE")
    p.add_argument("--csv", type=Path, default=None, metavar="FILE")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                   help="latency against new tokens and against batch size (needs matplotlib)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help=f"models and exports are kept here (default ${CACHE_ENV} or ~/.cache/t5rt/bench)")
    p.add_argument("--optimum-python", default="", metavar="PYTHON",
                   help="interpreter with optimum-onnx installed (it pins transformers<4.58); "
                        "default $T5RT_BENCH_OPTIMUM_PYTHON or this one")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input ids")
    p.add_argument("--check", action="store_true",
                   help="exit 1 when a peer whose packages are installed is unavailable, or an fp32 "
                        "system's tokens differ from Hugging Face's (what CI runs)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU: threads of every system (t5rt's ONNX Runtime, torch, CTranslate2); "
                        "default: the cores this process may use (affinity and cgroup quota)")
    return p


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    opts = BenchOptions(
        model=args.model, backend=args.backend, device=args.device, precision=args.precision,
        batch_sizes=args.batch_sizes, beams=args.beams, src_len=args.src_len,
        new_tokens=args.new_tokens, runs=args.runs, warmup=args.warmup, peers=args.peers,
        include_t5rt=args.include_t5rt, json=args.json, csv=args.csv, plot=args.plot,
        cache_dir=args.cache_dir or default_cache_dir(), optimum_python=args.optimum_python,
        seed=args.seed, threads=args.threads, check=args.check)
    opts.validate()
    return opts
