"""The `t5rt` command: export, build, generate, bench (DESIGN.md §1).

    t5rt export MODEL --out DIR [--precision ...]     torch + transformers -> 3 ONNX graphs
    t5rt build DIR [...]                              TensorRT engines for an export
    t5rt generate DIR [options] TEXT...               text in, text out (stdin: one input a line)
    t5rt bench ...                                    = python -m t5rt.bench ...
    t5rt serve DIR [--replicas N] [--address ...]     HTTP on Ray Serve (t5rt/serve/)

Every error a user can cause prints ONE line on stderr ("t5rt: error: ...") and exits non-zero;
set T5RT_DEBUG=1 to see the traceback. Importing this module is cheap: the runtime, the
exporter and the TensorRT builder are imported only by the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from .errors import InvalidInputError, InvalidOptionError, T5rtError

PROG = "t5rt"
DEBUG_ENV = "T5RT_DEBUG"
EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 1, 2, 130, 141

# What `t5rt export` needs beyond the runtime (the 'export' extra of pyproject.toml).
EXPORT_MODULES = ("torch", "transformers", "onnx", "onnx_graphsurgeon")


class UsageError(Exception):
    """Misuse of the command line (argparse's complaints), printed as one line."""

    def __init__(self, message: str, prog: str):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage + exiting, so main() prints one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.prog)


# -- generate's flags: GenerationConfig fields ----------------------------------------------------

def _early_stopping(v: str) -> bool | str:
    low = v.strip().lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    if low == "never":
        return "never"
    raise argparse.ArgumentTypeError(f"invalid value {v!r}: use true, false or never")


def _ids(v: str) -> list[int]:
    """'8774 296 1' or '8774,296,1' -> [8774, 296, 1]."""
    try:
        ids = [int(x) for x in v.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid token ids {v!r}: give integers separated by spaces or commas") \
            from None
    if not ids:
        raise argparse.ArgumentTypeError("empty token id list")
    return ids


# dest (a GenerationConfig field) -> (flag, argparse kwargs). logits_processors is Python-only.
GENERATION_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "max_new_tokens": ("--max-new-tokens", dict(type=int, metavar="N", help="tokens to generate at most "
                                                "(default: as Hugging Face generate() for this model: "
                                                "its generation_config.json max_new_tokens or max_length - 1, "
                                                "else 20)")),
    "max_length": ("--max-length", dict(type=int, metavar="N", help="Hugging Face's max_length: decoder tokens "
                                        "including the start token (max_new_tokens wins when both are given)")),
    "min_new_tokens": ("--min-new-tokens", dict(type=int, metavar="N", help="no eos before N new tokens")),
    "num_beams": ("--num-beams", dict(type=int, metavar="N", help="beam search with N beams (1: greedy)")),
    "num_return_sequences": ("--num-return-sequences", dict(type=int, metavar="N",
                                                            help="sequences per input (<= --num-beams)")),
    "do_sample": ("--do-sample", dict(action=argparse.BooleanOptionalAction, help="sample instead of argmax")),
    "temperature": ("--temperature", dict(type=float, metavar="T", help="sampling temperature (> 0)")),
    "top_k": ("--top-k", dict(type=int, metavar="K", help="sample among the K likeliest (0 disables; default 50)")),
    "top_p": ("--top-p", dict(type=float, metavar="P", help="nucleus sampling mass, in (0, 1]")),
    "repetition_penalty": ("--repetition-penalty", dict(type=float, metavar="F", help="> 1 discourages repeats")),
    "no_repeat_ngram_size": ("--no-repeat-ngram-size", dict(type=int, metavar="N",
                                                            help="never repeat an n-gram of this size")),
    "length_penalty": ("--length-penalty", dict(type=float, metavar="F", help="beam score = logp / len**F")),
    "early_stopping": ("--early-stopping", dict(type=_early_stopping, metavar="true|false|never",
                                                help="when beam search stops (as Hugging Face)")),
    "seed": ("--seed", dict(type=int, metavar="N", help="seed of sampling (same seed, same output)")),
    "output_scores": ("--output-scores", dict(action=argparse.BooleanOptionalAction,
                                              help="keep per-step scores of the chosen tokens")),
}


