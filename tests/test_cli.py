"""The `t5rt` command: parsing, one-line errors in subprocesses, and end to end against Hugging Face.

Error cases run the real command in a subprocess and check: non-zero exit, exactly one line on
stderr starting "t5rt: error:", no traceback. End-to-end tests export a tiny random-weight T5
with `t5rt export` (T5's real spiece.model next to it) and compare `t5rt generate` with
`transformers` generate on the same weights.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import SPIECE, make_t5

import t5rt
from t5rt.cli import GENERATION_FLAGS, generation_options, main, parse_args
from t5rt.generation_config import GenerationConfig

TIMEOUT = 120


def run(*args: str, stdin: str | None = None, prelude: str = "", env: dict | None = None,
        timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    """`t5rt ARGS` in a fresh interpreter; `prelude` runs first (e.g. to make torch unimportable)."""
    code = prelude + "\nimport sys\nfrom t5rt.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    import os

    full_env = dict(os.environ)
    full_env.pop("T5RT_DEBUG", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code, *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def assert_one_line_error(p: subprocess.CompletedProcess, *needles: str) -> str:
    assert p.returncode != 0, f"exit 0; stdout={p.stdout!r}"
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {p.stderr!r}"
    assert lines[0].startswith("t5rt: error: "), lines[0]
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


# -- parsing (in process) -------------------------------------------------------------------------

def test_every_generation_config_field_has_a_flag():
    fields = {f.name for f in dataclasses.fields(GenerationConfig)}
    covered = set(GENERATION_FLAGS) | {"bad_words_ids"}  # --bad-words / --bad-word-ids
    assert fields - covered == {"logits_processors"}  # Python callables only
    assert covered <= fields


def parse_generate(argv: list[str]):
    return parse_args(["generate", *argv])


def test_flags_map_to_generation_config():
    args = parse_generate([
        "DIR", "a", "b", "--max-new-tokens", "7", "--min-new-tokens", "2", "--num-beams", "4",
        "--num-return-sequences", "2", "--temperature", "0.7", "--top-k", "0", "--top-p", "0.9",
        "--repetition-penalty", "1.3", "--no-repeat-ngram-size", "3", "--length-penalty", "-0.5",
        "--early-stopping", "never", "--seed", "5", "--output-scores", "--no-do-sample",
    ])
    assert args.texts == ["a", "b"] and args.dir == "DIR"
    # Texts may follow the options too.
    assert parse_generate(["DIR", "--num-beams", "2", "a", "--top-k", "3", "b"]).texts == ["a", "b"]
    opts = generation_options(args)
    cfg = GenerationConfig.from_options(**opts)
    want = dict(max_new_tokens=7, min_new_tokens=2, num_beams=4, num_return_sequences=2, temperature=0.7,
                top_k=0, top_p=0.9, repetition_penalty=1.3, no_repeat_ngram_size=3, length_penalty=-0.5,
                early_stopping="never", seed=5, output_scores=True, do_sample=False)
    assert {k: getattr(cfg, k) for k in want} == want
    # Flags not given are not passed: the runtime's defaults apply.
    assert generation_options(parse_generate(["DIR", "x"])) == {}
    for v, want_es in (("true", True), ("False", False), ("never", "never")):
        a = parse_generate(["DIR", "x", "--early-stopping", v])
        assert a.early_stopping == want_es
    a = parse_generate(["DIR", "x", "--bad-word-ids", "5, 6", "--bad-word-ids", "7"])
    assert a.bad_word_ids == [[5, 6], [7]]


def test_import_cli_is_light():
    code = textwrap.dedent("""
        import sys
        import t5rt.cli
        t5rt.cli.parse_args(["generate", "D", "x"]); t5rt.cli.parse_args(["export", "m", "--out", "o"])
        heavy = [m for m in ("torch", "transformers", "onnx", "onnxruntime", "cupy", "tensorrt") if m in sys.modules]
        print(heavy)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_version():
    p = run("--version")
    assert p.returncode == 0
    assert p.stdout.strip() == f"t5rt {t5rt.__version__}"
    p = subprocess.run([sys.executable, "-m", "t5rt", "--version"], capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0 and p.stdout.strip() == f"t5rt {t5rt.__version__}"


# -- one-line errors (subprocess) -----------------------------------------------------------------

@pytest.mark.parametrize("args,needles", [
    ((), ("COMMAND",)),
    (("frob",), ("invalid choice", "frob")),
    (("generate",), ("DIR",)),
    (("generate", "D", "x", "--foo"), ("unrecognized arguments: --foo", "t5rt generate --help")),
    (("generate", "D", "x", "--max-new-token", "3"), ("--max-new-token",)),  # no abbreviations
    (("generate", "D", "x", "--num-beams", "two"), ("--num-beams", "two")),
    (("generate", "D", "x", "--early-stopping", "maybe"), ("--early-stopping", "maybe")),
    (("generate", "D", "x", "--backend", "tvm"), ("--backend",)),
    (("export", "m"), ("--out",)),
])
def test_usage_errors(args, needles, capsys):
    rc = main(list(args))  # in process (fast); test_errors_in_a_subprocess runs the real command
    p = subprocess.CompletedProcess(args, rc, *capsys.readouterr())
    assert_one_line_error(p, *needles)
    assert p.returncode == 2


@pytest.mark.parametrize("flags,option", [
    (("--top-p", "0"), "top_p"),
    (("--top-p", "1.5"), "top_p"),
    (("--num-beams", "2", "--num-return-sequences", "3"), "num_return_sequences"),
    (("--max-new-tokens", "-3"), "max_new_tokens"),
    (("--min-new-tokens", "-1"), "min_new_tokens"),
    (("--max-new-tokens", "2", "--min-new-tokens", "5"), "min_new_tokens"),
    (("--temperature", "0"), "temperature"),
    (("--num-beams", "0"), "num_beams"),
    (("--top-k", "-2"), "top_k"),
    (("--no-repeat-ngram-size", "-1"), "no_repeat_ngram_size"),
    (("--seed", "-1"), "seed"),
    (("--bad-word-ids", "5 -1"), "bad_words_ids"),
])
def test_invalid_generation_options(tmp_path, flags, option, capsys):
    # Checked before the export is even opened: the directory need not exist.
    rc = main(["generate", str(tmp_path / "nowhere"), "hello", *flags])
    p = subprocess.CompletedProcess(flags, rc, *capsys.readouterr())
    line = assert_one_line_error(p, option)
    with pytest.raises(t5rt.InvalidOptionError) as e:  # the same message as the API gives
        opts = generation_options(parse_generate(["D", "x", *flags]))
        if "--bad-word-ids" in flags:
            opts["bad_words_ids"] = [[5, -1]]
        GenerationConfig.from_options(**opts)
    assert str(e.value) in line


def test_errors_in_a_subprocess(tmp_path):
    assert_one_line_error(run("generate", "D", "x", "--foo"), "unrecognized arguments: --foo")
    assert_one_line_error(run("generate", str(tmp_path), "hello", "--top-p", "1.5"), "top_p")


def test_not_an_export(tmp_path):
    assert_one_line_error(run("generate", str(tmp_path / "missing"), "hi"), "missing", "not a directory")
    assert_one_line_error(run("generate", str(tmp_path), "hi"), "manifest.json", "t5rt export")
    (tmp_path / "manifest.json").write_text('{"format": "something-else"}')
    assert_one_line_error(run("generate", str(tmp_path), "hi"), "not a valid t5rt manifest")
    (tmp_path / "manifest.json").write_text("{not json")
    assert_one_line_error(run("generate", str(tmp_path), "hi"), "not a valid t5rt manifest")


def test_empty_input(tmp_path):
    assert_one_line_error(run("generate", str(tmp_path), stdin=""), "no input")
    assert_one_line_error(run("generate", str(tmp_path), stdin="\n  \n"), "no input")
    assert_one_line_error(run("generate", str(tmp_path), "  "), "empty")
    assert_one_line_error(run("generate", str(tmp_path), "--ids", stdin="12 x\n"), "--ids")


def test_hostile_text_and_options_are_one_line_errors(tmp_path):
    """Argv bytes that are not UTF-8 (Python hands them over as lone surrogates), NaN and 2**70."""
    import os

    line = assert_one_line_error(run("generate", str(tmp_path), "caf" + os.fsdecode(b"\xe9")), "not UTF-8", "0xe9")
    assert "TEXT argument 1" in line
    assert_one_line_error(run("generate", str(tmp_path), "hi", "--length-penalty", "nan"), "length_penalty")
    assert_one_line_error(run("generate", str(tmp_path), "hi", "--seed", str(2**70)), "seed")


BLOCK_TORCH = "import sys; sys.modules['torch'] = None"


def test_export_without_the_export_extra(tmp_path):
    p = run("export", "t5-small", "--out", str(tmp_path / "out"), prelude=BLOCK_TORCH)
    line = assert_one_line_error(p)
    assert line == ("t5rt: error: t5rt export needs the 'export' extra (torch is not installed): "
                    "pip install 't5rt[export]'")
    assert not (tmp_path / "out").exists()
    # The runtime itself does not need torch.
    assert run("--version", prelude=BLOCK_TORCH).returncode == 0


def test_build_without_tensorrt(tmp_path):
    p = run("build", str(tmp_path), prelude="import sys; sys.modules['tensorrt'] = None; "
                                             "sys.modules['tensorrt_rtx'] = None")
    assert_one_line_error(p)


RAISE_IN_GENERATE = "import t5rt.cli as c\ndef boom(args):\n    raise {exc}\nc._cmd_generate = boom\n"


def test_unexpected_exception_is_one_line_with_debug_hint(tmp_path):
    prelude = RAISE_IN_GENERATE.format(exc="RuntimeError('kaboom')")
    line = assert_one_line_error(run("generate", str(tmp_path), "x", prelude=prelude), "kaboom", "T5RT_DEBUG=1")
    assert "RuntimeError" in line
    p = run("generate", str(tmp_path), "x", prelude=prelude, env={"T5RT_DEBUG": "1"})
    assert p.returncode != 0 and "Traceback" in p.stderr and "kaboom" in p.stderr


def test_keyboard_interrupt(tmp_path):
    p = run("generate", str(tmp_path), "x", prelude=RAISE_IN_GENERATE.format(exc="KeyboardInterrupt()"))
    assert_one_line_error(p, "interrupted")
    assert p.returncode == 130


def test_broken_pipe(tmp_path):
    prelude = ("import t5rt.cli as c, sys\n"
               "def flood(args):\n"
               "    for i in range(200000):\n"
               "        sys.stdout.write('line %d\\n' % i)\n"
               "    sys.stdout.flush()\n"
               "    return 0\n"
               "c._cmd_generate = flood\n")
    code = prelude + "import sys\nfrom t5rt.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    proc = subprocess.Popen([sys.executable, "-c", code, "generate", str(tmp_path), "x"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.readline()
    proc.stdout.close()  # the reader goes away, like `t5rt generate ... | head -1`
    err = proc.stderr.read()
    rc = proc.wait(timeout=TIMEOUT)
    proc.stderr.close()
    assert rc != 0
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("t5rt: error: ") and "broken pipe" in lines[0], err


# -- end to end: t5rt export + t5rt generate vs Hugging Face ---------------------------------------

MAX_IN, MAX_OUT, NEW = 24, 16, 10
INPUTS = ["translate English to German: That is good.", "summarize: the cat sat on the mat", "Hello world"]


def _have_exporter() -> str | None:
    import importlib.util

    for m in ("torch", "transformers", "onnx", "onnxruntime"):
        if importlib.util.find_spec(m) is None:
            return f"{m} is not installed"
    try:
        import t5rt.exporters.pipeline  # noqa: F401
    except ImportError as e:
        return f"t5rt.exporters.pipeline is not importable ({e})"
    return None


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(hf_model, hf_tokenizer, export_dir) for a tiny T5 with T5's real vocabulary size."""
    why = _have_exporter()
    if why:
        pytest.skip(why)
    if not SPIECE.is_file():
        pytest.skip(f"{SPIECE} is missing")
    from transformers import T5Tokenizer as HFTokenizer

    root = tmp_path_factory.mktemp("cli_e2e")
    model = make_t5(seed=3, vocab_size=32128, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    model.save_pretrained(root / "model")
    shutil.copy(SPIECE, root / "model" / "spiece.model")
    out = root / "export"
    p = run("export", str(root / "model"), "--out", str(out), "--max-input-len", str(MAX_IN),
            "--max-output-len", str(MAX_OUT), "--no-validate", timeout=600)  # validation: test_export*
    assert p.returncode == 0, p.stderr[-3000:]
    assert (out / "manifest.json").is_file()
    assert (out / "spiece.model").is_file(), "the export did not copy the tokenizer"
    return model, HFTokenizer.from_pretrained(str(root / "model")), out


def _hf_generate(model, tok, texts, **kw):
    import torch

    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=NEW, **kw)
    return tok.batch_decode(out, skip_special_tokens=True), out


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_generate_text_matches_hf(exported, device):
    model, tok, out = exported
    p = run("generate", str(out), *INPUTS, "--max-new-tokens", str(NEW), "--backend", "ort", "--device", device)
    assert p.returncode == 0, p.stderr
    want, _ = _hf_generate(model, tok, INPUTS, num_beams=1, do_sample=False)
    assert p.stdout.splitlines() == want
    p = run("generate", str(out), *INPUTS, "--max-new-tokens", str(NEW), "--num-beams", "4", "--device", device)
    assert p.returncode == 0, p.stderr
    want, _ = _hf_generate(model, tok, INPUTS, num_beams=4)
    assert p.stdout.splitlines() == want


@pytest.mark.gpu
@pytest.mark.trt
def test_build_then_generate_trt_matches_hf(exported):
    model, tok, out = exported
    p = run("build", str(out), "--max-batch", "4", "--max-beams", "4", timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    p = run("generate", str(out), *INPUTS, "--max-new-tokens", str(NEW), "--backend", "trt", "--device", "cuda")
    assert p.returncode == 0, p.stderr
    want, _ = _hf_generate(model, tok, INPUTS, num_beams=1, do_sample=False)
    assert p.stdout.splitlines() == want


def test_generate_stdin_beam_json_matches_hf(exported):
    model, tok, out = exported
    p = run("generate", str(out), "--json", "--num-beams", "3", "--num-return-sequences", "2",
            "--length-penalty", "0.6", "--max-new-tokens", str(NEW), "--device", "cpu",
            stdin="\n".join(INPUTS) + "\n\n")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    want_texts, want_ids = _hf_generate(model, tok, INPUTS, num_beams=3, num_return_sequences=2,
                                        length_penalty=0.6)
    assert doc["inputs"] == INPUTS
    assert doc["texts"] == want_texts
    pad = model.config.pad_token_id
    want_seqs = []
    for row in want_ids.tolist():
        row = row[1:]  # drop the decoder start token
        while row and row[-1] == pad:
            row.pop()
        want_seqs.append(row)
    assert doc["sequences"] == want_seqs
    assert len(doc["scores"]) == len(want_seqs)
    assert doc["num_return_sequences"] == 2
    assert {"load_s", "generate_s"} <= set(doc["timings"])


def test_generate_bad_words_matches_hf(exported):
    model, tok, out = exported
    base = run("generate", str(out), INPUTS[0], "--max-new-tokens", str(NEW), "--json", "--device", "cpu")
    assert base.returncode == 0, base.stderr
    first = json.loads(base.stdout)["sequences"][0]
    banned = tok.decode(first[:1])  # forbid the first generated word, whatever it is
    if not banned.strip():
        pytest.skip("first generated token decodes to nothing")
    p = run("generate", str(out), INPUTS[0], "--max-new-tokens", str(NEW), "--bad-words", banned,
            "--device", "cpu")
    assert p.returncode == 0, p.stderr
    bad_ids = [tok(banned, add_special_tokens=False).input_ids]
    want, _ = _hf_generate(model, tok, INPUTS[:1], bad_words_ids=bad_ids)
    assert p.stdout.splitlines() == want


def test_generate_ids_input(exported):
    model, tok, out = exported
    ids = tok(INPUTS[1]).input_ids
    p = run("generate", str(out), "--ids", " ".join(map(str, ids)), "--max-new-tokens", str(NEW),
            "--device", "cpu")
    assert p.returncode == 0, p.stderr
    want, _ = _hf_generate(model, tok, INPUTS[1:2])
    assert p.stdout.splitlines() == want


def test_generate_errors_on_a_real_export(exported):
    _, _, out = exported
    too_long = " ".join(["word"] * (MAX_IN + 5))
    assert_one_line_error(run("generate", str(out), too_long, "--device", "cpu"), "tokens long", str(MAX_IN))
    assert_one_line_error(run("generate", str(out), "hi", "--max-new-tokens", str(MAX_OUT + 50), "--device", "cpu"),
                          "max_new_tokens")
    assert_one_line_error(run("generate", str(out), "hi", "--backend", "trt", "--device", "cpu"))
    assert_one_line_error(run("generate", str(out), "", "--device", "cpu"), "empty")


def test_bench_is_forwarded():
    import importlib.util

    p = run("bench", "--help")
    if importlib.util.find_spec("t5rt.bench.__main__") is None:
        assert_one_line_error(p, "bench")
    else:
        assert p.returncode == 0, p.stderr
        assert "t5rt.bench" in p.stdout or "usage" in p.stdout.lower()
