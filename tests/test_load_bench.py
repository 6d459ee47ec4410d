"""`python -m t5rt.bench --load` (issue 12 item 4): the request mix, the open-loop driver, the
solo-latency fit, and a brief real run on the CPU (the full run is the GPU's)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import numpy as np
import pytest

from t5rt.bench.load.driver import SoloModel, drive, saturated, summarize
from t5rt.bench.load.options import build_parser, options_from_args
from t5rt.bench.load.report import format_table
from t5rt.bench.load.targets import Outcome
from t5rt.bench.load.workload import DEFAULT_MIX, MODES, make_requests, poisson_arrivals

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import make_t5  # noqa: E402

MIX = tuple((m, 1) for m in MODES)


def test_requests_are_reproducible_mixed_and_forced():
    a = make_requests(60, src=(8, 256), new=(16, 128), mix=DEFAULT_MIX, vocab_size=32128, eos_token_id=1, seed=3)
    assert a == make_requests(60, src=(8, 256), new=(16, 128), mix=DEFAULT_MIX, vocab_size=32128,
                              eos_token_id=1, seed=3)
    assert {r.mode for r in a} == set(MODES)
    assert all(8 <= len(r.input_ids) <= 256 and r.input_ids[-1] == 1 for r in a)
    for r in a:
        o = r.options()
        assert 16 <= o["max_new_tokens"] == o["min_new_tokens"] <= 128
        assert ("seed" in o) == (r.mode == "sample")
        assert r.payload()["input_ids"] == [list(r.input_ids)]
    cyc = make_requests(6, src=(8, 9), new=(16, 17), mix=MIX, vocab_size=100, eos_token_id=1, seed=0, every_mode=True)
    assert [r.mode for r in cyc] == list(MODES) * 2


def test_poisson_arrivals_have_the_asked_rate():
    t = poisson_arrivals(50.0, 200.0, seed=1)
    assert abs(len(t) / 200.0 - 50.0) < 2.5
    gaps = np.diff(t)
    assert abs(gaps.mean() - 0.02) < 0.001 and abs(gaps.std() / gaps.mean() - 1.0) < 0.05  # exponential
    assert t == poisson_arrivals(50.0, 200.0, seed=1) and all(0 < x < 200 for x in t)


def test_solo_model_recovers_a_line_and_slowdown_uses_it():
    reqs = make_requests(40, src=(8, 9), new=(16, 128), mix=MIX, vocab_size=100, eos_token_id=1, seed=2)
    outs = []
    for r in reqs:
        a, b = {"greedy": (0.01, 0.001), "sample": (0.02, 0.002), "beam4": (0.05, 0.004)}[r.mode]
        outs.append(Outcome(r, start=0.0, first=0.001, end=a + b * r.new_tokens, tokens=r.new_tokens))
    solo = SoloModel.fit(outs)
    assert solo.coef["beam4"] == pytest.approx((0.05, 0.004), rel=1e-6)
    slow = [Outcome(o.req, 0.0, 0.001, 2 * o.end, o.tokens) for o in outs]
    row = summarize("t5rt", 10.0, slow, sent=40, elapsed=4.0, solo=solo, before=None, after=None)
    assert row["slowdown_p99"] == pytest.approx(2.0) and row["completed"] == 40 and row["throughput_rps"] == 10.0
    assert row["slowdown_p99_by_mode"].keys() == {"greedy", "sample", "beam4"}
    assert all(v == pytest.approx(2.0) for v in row["slowdown_p99_by_mode"].values())
    assert "beam4 2.0" in format_table([row])
    assert not saturated(row) and saturated(dict(row, unfinished=1))


def test_cli_rejects_bad_values():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--rates", "a,b"])
    with pytest.raises(Exception, match="rates"):
        options_from_args(build_parser().parse_args(["--rates", "0"]))
    with pytest.raises(Exception, match="systems"):
        options_from_args(build_parser().parse_args(["--systems", "vllm"]))
    for bad in ("gather_pools=yes", "no_such_option=1", "max_batch=1", "inflight=0"):
        with pytest.raises(Exception, match="--set"):
            options_from_args(build_parser().parse_args(["--set", bad]))


@pytest.fixture(scope="module")
def load_run(tmp_path_factory):
    """A brief real `--load` run on the CPU (all three systems); -> (its dir, stdout)."""
    d = tmp_path_factory.mktemp("load")
    make_t5(6).save_pretrained(d / "tiny")
    p = subprocess.run(
        [sys.executable, "-m", "t5rt.bench", "--load", "--model", str(d / "tiny"), "--device", "cpu",
         "--rates", "8,40", "--duration", "0.6", "--drain", "60", "--src", "4,30", "--new", "4,10",
         "--calibrate", "3", "--warmup", "1", "--cache-dir", str(d / "cache"), "--set", "gather_pools=1",
         "--json", str(d / "load.json"), "--plot", str(d / "load.png")],
        capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return d, p.stdout


def test_load_command_end_to_end(load_run):
    d, stdout = load_run
    doc = json.loads((d / "load.json").read_text())
    systems = {r["system"] for r in doc["rows"]}
    assert systems == {"t5rt", "t5rt-serial", "hf"}
    assert all(r["completed"] == r["sent"] for r in doc["rows"])
    assert set(doc["solo_model"]) == set(MODES)
    assert doc["options"]["switches"] == {"gather_pools": True}
    assert all(r["pools_per_step"] >= 1 for r in doc["rows"] if r["system"] == "t5rt")
    assert "throughput_ratio" in doc["summary"] or doc["summary"]["t5rt_rate_rps"] is None
    assert "| t5rt |" in stdout and (d / "load.png").stat().st_size > 1000


def test_open_loop_inflight_gives_the_serial_runtimes_tokens(load_run):
    from t5rt.bench.load.targets import RuntimeTarget

    export_dir = next((load_run[0] / "cache").glob("*/t5rt-*"))  # the run's own export
    reqs = make_requests(14, src=(4, 30), new=(4, 12), mix=MIX, vocab_size=384, eos_token_id=1, seed=5)
    arrivals = [0.01 * i for i in range(len(reqs))]  # a burst: they overlap in the batch
    got = {}
    for inflight in (True, False):
        target = RuntimeTarget(export_dir, inflight=inflight, backend="ort", device="cpu", threads=1)
        before = target.counters()
        outs, sent, elapsed = asyncio.run(drive(target, reqs, arrivals, drain_s=60))
        row = summarize(target.name, 100.0, outs, sent, elapsed, None, before, target.counters())
        target.close()
        assert row["completed"] == sent == len(reqs) and row["failed"] == 0
        assert all(o.tokens == o.req.new_tokens and o.ttft is not None and o.ttft <= o.latency for o in outs)
        got[inflight] = {o.req.id: o.sequence for o in outs}
        if inflight:
            assert row["rows_per_step"] > 2 and row["host_s_per_step"] > 0 and row["join_s_per_step"] > 0
            assert 1 <= row["pools_per_step"] <= row["rows_per_step"]  # each busy pool holds a row
            assert 0 < row["checks_per_step"] <= 1  # at most one host sync a pool step
    assert got[True] == got[False]
