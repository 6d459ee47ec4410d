"""`python -m t5rt.bench`: t5rt against Hugging Face generate() and the runtimes a user would
pick instead, on the same weights and inputs (issue 5; method in bench/README.md).

Torch-free at import: torch, transformers, ctranslate2 are imported inside the peers.

    from t5rt.bench import BenchOptions, run_bench, format_table
    result = run_bench(BenchOptions(model="t5-small", peers=("hf", "ct2")))
    print(format_table(result))
"""

from .options import BenchOptions, build_parser, options_from_args
from .report import format_table, write_csv, write_json, write_plot
from .results import BenchResult, Row
from .runner import run_bench

__all__ = ["BenchOptions", "BenchResult", "Row", "build_parser", "format_table",
           "options_from_args", "run_bench", "write_csv", "write_json", "write_plot"]