def _add_generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="directory written by 't5rt export'")
    p.add_argument("texts", metavar="TEXT", nargs="*", default=[],
                   help="input texts; without any, one input per line of stdin")
    run = p.add_argument_group("runtime")
    run.add_argument("--backend", choices=("auto", "ort", "trt", "native"), default="auto",
                     help="inference backend (default %(default)s: on CUDA the native kernels where they support the export, else TensorRT where it works, else ONNX Runtime)")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="where to run (default %(default)s: cuda when a GPU is usable)")
    run.add_argument("--threads", type=int, metavar="N", help="CPU: intra-op threads")
    run.add_argument("--max-batch", type=int, metavar="N", help="run larger requests in chunks of N inputs")
    run.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false", default=None,
                     help="GPU: run the decoder step without CUDA graph replay")
    gen = p.add_argument_group("generation (names and defaults as Hugging Face's GenerationConfig)")
    for dest, (flag, kw) in GENERATION_FLAGS.items():
        gen.add_argument(flag, dest=dest, default=None, **kw)
    gen.add_argument("--bad-words", metavar="WORDS", action="append", default=None,
                     help="never generate this text (tokenized with the export's tokenizer); repeatable")
    gen.add_argument("--bad-word-ids", metavar="IDS", type=_ids, action="append", default=None,
                     help="never generate this token sequence, e.g. '363 19'; repeatable")
    io = p.add_argument_group("input / output")
    io.add_argument("--ids", action="store_true",
                    help="inputs are token ids ('8774 296 1'), not text; for exports without a tokenizer")
    io.add_argument("--json", action="store_true",
                    help="print one JSON object: inputs, sequences, texts, scores, timings")
    io.add_argument("--stream", action="store_true",
                    help="print each input's output as its tokens are chosen (one input at a time)")
    io.add_argument("-v", "--verbose", action="store_true", help="log what the runtime does on stderr")


def generation_options(args: argparse.Namespace) -> dict[str, Any]:
    """The GenerationConfig fields given on the command line (others keep their defaults)."""
    opts = {dest: getattr(args, dest) for dest in GENERATION_FLAGS if getattr(args, dest, None) is not None}
    return opts


def _read_inputs(args: argparse.Namespace) -> list[str]:
    if args.texts:
        for i, t in enumerate(args.texts):
            if not t.strip():
                raise InvalidInputError(f"input {i} (TEXT argument {i + 1}) is empty; give text to generate from")
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as e:  # argv bytes that are not UTF-8 arrive as lone surrogates
                byte = os.fsencode(t[e.start])[:1].hex() if 0xDC80 <= ord(t[e.start]) <= 0xDCFF else None
                raise InvalidInputError(f"TEXT argument {i + 1} is not UTF-8 text"
                                        + (f" (byte 0x{byte} at character {e.start})" if byte else "")
                                        + "; give UTF-8 text") from None
        return list(args.texts)
    if sys.stdin is None:
        raise InvalidInputError("no input: give TEXT arguments or one input per line on stdin")
    if sys.stdin.isatty():
        print(f"{PROG}: reading inputs from stdin, one per line (end with Ctrl-D)", file=sys.stderr)
    raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInputError(f"stdin is not UTF-8 text (byte {e.start}); give UTF-8 input") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise InvalidInputError("no input: stdin was empty; give TEXT arguments or one input per line")
    return lines


def _cmd_generate(args: argparse.Namespace) -> int:
    from .generation_config import GenerationConfig

    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    opts = generation_options(args)
    if args.bad_word_ids:
        opts["bad_words_ids"] = list(args.bad_word_ids)
    GenerationConfig.from_options(**opts)  # bad options fail here, before the (slow) load
    inputs = _read_inputs(args)
    input_ids = None
    if args.ids:
        try:
            input_ids = [_ids(t) for t in inputs]
        except argparse.ArgumentTypeError as e:
            raise InvalidInputError(f"--ids: {e}") from None

    import t5rt

    load_kw = {k: getattr(args, k) for k in ("threads", "max_batch", "cuda_graphs") if getattr(args, k) is not None}
    t0 = time.perf_counter()
    rt = t5rt.load(args.dir, backend=args.backend, device=args.device, **load_kw)
    load_s = time.perf_counter() - t0

    if args.bad_words:
        if rt.tokenizer is None:
            raise InvalidInputError(f"--bad-words needs a tokenizer and {args.dir} has none; "
                                    "use --bad-word-ids with token ids")
        words = [rt.tokenizer.encode(w, add_eos=False) for w in args.bad_words]
        empty = [w for w, ids in zip(args.bad_words, words) if not ids]
        if empty:
            raise InvalidOptionError(f"--bad-words {empty[0]!r} has no tokens; give a word")
        opts["bad_words_ids"] = opts.get("bad_words_ids", []) + words

    if args.stream:
        if args.json:
            raise InvalidOptionError("--stream prints text as it comes; it does not combine with --json")
        _stream_outputs(rt, inputs, input_ids, opts)
        return 0
    t0 = time.perf_counter()
    if input_ids is not None:
        lens = [len(r) for r in input_ids]
        width = max(lens)
        pad = rt.manifest.special_tokens.pad_token_id
        ids = [r + [pad] * (width - len(r)) for r in input_ids]
        mask = [[1] * n + [0] * (width - n) for n in lens]
        out = rt.generate(input_ids=ids, attention_mask=mask, **opts)
    else:
        out = rt.generate(inputs, **opts)
    generate_s = time.perf_counter() - t0

    texts = out.texts
    if texts is None and rt.tokenizer is not None:
        texts = rt.tokenizer.batch_decode(out.sequences)
    if args.json:
        timings = {"load_s": load_s, "generate_s": generate_s}
        timings.update(getattr(out, "timings", None) or {})
        cfg = GenerationConfig.from_options(**opts)
        doc = {
            "inputs": [[int(t) for t in r] for r in input_ids] if input_ids is not None else inputs,
            "sequences": out.sequences,
            "texts": texts,
            "scores": out.scores,
            "num_return_sequences": cfg.num_return_sequences,
            "options": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "logits_processors"},
            "backend": getattr(rt, "backend", args.backend),
            "device": getattr(getattr(rt, "device", None), "name", args.device),
            "timings": timings,
        }
        sys.stdout.write(json.dumps(doc, ensure_ascii=False) + "\n")
    else:
        lines = texts if texts is not None else [" ".join(map(str, s)) for s in out.sequences]
        # One line per returned sequence (the num_return_sequences of each input consecutive).
        sys.stdout.write("".join(ln.replace("\n", " ") + "\n" for ln in lines))
    sys.stdout.flush()
    return 0


