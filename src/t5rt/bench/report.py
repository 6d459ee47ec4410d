"""Results out: the console table, JSON, CSV and the latency plots."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

from .results import BenchResult, Row

# (header, Row attribute, format) in table order
COLUMNS: list[tuple[str, str, str]] = [
    ("system", "system", "{}"),
    ("prec", "precision", "{}"),
    ("bs", "batch", "{}"),
    ("beams", "beams", "{}"),
    ("new", "new_tokens", "{}"),
    ("encoder ms", "encode_ms", "{:.3f}"),
    ("step ms", "step_ms", "{:.3f}"),
    ("p50 ms", "p50_ms", "{:.2f}"),
    ("p90 ms", "p90_ms", "{:.2f}"),
    ("tok/s", "tokens_per_s", "{:.0f}"),
    ("speedup", "speedup_vs_hf_fp32", "{:.2f}x"),
    ("vs HF same prec", "speedup_vs_hf_same", "{:.2f}x"),
    ("agree", "agreement", "{:.3f}"),
    ("mem MB", "peak_mem_mb", "{:.0f}"),
    ("note", "note", "{}"),
]


def cell(row: Row, attr: str, fmt: str) -> str:
    v = getattr(row, attr)
    if attr == "note" and row.status != "ok":
        return f"{row.status}: {row.reason}"
    if v is None or v == "":
        return "-"
    return fmt.format(v)


def format_table(result: BenchResult) -> str:
    """Markdown-compatible table (pipes), one line per row; unavailable systems give their reason."""
    header = [c[0] for c in COLUMNS]
    body = [[cell(r, attr, fmt) for _, attr, fmt in COLUMNS] for r in result.rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    widths[-1] = len(header[-1])  # the note is last: do not pad the whole table to it

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(b) for b in body]
    return "\n".join(out)


def format_header(result: BenchResult) -> str:
    m, o = result.machine, result.options
    where = m.get("gpu") if m.get("device") == "cuda" else f"{m.get('cpu')} ({m.get('cpu_count')} CPUs)"
    load = f", load {m.get('loadavg_start')}->{m.get('loadavg_end')}" if m.get("loadavg_start") is not None else ""
    return (f"t5rt bench: model {o.get('model_label')} | device {m.get('device')} ({where}{load}) | "
            f"src {o.get('src_len')} tokens, forced new tokens, {o.get('runs')} timed runs after "
            f"{o.get('warmup')} warm-up (+1 priming), round-robin; speedup = HF eager fp32 p50 / p50")


def write_json(result: BenchResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n")


def write_csv(result: BenchResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [f.name for f in dataclasses.fields(Row)]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        for r in result.rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.to_json().items()})


def write_plot(result: BenchResult, path: Path) -> None:
    """Two panels of p50 latency: against new tokens (smallest batch) and against batch size
    (largest new-token count); one line per system, precision and beam count."""
    try:
        import matplotlib
    except ImportError:
        from ..errors import MissingDependencyError

        raise MissingDependencyError("--plot", "bench", "matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in result.rows if r.status == "ok" and r.p50_ms is not None]
    fig, (ax_n, ax_b) = plt.subplots(1, 2, figsize=(12, 4.5))
    if ok:
        min_batch = min(r.batch for r in ok)
        max_new = max(r.new_tokens for r in ok)
        series = sorted({(r.system, r.precision, r.beams) for r in ok})
        for system, prec, beams in series:
            label = f"{system} {prec}" + (f" beam{beams}" if beams > 1 else "")
            pts = sorted((r.new_tokens, r.p50_ms) for r in ok if (r.system, r.precision, r.beams)
                         == (system, prec, beams) and r.batch == min_batch)
            if pts:
                ax_n.plot(*zip(*pts), marker="o", label=label)
            pts = sorted((r.batch, r.p50_ms) for r in ok if (r.system, r.precision, r.beams)
                         == (system, prec, beams) and r.new_tokens == max_new)
            if pts:
                ax_b.plot(*zip(*pts), marker="o", label=label)
        ax_n.set_title(f"generate() p50 vs new tokens (batch {min_batch})")
        ax_b.set_title(f"generate() p50 vs batch size ({max_new} new tokens)")
    for ax, xl in ((ax_n, "new tokens (forced)"), (ax_b, "batch size")):
        ax.set_xlabel(xl)
        ax.set_ylabel("latency p50 (ms)")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(format_header(result), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
