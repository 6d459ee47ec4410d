"""t5rt serve without Ray: request parsing, error statuses and replica placement (pure functions).

The HTTP server itself, on a real local Ray cluster, is tests/test_serve.py.
"""

from __future__ import annotations

import json

import pytest

import t5rt
from t5rt.errors import RequestTooLargeError
from t5rt.serve import placement
from t5rt.serve.errors import AuthenticationError, ServiceUnavailableError
from t5rt.serve.protocol import (
    OPTION_NAMES,
    SSEReader,
    error_reply,
    parse_generate_request,
    sse_event,
)


def body(**doc):
    return json.dumps(doc).encode()


def test_every_generate_option_is_accepted_by_name():
    import dataclasses

    names = {f.name for f in dataclasses.fields(t5rt.GenerationConfig)} - {"logits_processors"}
    assert set(OPTION_NAMES) == names
    req = parse_generate_request(body(text="a", num_beams=4, num_return_sequences=2, length_penalty=0.5,
                                      early_stopping="never", bad_words_ids=[[5, 6]], max_new_tokens=7))
    assert req.texts == ["a"] and req.input_ids is None
    assert req.options == dict(num_beams=4, num_return_sequences=2, length_penalty=0.5, early_stopping="never",
                               bad_words_ids=[[5, 6]], max_new_tokens=7)
    assert req.call_args() == (["a"],) and "input_ids" not in req.call_kwargs()


def test_input_ids_rows_and_flat_list():
    assert parse_generate_request(body(input_ids=[[5, 6, 1], [7, 1]])).input_ids == [[5, 6, 1], [7, 1]]
    assert parse_generate_request(body(input_ids=[5, 6, 1])).input_ids == [[5, 6, 1]]


def test_sampling_without_seed_gets_one_so_retries_sample_the_same():
    req = parse_generate_request(body(text="a", do_sample=True))
    assert isinstance(req.options["seed"], int)
    assert parse_generate_request(body(text="a", do_sample=True, seed=7)).options["seed"] == 7
    assert "seed" not in parse_generate_request(body(text="a")).options


@pytest.mark.parametrize("raw, err, words", [
    (b"not json", t5rt.InvalidInputError, "not JSON"),
    (b"", t5rt.InvalidInputError, "empty"),
    (b"\xff\xfe", t5rt.InvalidInputError, "UTF-8"),
    (b"[1, 2]", t5rt.InvalidInputError, "JSON object"),
    (body(), t5rt.InvalidInputError, "no input"),
    (body(text="a", input_ids=[[1]]), t5rt.InvalidInputError, "not both"),
    (body(text=[]), t5rt.InvalidInputError, "empty list"),
    (body(text=" "), t5rt.InvalidInputError, "empty"),
    (body(text=5), t5rt.InvalidInputError, "string"),
    (body(input_ids=[[1, 2.5]]), t5rt.InvalidInputError, "integer"),
    (body(input_ids=[[1, True]]), t5rt.InvalidInputError, "integer"),
    (body(input_ids=[[]]), t5rt.InvalidInputError, "empty"),
    (body(text="a", nope=1), t5rt.InvalidOptionError, "unknown field"),
    (body(text="a", logits_processors=[]), t5rt.InvalidOptionError, "unknown field"),
    (body(text="a", num_beams=0), t5rt.InvalidOptionError, "num_beams"),
    (body(text="a", num_beams="4"), t5rt.InvalidOptionError, "num_beams"),
    (body(text="a", top_p=2.0), t5rt.InvalidOptionError, "top_p"),
    (body(text="a", early_stopping="sometimes"), t5rt.InvalidOptionError, "early_stopping"),
    (body(text="a", timeout=0), t5rt.InvalidOptionError, "timeout"),
])
def test_bad_requests_raise_the_error_generate_would(raw, err, words):
    with pytest.raises(err, match=words):
        parse_generate_request(raw)
    with pytest.raises(err):
        parse_generate_request(raw, stream=True)


def test_stream_takes_one_input_and_body_size_is_bounded():
    with pytest.raises(t5rt.InvalidInputError, match="one input"):
        parse_generate_request(body(text=["a", "b"]), stream=True)
    with pytest.raises(RequestTooLargeError):
        parse_generate_request(body(text="a" * 200), max_bytes=100)


@pytest.mark.parametrize("exc, status, retry", [
    (t5rt.InvalidInputError("x"), 400, None),
    (t5rt.InvalidOptionError("x"), 400, None),
    (RequestTooLargeError("x"), 413, None),
    (t5rt.errors.InvalidLogitsError("x"), 422, None),
    (AuthenticationError("x"), 401, None),
    (t5rt.OverloadedError("x"), 429, 1),
    (t5rt.RequestTimeoutError("x"), 504, None),
    (t5rt.RuntimeClosedError("x"), 503, 1),
    (ServiceUnavailableError("x"), 503, 1),
    (t5rt.BackendError("x"), 500, None),
    (KeyError("x"), 500, None),
])
def test_error_statuses(exc, status, retry):
    reply = error_reply(exc)
    assert (reply.status, reply.retry_after) == (status, retry)
    assert reply.doc()["error"]["type"] == (type(exc).__name__ if isinstance(exc, t5rt.T5rtError) else "InternalError")
    assert ("Retry-After" in reply.headers()) == (retry is not None)