def _stream_outputs(rt: Any, inputs: list[str], input_ids: list[list[int]] | None, opts: dict[str, Any]) -> None:
    """--stream: one line per input, written as its tokens are chosen (token ids without a tokenizer)."""
    for i, text in enumerate(inputs):
        if input_ids is not None:
            chunks = rt.stream(input_ids=[input_ids[i]], **opts)
        else:
            chunks = rt.stream(text, **opts)
        first = True
        for chunk in chunks:
            if chunk.text is not None and rt.tokenizer is not None:
                piece = chunk.text.replace("\n", " ")
            else:
                piece = " ".join(map(str, chunk.tokens))
                piece = piece if first or not piece else " " + piece
            first = first and not piece
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    sys.stdout.flush()


# -- export / build / bench ------------------------------------------------------------------------

class _ExtraMissing(T5rtError, ImportError):
    """An optional part of t5rt is missing; the message already says what to install."""


def _add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="Hugging Face hub id or a local save_pretrained directory")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write the graphs and manifest.json")
    try:
        from t5rt.exporters.options import add_cli_arguments
    except ImportError:
        return  # this t5rt has no exporter options; _cmd_export says so
    add_cli_arguments(p)


def _missing_export_module() -> str | None:
    """Name of the first module of the 'export' extra that cannot be imported, if any."""
    for name in EXPORT_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            return name
    return None


def _cmd_export(args: argparse.Namespace) -> int:
    missing = _missing_export_module()
    if missing:
        raise _ExtraMissing(
            f"t5rt export needs the 'export' extra ({missing} is not installed): pip install 't5rt[export]'")
    try:
        from t5rt.exporters.options import options_from_args
        from t5rt.exporters.pipeline import export
    except ImportError as e:
        if e.name and e.name.split(".")[0] in EXPORT_MODULES + ("onnxruntime",):
            raise _ExtraMissing(f"t5rt export needs the 'export' extra ({e.name} is not installed): "
                                f"pip install 't5rt[export]'") from None
        raise _ExtraMissing(f"t5rt export is not available in this installation ({e}); "
                            f"reinstall t5rt with pip install 't5rt[export]'") from None
    options = options_from_args(args)
    export(args.model, args.out, options)
    return 0


def _add_build_arguments(p: argparse.ArgumentParser) -> None:
    try:
        from t5rt.engines.trt_build import add_cli_arguments
    except ImportError as e:
        # Keep whatever was typed; _cmd_build reports what is missing rather than "unknown flag".
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        p.set_defaults(build_import_error=e)
        return
    p.set_defaults(build_import_error=None)
    add_cli_arguments(p)


def _cmd_build(args: argparse.Namespace) -> int:
    err = getattr(args, "build_import_error", None)
    if err is not None:
        if err.name and err.name.split(".")[0] in ("tensorrt", "tensorrt_rtx"):
            raise _ExtraMissing("t5rt build needs TensorRT (the 'trt' extra; tensorrt is not installed): "
                                "pip install 't5rt[trt]'")
        raise _ExtraMissing(f"t5rt build is not available in this installation ({err})")
    from t5rt.engines.trt_build import run_cli

    return int(run_cli(args) or 0)


