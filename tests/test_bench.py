"""python -m t5rt.bench on a tiny real T5 (random weights) on the CPU, against real peers.

The bench run is the real one (subprocess, real t5rt export + runtime, real transformers,
ctranslate2 and, where T5RT_BENCH_OPTIMUM_PYTHON names a venv with optimum-onnx, Optimum).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_t5

from t5rt.bench import BenchOptions, build_parser, options_from_args, run_bench
from t5rt.bench.options import PEERS
from t5rt.bench.presets import PRESETS, resolve_model
from t5rt.bench.systems import agreement, make_workload, strip_start
from t5rt.bench.timing import Stats, percentile
from t5rt.errors import InvalidOptionError

HAS_CT2 = __import__("importlib").util.find_spec("ctranslate2") is not None
OPTIMUM_PY = os.environ.get("T5RT_BENCH_OPTIMUM_PYTHON", "")


# -- CLI ---------------------------------------------------------------------------------
def test_cli_parses_every_option(tmp_path):
    args = build_parser().parse_args([
        "--model", "t5-base", "--backend", "ort", "--device", "cpu", "--precision", "bf16",
        "--batch-sizes", "1,8,32", "--beams", "1,4", "--src-len", "48", "--new-tokens", "16,64",
        "--runs", "3", "--warmup", "0", "--json", str(tmp_path / "r.json"), "--csv",
        str(tmp_path / "r.csv"), "--plot", str(tmp_path / "r.png"), "--peers", "hf,ct2",
        "--cache-dir", str(tmp_path), "--optimum-python", "/x/python"])
    o = options_from_args(args)
    assert (o.model, o.backend, o.device, o.precision) == ("t5-base", "ort", "cpu", "bf16")
    assert o.batch_sizes == (1, 8, 32) and o.beams == (1, 4) and o.new_tokens == (16, 64)
    assert (o.src_len, o.runs, o.warmup) == (48, 3, 0)
    assert o.peers == ("hf", "ct2") and o.include_t5rt
    assert o.json == tmp_path / "r.json" and o.plot == tmp_path / "r.png"
    assert o.cache_dir == tmp_path and o.optimum_python == "/x/python"
    d = options_from_args(build_parser().parse_args([]))
    assert d.model is None and d.peers == PEERS and d.device == "auto" and d.precision == "auto"
    assert options_from_args(build_parser().parse_args(["--peers", "none"])).peers == ()


@pytest.mark.parametrize("argv, what", [
    (["--peers", "hf,vllm"], "--peers"), (["--runs", "0"], "--runs"),
    (["--batch-sizes", "0"], "--batch-sizes"), (["--src-len", "0"], "--src-len")])
def test_cli_rejects_bad_values_naming_the_option(argv, what):
    with pytest.raises(InvalidOptionError, match=what):
        options_from_args(build_parser().parse_args(argv))


def test_import_is_torch_free():
    code = "import sys, t5rt.bench, t5rt.bench.__main__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- pieces --------------------------------------------------------------------------------
def test_stats_match_numpy():
    xs = list(np.random.default_rng(0).random(17))
    s = Stats.of(xs)
    assert s.p50 == pytest.approx(np.percentile(xs, 50)) and s.p90 == pytest.approx(np.percentile(xs, 90))
    assert percentile([3.0], 90) == 3.0


def test_agreement_and_start_token():
    assert agreement([[1, 2, 3], [4, 5, 6]], [[1, 2, 0], [4, 5, 6]]) == pytest.approx(5 / 6)
    assert agreement([[1, 2]], [[1]]) == 0.5  # missing tokens count as wrong
    assert strip_start([[0, 7, 8]], 2, 0) == [[7, 8]] and strip_start([[7, 8]], 2, 0) == [[7, 8]]


def test_workload_is_the_same_for_every_system():
    a, b = make_workload(4, 1, 32, 8, 384), make_workload(4, 4, 32, 8, 384)
    assert a.input_ids.shape == (4, 32) and a.input_ids.dtype == np.int64
    assert np.array_equal(a.input_ids, b.input_ids)  # beams do not change the inputs
    assert a.input_ids.min() >= 2 and a.input_ids.max() < 384 and a.attention_mask.all()


def test_t5_small_preset_is_hf_t5_small_shape(tmp_path):
    from transformers import T5Config

    ref = T5Config()  # transformers' defaults are t5-small's config
    shape = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
             "feed_forward_proj", "tie_word_embeddings", "relative_attention_num_buckets",
             "relative_attention_max_distance", "layer_norm_epsilon")
    for k in shape:
        assert getattr(ref, k) == PRESETS["t5-small"][k], k
    assert resolve_model(None).name == "t5-small" and resolve_model("t5-3b").kind == "preset"
    assert resolve_model(str(tmp_path)).kind == "dir"
    assert resolve_model("google/flan-t5-small").kind == "hub"


# -- peers that cannot run ----------------------------------------------------------------
def test_missing_peers_are_reported_not_fatal(tmp_path, monkeypatch):
    model = make_t5(0)
    model.save_pretrained(tmp_path / "m")
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # as if not installed
    opts = BenchOptions(model=str(tmp_path / "m"), device="cpu", peers=("ct2", "optimum"),
                        include_t5rt=False, runs=1, warmup=0, new_tokens=(4,), src_len=8,
                        cache_dir=tmp_path / "cache", optimum_python=str(tmp_path / "no-python"))
    rows = {r.system: r for r in run_bench(opts, log=lambda m: None).rows}
    assert rows["ct2"].status == "unavailable" and "ctranslate2" in rows["ct2"].reason
    assert rows["optimum"].status == "unavailable" and "optimum worker" in rows["optimum"].reason


def test_check_fails_installed_peers_that_did_not_run_and_fp32_disagreement(monkeypatch):
    from t5rt.bench.check import check_problems
    from t5rt.bench.results import BenchResult, Row

    def row(system, precision="fp32", status="ok", agreement=1.0, reason=""):
        return Row(system=system, precision=precision, device="cpu", batch=1, beams=1, src_len=8, new_tokens=4,
                   status=status, reason=reason, agreement=agreement if status == "ok" else None)

    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # as if not installed
    opts = BenchOptions(peers=("hf", "ct2"))
    good = BenchResult(machine={}, options={}, rows=[row("t5rt"), row("hf"), row("ct2", status="unavailable")])
    assert check_problems(good, opts) == []
    bad = BenchResult(machine={}, options={}, rows=[
        row("t5rt", agreement=0.98), row("t5rt", precision="bf16", agreement=0.9),
        row("hf"), row("hf-compile", status="unavailable", reason="ImportError: shadowed")])
    problems = check_problems(bad, opts)
    assert len(problems) == 2
    assert "t5rt@fp32" in problems[0] and "0.980" in problems[0]
    assert "hf-compile@fp32" in problems[1] and "shadowed" in problems[1]
    no_hf = BenchResult(machine={}, options={}, rows=[row("t5rt"), row("hf", status="failed", reason="boom")])
    assert any("Hugging Face" in p for p in check_problems(no_hf, opts))


# -- a real run --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    make_t5(0).save_pretrained(d / "tiny")
    argv = [sys.executable, "-m", "t5rt.bench", "--model", str(d / "tiny"), "--device", "cpu",
            "--batch-sizes", "1,2", "--beams", "1,2", "--src-len", "12", "--new-tokens", "6",
            "--runs", "2", "--warmup", "0", "--peers", "hf,optimum,ct2", "--cache-dir", str(d / "cache"),
            "--json", str(d / "r.json"), "--csv", str(d / "r.csv"), "--plot", str(d / "r.png"), "--check"]
    if OPTIMUM_PY:
        argv += ["--optimum-python", OPTIMUM_PY]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    return d, p.stdout, json.loads((d / "r.json").read_text())


def _table(stdout: str) -> list[dict[str, str]]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def test_table_speedup_column_agrees_with_json(tiny_run):
    _, stdout, result = tiny_run
    table, rows = _table(stdout), result["rows"]
    assert len(table) == len(rows) == 4 * 4  # 4 cases x (t5rt, hf, optimum, ct2)
    for t, r in zip(table, rows):
        assert (t["system"], int(t["bs"]), int(t["beams"])) == (r["system"], r["batch"], r["beams"])
        if r["speedup_vs_hf_fp32"] is None:
            assert t["speedup"] == "-"
        else:
            assert t["speedup"] == f"{r['speedup_vs_hf_fp32']:.2f}x"
            assert r["speedup_vs_hf_fp32"] == pytest.approx(
                next(h["p50_ms"] for h in rows if h["system"] == "hf" and h["batch"] == r["batch"]
                     and h["beams"] == r["beams"]) / r["p50_ms"])
        if r["status"] != "ok":
            assert r["reason"] and r["reason"] in t["note"]


def test_systems_ran_and_match_hf_tokens(tiny_run):
    _, _, result = tiny_run
    by = {}
    for r in result["rows"]:
        by.setdefault(r["system"], []).append(r)
    assert all(r["status"] == "ok" and r["speedup_vs_hf_fp32"] == 1.0 for r in by["hf"])
    # fp32 with the same weights: t5rt must be token-identical to HF (greedy and beam)
    for r in by["t5rt"]:
        assert r["status"] == "ok", r["reason"]
        assert r["agreement"] == 1.0 and r["encode_ms"] > 0 and r["step_ms"] > 0 and r["host_step_ms"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["batch"] * r["new_tokens"] / (r["p50_ms"] / 1e3))
    for name, present in (("ct2", HAS_CT2), ("optimum", bool(OPTIMUM_PY))):
        for r in by[name]:
            if present:
                assert r["status"] == "ok" and r["agreement"] == 1.0, r["reason"]
            else:
                assert r["status"] == "unavailable" and r["reason"]


def test_json_csv_and_plot_written(tiny_run):
    d, _, result = tiny_run
    assert result["machine"]["cpu_count"] and result["options"]["device_resolved"] == "cpu"
    csv_lines = (d / "r.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + len(result["rows"]) and csv_lines[0].startswith("system,precision")
    png = (d / "r.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


# -- GPU ------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_tiny_run_on_gpu_has_memory_and_parity(tmp_path):
    """CUDA: t5rt fp32 is token-identical to HF fp32 and every GPU system reports its memory."""
    make_t5(0).save_pretrained(tmp_path / "tiny")
    opts = BenchOptions(model=str(tmp_path / "tiny"), device="cuda", precision="fp32",
                        batch_sizes=(1, 4), beams=(1, 2), src_len=12, new_tokens=(8,), runs=2,
                        warmup=1, peers=("hf", "hf-compile", "ct2"), cache_dir=tmp_path / "cache",
                        plot=tmp_path / "r.png")
    result = run_bench(opts, log=print)
    rows = {(r.system, r.batch, r.beams): r for r in result.rows}
    assert result.machine.get("gpu")
    for b in (1, 4):
        for k in (1, 2):
            t, h = rows[("t5rt", b, k)], rows[("hf", b, k)]
            assert t.status == "ok", t.reason
            assert t.agreement == 1.0 and t.peak_mem_mb and t.peak_mem_mb > 0
            assert h.status == "ok" and h.peak_mem_mb and h.peak_mem_mb > 0
            assert t.speedup_vs_hf_fp32 == pytest.approx(h.p50_ms / t.p50_ms)
            c = rows[("hf-compile", b, k)]  # runs or says why (DESIGN.md §7: it failed on the H100)
            assert c.status == "ok" or c.reason


def test_round_robin_rotates_and_drops_failures():
    seen: list[tuple[str, int]] = []

    def step(name, i):
        seen.append((name, i))
        return not (name == "b" and i == 1)

    from t5rt.bench.timing import round_robin

    round_robin(["a", "b", "c"], 3, step)
    assert [n for n, i in seen if i == 0] == ["a", "b", "c"]
    assert [n for n, i in seen if i == 1] == ["b", "c", "a"]  # rotated; b fails here
    assert [n for n, i in seen if i == 2] == ["a", "c"]  # b left out afterwards


def test_ct2_vocabulary_made_injective(tmp_path):
    from t5rt.bench.peers import ct2_vocabulary, make_vocabulary_injective

    (tmp_path / "shared_vocabulary.json").write_text(json.dumps(["<pad>", "</s>", "a", "<x>", "<x>", "a"]))
    make_vocabulary_injective(tmp_path)
    v = ct2_vocabulary(tmp_path)
    assert len(v) == 6 and len(set(v)) == 6 and v[:4] == ["<pad>", "</s>", "a", "<x>"]


def test_unknown_model_is_a_clear_error(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-m", "t5rt.bench", "--model", "no-such-org/no-such-t5",
                        "--device", "cpu", "--cache-dir", str(tmp_path)], capture_output=True,
                       text=True, env=env, timeout=300)
    assert p.returncode == 2 and "is not a preset" in p.stderr and "Traceback" not in p.stderr
