"""The load bench's table (markdown), JSON document and latency-against-load plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...errors import MissingDependencyError

COLUMNS = [  # (header, key, format)
    ("system", "system", "{}"), ("offered req/s", "offered_rps", "{:.2f}"), ("sent", "sent", "{}"),
    ("done", "completed", "{}"), ("req/s", "throughput_rps", "{:.2f}"), ("tok/s", "tokens_per_s", "{:.0f}"),
    ("p50 lat s", "latency_p50_s", "{:.3f}"), ("p99 lat s", "latency_p99_s", "{:.3f}"),
    ("p50 TTFT s", "ttft_p50_s", "{:.3f}"), ("p99 TTFT s", "ttft_p99_s", "{:.3f}"),
    ("p99 slowdown", "slowdown_p99", "{:.2f}"), ("p99 slowdown by mode", "slowdown_p99_by_mode", "{:.1f}"),
    ("rows/step", "rows_per_step", "{:.1f}"), ("pools/step", "pools_per_step", "{:.2f}"),
    ("syncs/step", "checks_per_step", "{:.2f}"),
    ("host ms/step", "host_s_per_step", "{:.3f}"), ("engine ms/step", "engine_s_per_step", "{:.3f}"),
    ("join ms/step", "join_s_per_step", "{:.3f}"),
    ("+HTTP p50 ms", "overhead_p50_s", "{:.2f}"), ("+HTTP p99 ms", "overhead_p99_s", "{:.2f}"),
]


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    v = row.get(key)
    if v is None:
        return "-"
    if isinstance(v, dict):  # per mode: "beam4 5.2 greedy 2.1 ..."
        return " ".join(f"{k} {fmt.format(x)}" for k, x in v.items() if x is not None) or "-"
    return fmt.format(v * 1e3 if key.endswith("_s_per_step") or key.startswith("overhead_") else v)


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(h for h, _, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r, k, f) for _, k, f in COLUMNS) + " |")
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]], bound: float = 3.0) -> dict[str, Any]:
    """The issue's bar: t5rt's throughput at the highest offered rate whose p99 slowdown (latency
    / solo latency of the same request) is <= bound, against the serial runtime's best."""
    ok = [r for r in rows if r["system"] == "t5rt" and (r.get("slowdown_p99") or 1e9) <= bound]
    best = max(ok, key=lambda r: r["offered_rps"], default=None)
    serial = max((r["throughput_rps"] for r in rows if r["system"] == "t5rt-serial"), default=None)
    out: dict[str, Any] = {"slowdown_bound": bound, "t5rt_rate_rps": best and best["offered_rps"],
                           "t5rt_throughput_rps": best and best["throughput_rps"],
                           "serial_best_throughput_rps": serial}
    if best and serial:
        out["throughput_ratio"] = best["throughput_rps"] / serial
    return out


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")


def write_plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError("--plot", "bench", "matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(11, 4.2))
    for system in dict.fromkeys(r["system"] for r in rows):
        rs = sorted((r for r in rows if r["system"] == system and r["latency_p50_s"] is not None),
                    key=lambda r: r["offered_rps"])
        x = [r["offered_rps"] for r in rs]
        line, = ax_lat.plot(x, [r["latency_p50_s"] for r in rs], marker="o", label=f"{system} p50")
        ax_lat.plot(x, [r["latency_p99_s"] for r in rs], marker="x", ls="--", color=line.get_color(),
                    label=f"{system} p99")
        ax_tp.plot(x, [r["throughput_rps"] for r in rs], marker="o", color=line.get_color(), label=system)
    ax_lat.set(xscale="log", yscale="log", xlabel="offered load (requests/s)", ylabel="latency (s)")
    ax_tp.set(xscale="log", yscale="log", xlabel="offered load (requests/s)", ylabel="throughput (requests/s)")
    ax_lat.legend(fontsize=7)
    ax_tp.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
