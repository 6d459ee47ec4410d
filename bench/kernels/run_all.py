"""Run every kernel workbench and write one markdown table.

    cmake -S . -B build/kernels && cmake --build build/kernels
    python bench/kernels/run_all.py --out bench/kernels/RESULTS.md

Each row: median device time per call inside a CUDA graph (what the runtime replays), the
memory floor (bytes / peak HBM bandwidth), GB/s, host cost of the Python wrapper per call, the
array-code baseline, and the reference check.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import t5rt.kernels as K  # noqa: E402

from _bench import cupy, peak_tbps, table  # noqa: E402

BENCHES = ["kv_write", "beam_reorder", "sampling", "beam_topk", "argmax", "step_update", "native_step"]


def measured_copy_tbps() -> float:
    """Device-to-device copy bandwidth of 1 GiB (read + write), for scale."""
    cp = cupy()
    a = cp.empty(1 << 28, dtype=np.float32)
    b = cp.empty_like(a)
    start, end = cp.cuda.Event(), cp.cuda.Event()
    b[...] = a
    start.record()
    for _ in range(10):
        b[...] = a
    end.record()
    end.synchronize()
    return 2 * a.nbytes * 10 / (cp.cuda.get_elapsed_time(start, end) * 1e-3) / 1e12


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="markdown file to write (default: stdout only)")
    ap.add_argument("--only", nargs="*", default=BENCHES, choices=BENCHES)
    args = ap.parse_args()
    name, peak = peak_tbps()
    rows, failed = [], []
    for bench in args.only:
        try:
            rows += importlib.import_module(bench).run()
        except Exception:  # noqa: BLE001 - report and go on with the others
            failed.append(bench)
            traceback.print_exc()
    text = (f"# Kernel workbenches\n\nDevice: {name}; floor at {peak} TB/s HBM; measured D2D copy "
            f"{measured_copy_tbps():.2f} TB/s; kernels from `{K.source()}`.\n\n" + table(rows, peak))
    if failed:
        text += f"\nFAILED: {', '.join(failed)}\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 1 if failed or any(r.check != "ok" for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