def _cmd_bench(argv: Sequence[str]) -> int:
    """Forward to `python -m t5rt.bench` (its own flags and errors)."""
    if importlib.util.find_spec("t5rt.bench.__main__") is None:
        raise _ExtraMissing("t5rt bench is not available in this installation (t5rt.bench has no __main__)")
    return subprocess.call([sys.executable, "-m", "t5rt.bench", *argv])


# -- parser and main ------------------------------------------------------------------------------

COMMANDS = {
    "export": "torch + transformers model -> encoder / cross_kv / decoder_step ONNX graphs + manifest.json",
    "build": "build TensorRT engines for an export (needs TensorRT)",
    "generate": "generate text with an export (one input per TEXT, or per stdin line)",
    "bench": "benchmark t5rt against Hugging Face generate (= python -m t5rt.bench)",
    "serve": "serve an export over HTTP on Ray Serve (needs the 'serve' extra)",
}


def _version() -> str:
    from . import __version__

    return f"{PROG} {__version__}"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `t5rt` parser. Only `command`'s teammate-owned flags are imported (None: all of them)."""
    parser = _Parser(prog=PROG, description="Fast T5-family generation: export, build, generate, bench.",
                     allow_abbrev=False)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_ in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_, allow_abbrev=False)
        if name == "bench":
            continue  # forwarded before parsing
        if command not in (None, name):
            continue  # flags only for the command being run: keep other subcommands' imports out
        _COMMAND_ARGUMENTS[name](p)
        p.set_defaults(func=name)
    return parser


def command_parser(command: str) -> argparse.ArgumentParser:
    """The parser of one subcommand alone (`t5rt generate ...` is parsed by this one)."""
    p = _Parser(prog=f"{PROG} {command}", description=COMMANDS[command], allow_abbrev=False)
    _COMMAND_ARGUMENTS[command](p)
    p.set_defaults(func=command)
    return p


def _add_serve_arguments(p: argparse.ArgumentParser) -> None:
    from .serve.cli import add_cli_arguments  # no ray import: that waits for _cmd_serve

    add_cli_arguments(p)


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve.cli import run_cli

    return run_cli(args)


_COMMAND_ARGUMENTS = {"export": _add_export_arguments, "build": _add_build_arguments,
                      "generate": _add_generate_arguments, "serve": _add_serve_arguments}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """argv (without the program name) -> namespace; UsageError on misuse."""
    argv = list(argv)
    command = _command_of(argv)
    if command is None or command == "bench" or argv[0] != command:
        return build_parser(command).parse_args(argv)  # --version, --help, or an error to report
    p = command_parser(command)
    if command == "generate":
        # TEXT... may come before, between or after the options ("DIR --num-beams 4 TEXT").
        return p.parse_intermixed_args(argv[1:])
    return p.parse_args(argv[1:])


def _command_of(argv: Sequence[str]) -> str | None:
    for a in argv:
        if not a.startswith("-"):
            return a if a in COMMANDS else None
    return None


def _error_line(message: str) -> None:
    message = " ".join(str(message).split()) or "unknown error"
    try:
        sys.stderr.write(f"{PROG}: error: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0", "false", "no")


def _run(argv: list[str]) -> int:
    command = _command_of(argv)
    if command == "bench":
        i = argv.index("bench")
        return _cmd_bench(argv[i + 1:])
    args = parse_args(argv)
    func = {"export": _cmd_export, "build": _cmd_build, "generate": _cmd_generate, "serve": _cmd_serve}[args.func]
    return int(func(args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `t5rt`; returns the exit status (0 ok, 1 error, 2 usage, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv)
    except UsageError as e:
        command = _command_of(argv)
        _error_line(f"{e}; see '{PROG} {command + ' ' if command else ''}--help'")
        return EXIT_USAGE
    except T5rtError as e:
        if _debug():
            traceback.print_exc()
        _error_line(str(e))
        return EXIT_ERROR
    except KeyboardInterrupt:
        _error_line("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): silence the final flush at exit, say it once.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        _error_line("output closed before all results were written (broken pipe)")
        return EXIT_BROKEN_PIPE
    except SystemExit:
        raise  # --help / --version
    except Exception as e:  # noqa: BLE001 - last resort: one line, traceback only on request
        if _debug():
            traceback.print_exc()
        _error_line(f"unexpected {type(e).__name__}: {e} (rerun with {DEBUG_ENV}=1 for the traceback)")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
