"""`--check`: what makes a bench run a failed run (CI runs the README's main job with it).

A peer whose packages are installed must run (an `unavailable` row then means the bench is
broken, e.g. an import shadowed by the project tree), and every fp32 system must reproduce
Hugging Face's tokens exactly (agreement 1.000). A peer that is simply not installed is fine.
"""

from __future__ import annotations

import importlib.util

from .options import BenchOptions
from .results import BenchResult

# bench system -> the packages it needs (all importable: the system must run)
SYSTEM_PACKAGES: dict[str, tuple[str, ...]] = {
    "t5rt": (),
    "hf": ("torch", "transformers"),
    "hf-compile": ("torch", "transformers"),
    "ct2": ("ctranslate2",),
    "optimum": ("optimum.onnxruntime",),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing
        return False


def check_problems(result: BenchResult, opts: BenchOptions) -> list[str]:
    """One line per reason this run must fail; empty when it passes."""
    problems = []
    for row in result.rows:
        needs = SYSTEM_PACKAGES.get(row.system, ())
        installed = all(_installed(m) for m in needs) or (row.system == "optimum" and bool(opts.optimum_python))
        where = f"{row.label} bs {row.batch} beams {row.beams} new {row.new_tokens}"
        if row.status != "ok" and installed:
            problems.append(f"{where}: {row.status} although its packages are installed: {row.reason}")
        if row.status == "ok" and row.precision == "fp32" and row.agreement is not None and row.agreement < 1.0:
            problems.append(f"{where}: agreement with Hugging Face fp32 is {row.agreement:.3f}, not 1.000")
    if not any(r.system == "hf" and r.status == "ok" for r in result.rows) and "hf" in opts.peers:
        problems.append("no Hugging Face eager row: nothing was compared")
    return problems
