"""`python -m t5rt.bench`: see `python -m t5rt.bench --help` and bench/README.md."""

from __future__ import annotations

import sys

from ..errors import T5rtError
from .check import check_problems
from .options import build_parser, options_from_args
from .report import format_header, format_table, write_csv, write_json, write_plot
from .runner import run_bench


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        opts = options_from_args(args)
        result = run_bench(opts, log=lambda m: print(m, file=sys.stderr, flush=True))
    except T5rtError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_header(result))
    print(format_table(result))
    if opts.json:
        write_json(result, opts.json)
    if opts.csv:
        write_csv(result, opts.csv)
    if opts.plot:
        write_plot(result, opts.plot)
    for path in (opts.json, opts.csv, opts.plot):
        if path:
            print(f"wrote {path}", file=sys.stderr)
    if opts.check:
        problems = check_problems(result, opts)
        for p in problems:
            print(f"check failed: {p}", file=sys.stderr)
        if problems:
            return 1
        print("check passed: every installed peer ran; fp32 agreement 1.000", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