def test_sse_event_is_one_data_line():
    ev = sse_event({"tokens": [1], "text": "a\nb", "finished": True})
    assert ev.endswith(b"\n\n") and ev.count(b"\n") == 2 and json.loads(ev[6:])["text"] == "a\nb"
    assert sse_event({"error": {}}, event="error").startswith(b"event: error\ndata: ")


def test_sse_reader_reads_what_sse_event_writes():
    stream = sse_event({"tokens": [1, 2], "text": "a", "finished": False}) + sse_event({"error": {"type": "X"}}, "error") \
        + sse_event({"tokens": [], "text": "", "finished": True})
    reader = SSEReader()
    got = [r for line in stream.splitlines(keepends=True) if (r := reader.feed(line)) is not None]
    assert got == [(None, {"tokens": [1, 2], "text": "a", "finished": False}), ("error", {"error": {"type": "X"}}),
                   (None, {"tokens": [], "text": "", "finished": True})]


# -- placement -------------------------------------------------------------------------------------

def test_two_cpu_replicas_fit_a_two_core_machine():
    p = placement.plan("auto", 2, [{"CPU": 2.0}])
    assert (p.device, p.num_cpus, p.num_gpus, p.threads, p.note) == ("cpu", 1.0, 0.0, 1, "")
    one = placement.plan("cpu", 1, [{"CPU": 16.0}])
    assert (one.num_cpus, one.threads) == (16.0, 16)


def test_cpu_share_packs_every_replica_on_uneven_nodes():
    for nodes, replicas in [([8, 8, 8], 4), ([2], 3), ([4, 2], 3), ([16, 4], 2), ([3], 2), ([1, 1, 1, 1], 4)]:
        share = placement.cpu_share(nodes, replicas)
        assert placement.fits(share, nodes, replicas)
        # no larger equal share fits (the candidates are node CPUs / k, to Ray's 4 decimals)
        bigger = [c / k for c in nodes for k in range(1, replicas + 1) if c / k > share + 1e-4]
        assert not any(placement.fits(b, nodes, replicas) for b in bigger), (nodes, replicas, share)
    p = placement.plan("cpu", 4, [{"CPU": 2.0}])
    assert p.num_cpus == 0.5 and p.threads == 1 and "contention" in p.note


def test_gpu_replicas_take_one_gpu_each():
    nodes = [{"CPU": 16.0, "GPU": 2.0}, {"CPU": 16.0, "GPU": 2.0}]
    p = placement.plan("auto", 4, nodes)
    assert (p.device, p.num_gpus, p.num_cpus) == ("cuda", 1.0, 1.0)
    assert p.ray_actor_options() == {"num_cpus": 1.0, "num_gpus": 1.0}
    with pytest.raises(t5rt.InvalidOptionError, match="5 GPU replica"):
        placement.plan("cuda", 5, nodes, fixed_cluster=True)
    grow = placement.plan("cuda", 5, nodes, fixed_cluster=False)
    assert grow.num_gpus == 1.0 and "wait" in grow.note
    with pytest.raises(t5rt.InvalidOptionError, match="GPU"):
        placement.plan("cuda", 1, [{"CPU": 2.0}])


def test_placement_rejects_what_cannot_fit_a_fixed_cluster():
    with pytest.raises(t5rt.InvalidOptionError, match="do not fit"):
        placement.plan("cpu", 3, [{"CPU": 2.0}], replica_cpus=1.0)
    assert "wait" in placement.plan("cpu", 3, [{"CPU": 2.0}], replica_cpus=1.0, fixed_cluster=False).note
    with pytest.raises(t5rt.InvalidOptionError):
        placement.plan("tpu", 1, [{"CPU": 2.0}])
    with pytest.raises(t5rt.InvalidOptionError):
        placement.plan("cpu", 0, [{"CPU": 2.0}])


def test_serve_is_not_imported_by_t5rt():
    import subprocess
    import sys

    code = "import sys, t5rt, t5rt.cli; t5rt.cli.build_parser('generate'); print('ray' in sys.modules, 't5rt.serve' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_serve_command_line_errors_are_one_line_before_ray_starts(tmp_path):
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "t5rt", "serve", *args], capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)

    p = run("--help")
    assert p.returncode == 0 and "--replicas" in p.stdout and "--address" in p.stdout and "--api-key" in p.stdout
    p = run(str(tmp_path / "nothing-here"))
    assert p.returncode == 1 and p.stderr.startswith("t5rt: error:") and len(p.stderr.splitlines()) == 1, p.stderr
    p = run(str(tmp_path), "--max-replicas", "2", "--min-replicas", "3")
    assert p.returncode == 1 and "min_replicas=3 exceeds max_replicas=2" in p.stderr, p.stderr
    p = run(str(tmp_path), "--replicas", "0")
    assert p.returncode == 1 and "replicas=0" in p.stderr, p.stderr
    assert "Ray" not in p.stderr  # refused before any cluster was started
