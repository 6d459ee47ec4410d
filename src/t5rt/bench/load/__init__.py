"""`python -m t5rt.bench --load`: open-loop Poisson load of mixed requests (issue 12).

    workload.py   the request mix and Poisson arrival times
    targets.py    the systems driven (t5rt in-flight, t5rt one at a time, HF one at a time)
    driver.py     open-loop driving, solo-latency fit, per-rate summary
    report.py     table, JSON, latency-against-load plot
    run.py        one run over every system and rate
    http.py       the HTTP target (--url / --serve N: `t5rt serve`) and its overhead against in-process
"""

from __future__ import annotations

import sys

from ...errors import T5rtError
from .options import LoadOptions, build_parser, options_from_args
from .report import format_table, write_json, write_plot
from .run import run_load

__all__ = ["LoadOptions", "main", "run_load"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        opts = options_from_args(args)
        doc = run_load(opts, log=lambda m: print(m, file=sys.stderr, flush=True))
    except T5rtError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = doc["machine"]
    print(f"# load: {doc['model']} {doc['precision']} on {m.get('gpu') or m.get('cpu')} ({m['device']})")
    print(format_table(doc["rows"]))
    print(f"summary: {doc['summary']}")
    if opts.json:
        write_json(doc, opts.json)
    if opts.plot:
        write_plot(doc["rows"], opts.plot, f"{doc['model']} {doc['precision']} {m.get('gpu') or m['device']}")
    return 0
