"""`t5rt serve` end to end: a real local Ray cluster started by the command itself, 2 CPU replicas.

One server is shared by the module (Ray start-up is slow); it is stopped at the end, and every
process of its session (Ray's GCS, raylet, workers) is killed if it outlives the stop. Every
answer is compared with Runtime.generate() on the same export; traffic only goes to 127.0.0.1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import SPIECE, make_t5
from t5rt.serve.local import LocalServer

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="ray[serve] is not installed (pip install -e '.[serve]')")

API_KEY = "test-key-123"
REPLICAS = 2
START_TIMEOUT_S = 180
TEXTS = ["translate English to German: That is good.", "summarize: the cat sat on the mat and looked around",
         "hello world", "question: what is t5? context: a text to text model"]
# mixed generate() options; each request is also run through Runtime.generate() for the answer
MIXED = [
    {},
    {"num_beams": 4},
    {"num_beams": 3, "num_return_sequences": 2, "length_penalty": 0.6},
    {"num_beams": 2, "early_stopping": True},
    {"num_beams": 4, "early_stopping": "never", "no_repeat_ngram_size": 2},
    {"do_sample": True, "seed": 11, "top_k": 20},
    {"do_sample": True, "seed": 5, "top_p": 0.8, "temperature": 0.7},
    {"do_sample": True, "seed": 3, "num_return_sequences": 2},
    {"repetition_penalty": 1.3, "min_new_tokens": 5},
    {"no_repeat_ngram_size": 3, "bad_words_ids": [[1465], [3, 4]]},
    {"output_scores": True},
]


class Server:
    """The shared server, with the test's HTTP helpers."""

    def __init__(self, local: LocalServer):
        self.local, self.url, self.proc = local, local.url, local.proc

    def call(self, method: str, path: str, body: bytes | None = None, key: str | None = API_KEY,
             timeout: float = 120) -> tuple[int, dict, bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if key is not None:
            req.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def generate(self, doc: dict, path: str = "/v1/generate") -> tuple[int, dict]:
        status, _, data = self.call("POST", path, json.dumps(doc).encode())
        return status, json.loads(data) if status != 200 or path == "/v1/generate" else data

    def stream(self, doc: dict) -> list[dict]:
        status, headers, data = self.call("POST", "/v1/generate/stream", json.dumps(doc).encode())
        assert status == 200, data
        assert headers.get("content-type", "").startswith("text/event-stream")
        events = [json.loads(ln[5:]) for ln in data.decode().splitlines() if ln.startswith("data:")]
        assert "event: error" not in data.decode(), data
        return events

    def metrics(self) -> str:
        status, _, data = self.call("GET", "/metrics")
        assert status == 200
        return data.decode()

    def log_tail(self) -> str:
        return self.local.log_tail()


def _metric(text: str, name: str) -> float:
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(name + " ")
               or ln.startswith(name + "{"))


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    if not SPIECE.is_file():
        pytest.skip(f"{SPIECE} is missing (T5's sentencepiece model, for text requests)")
    from t5rt.exporters.options import ExportOptions
    from t5rt.exporters.pipeline import export

    root = tmp_path_factory.mktemp("serve")
    model = make_t5(seed=3, vocab_size=32128, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    model.save_pretrained(root / "model")
    shutil.copy(SPIECE, root / "model" / "spiece.model")
    export(str(root / "model"), root / "export", ExportOptions(max_input_len=32, max_output_len=32, validate=False),
           log=lambda *a, **k: None)
    return root / "export"


@pytest.fixture(scope="module")
def reference(export_dir):
    """Runtime.generate() on the same export, CPU, one thread as each replica."""
    import t5rt

    rt = t5rt.load(export_dir, backend="ort", device="cpu", threads=1)
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def server(export_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    local = LocalServer(export_dir, replicas=REPLICAS, device="cpu", api_key=API_KEY, log=log,
                        extra_args=("--backend", "ort", "--api-key", API_KEY), start_timeout_s=START_TIMEOUT_S)
    try:
        yield Server(local)
    finally:
        local.stop()


def _expected(rt, doc: dict):
    doc = dict(doc)
    if "text" in doc:
        return rt.generate(doc.pop("text"), **doc)
    return rt.generate(input_ids=doc.pop("input_ids"), **doc)


def _assert_same(got: dict, want) -> None:
    assert got["sequences"] == want.sequences
    assert got["texts"] == want.texts
    assert got["scores"] == pytest.approx(want.scores, rel=1e-5, abs=1e-5)
    if want.token_scores is not None:
        assert len(got["token_scores"]) == len(want.token_scores)
        for g, w in zip(got["token_scores"], want.token_scores):
            assert g == pytest.approx(w, rel=1e-5, abs=1e-5)


def _mixed_requests(n: int) -> list[dict]:
    reqs = []
    for i in range(n):
        doc = dict(MIXED[i % len(MIXED)], max_new_tokens=8 + i % 13)
        if i % 5 == 4:
            doc["input_ids"] = [[37 + i, 8, 1], [5, 600 + i, 33, 21, 1]]  # ragged, as generate() pads
        elif i % 3 == 2:
            doc["text"] = [TEXTS[i % 4], TEXTS[(i + 1) % 4]]
        else:
            doc["text"] = TEXTS[i % 4]
        reqs.append(doc)
    return reqs


def test_concurrent_mixed_requests_equal_generate(server, reference):
    reqs = _mixed_requests(36)
    with ThreadPoolExecutor(len(reqs)) as ex:
        answers = list(ex.map(server.generate, reqs))
    for doc, (status, got) in zip(reqs, answers):
        assert status == 200, (doc, got)
        _assert_same(got, _expected(reference, doc))


def test_stream_events_add_up_to_generate(server, reference):
    for doc in ({"text": TEXTS[0], "max_new_tokens": 20}, {"input_ids": [[5, 6, 7, 1]], "max_new_tokens": 12},
                {"text": TEXTS[1], "num_beams": 3, "max_new_tokens": 10},
                {"text": TEXTS[2], "do_sample": True, "seed": 4, "max_new_tokens": 16}):
        events = server.stream(doc)
        want = _expected(reference, doc)
        assert events and events[-1]["finished"] and not any(e["finished"] for e in events[:-1])
        assert [t for e in events for t in e["tokens"]] == want.sequences[0]
        if want.texts is not None:
            assert "".join(e["text"] or "" for e in events) == want.texts[0]


@pytest.mark.parametrize("path", ["/v1/generate", "/v1/generate/stream"])
@pytest.mark.parametrize("raw, err", [
    (b"{not json", "InvalidInputError"),
    (json.dumps({"text": "a", "num_beams": 0}).encode(), "InvalidOptionError"),
    (json.dumps({"text": " ".join(["word"] * 100)}).encode(), "InvalidInputError"),  # > max_input_len 32
    (json.dumps({"input_ids": [list(range(2, 60))]}).encode(), "InvalidInputError"),
    (json.dumps({"max_new_tokens": 5}).encode(), "InvalidInputError"),                 # no input
    (json.dumps({"text": "a", "beams": 2}).encode(), "InvalidOptionError"),           # unknown option
    (json.dumps({"text": "a", "max_new_tokens": 500}).encode(), "InvalidOptionError"),  # > max_output_len
    (json.dumps({"input_ids": [[40000, 1]]}).encode(), "InvalidInputError"),          # outside the vocab
    (json.dumps({"text": "a", "top_p": "high"}).encode(), "InvalidOptionError"),
    (json.dumps({"text": "a" * (1 << 20)}).encode(), "RequestTooLargeError"),        # over 1 MiB: 413
])
def test_bad_requests_get_4xx_json_errors(server, path, raw, err):
    status, headers, data = server.call("POST", path, raw)
    assert 400 <= status < 500, (status, data)
    assert headers.get("content-type", "").startswith("application/json")
    doc = json.loads(data)
    assert doc["error"]["type"] == err and doc["error"]["message"], doc


def test_wrong_route_and_method(server):
    status, _, data = server.call("GET", "/v1/generate")
    assert status == 405 and json.loads(data)["error"]["type"] == "MethodNotAllowedError"
    status, _, data = server.call("GET", "/v2/nothing")
    assert status == 404 and json.loads(data)["error"]["type"] == "NotFoundError"


def test_api_key_is_required_and_a_refused_request_does_no_work(server):
    server.generate({"text": "warm up", "max_new_tokens": 4})
    before = server.metrics()
    body = json.dumps({"text": TEXTS[0], "max_new_tokens": 16}).encode()
    for key in (None, "wrong-key", ""):
        for method, path, b in (("POST", "/v1/generate", body), ("POST", "/v1/generate/stream", body),
                                ("GET", "/metrics", None), ("GET", "/healthz", None)):
            status, _, data = server.call(method, path, b, key=key)
            assert status == 401, (key, path, data)
            assert json.loads(data)["error"]["type"] == "AuthenticationError"
    after = server.metrics()
    assert _metric(after, "t5rt_generated_tokens_total") == _metric(before, "t5rt_generated_tokens_total")
    ok = 't5rt_requests_total{route="/v1/generate",status="200"}'
    assert _metric(after, ok) == _metric(before, ok)


def test_metrics_answer_in_prometheus_text(server):
    server.generate({"text": TEXTS[0], "max_new_tokens": 6})
    server.stream({"text": TEXTS[1], "max_new_tokens": 6})
    text = server.metrics()
    for name in ("t5rt_requests_total", "t5rt_errors_total", "t5rt_generated_tokens_total",
                 "t5rt_request_latency_seconds_bucket", "t5rt_time_to_first_token_seconds_bucket",
                 "t5rt_queue_depth", "t5rt_slots_in_use", "t5rt_requests_in_flight"):
        assert name in text, name
    assert _metric(text, 't5rt_requests_total{route="/v1/generate",status="200"}') >= 1
    assert _metric(text, "t5rt_time_to_first_token_seconds_count") >= 1
    assert _metric(text, "t5rt_generated_tokens_total") > 0


KILL_AT_S, LOAD_FOR_S = 1.0, 3.0  # senders keep requests flowing for LOAD_FOR_S; a replica dies at KILL_AT_S


def test_killing_a_replica_mid_load_loses_no_request(server, reference):
    """44 senders send back to back (40 mixed /v1/generate, 4 streams) for LOAD_FOR_S, so both
    replicas hold requests whenever one is killed; every answer must still be right."""
    victims = server.local.model_replicas()
    assert len(victims) == REPLICAS, victims
    retries_before = _metric(server.metrics(), "t5rt_retries_total")
    reqs = [dict(d, max_new_tokens=24) for d in _mixed_requests(40)]
    streams = [{"text": TEXTS[i % 4], "max_new_tokens": 24, "num_beams": 1 + i % 2} for i in range(4)]
    stop_at = time.monotonic() + LOAD_FOR_S

    def keep_sending(send, doc):
        got = [send(doc)]
        while time.monotonic() < stop_at:
            got.append(send(doc))
        return got

    with ThreadPoolExecutor(len(reqs) + len(streams)) as ex:
        futs = [ex.submit(keep_sending, server.generate, d) for d in reqs]
        sfuts = [ex.submit(keep_sending, server.stream, d) for d in streams]
        time.sleep(KILL_AT_S)
        os.kill(victims[0], signal.SIGKILL)
        answers = [f.result(timeout=180) for f in futs]
        stream_events = [f.result(timeout=180) for f in sfuts]
    for doc, got in zip(reqs, answers):
        want = _expected(reference, doc)
        for status, one in got:
            assert status == 200, (doc, one)
            _assert_same(one, want)
    for doc, got in zip(streams, stream_events):
        want = _expected(reference, doc).sequences[0]
        for events in got:
            assert [t for e in events for t in e["tokens"]] == want
    assert _metric(server.metrics(), "t5rt_retries_total") > retries_before, "no request was on the killed replica"
    deadline = time.monotonic() + 90  # Ray Serve starts a replacement
    while len(now := server.local.model_replicas()) < REPLICAS or victims[0] in now:
        assert time.monotonic() < deadline, f"replica not replaced: {now}\n{server.log_tail()}"
        time.sleep(1)
    status, got = server.generate({"text": TEXTS[0], "max_new_tokens": 8})
    assert status == 200 and got["sequences"] == _expected(reference, {"text": TEXTS[0], "max_new_tokens": 8}).sequences


def test_load_bench_http_target_matches_in_process(server, export_dir):
    """The load bench's HTTP target (`python -m t5rt.bench --load --url/--serve`) on the shared
    server: the same requests in-process and over HTTP give the same tokens, paired by id."""
    import asyncio

    from t5rt.bench.load.driver import closed_loop
    from t5rt.bench.load.http import HTTPTarget, overhead
    from t5rt.bench.load.targets import RuntimeTarget
    from t5rt.bench.load.workload import make_requests

    reqs = make_requests(9, src=(4, 20), new=(4, 12), mix=(("greedy", 1), ("sample", 1), ("beam4", 1)),
                         vocab_size=32128, eos_token_id=1, seed=5)
    http = HTTPTarget(server.url, api_key=API_KEY)
    local = RuntimeTarget(export_dir, inflight=True, backend="ort", device="cpu", threads=1)
    try:
        remote = asyncio.run(closed_loop(http, reqs))
        near = asyncio.run(closed_loop(local, reqs))
    finally:
        http.close()
        local.close()
    assert all(o.error is None and o.first is not None for o in remote), [o.error for o in remote]
    summary = overhead(near, remote)
    assert summary["pairs"] == len(reqs) and summary["tokens_agree"] == 1.0, summary
    assert summary["overhead_p50_s"] is not None


def test_overload_is_refused_with_retry_after(export_dir, reference, tmp_path):
    """Tiny limits (1 replica, 2 requests in flight, 1 waiting): a burst is partly refused with
    503/429 + Retry-After and an OverloadedError document; what is accepted is answered right."""
    args = ("--backend", "ort", "--max-queue", "1", "--max-ongoing-requests", "2", "--max-queued-requests", "1")
    with LocalServer(export_dir, replicas=1, device="cpu", extra_args=args, log=tmp_path / "server.log",
                     start_timeout_s=START_TIMEOUT_S) as local:
        srv = Server(local)
        docs = [{"text": TEXTS[i % 4], "max_new_tokens": 24, "min_new_tokens": 24, "num_beams": 2} for i in range(16)]
        with ThreadPoolExecutor(len(docs)) as ex:
            answers = list(ex.map(lambda d: srv.call("POST", "/v1/generate", json.dumps(d).encode(), key=None), docs))
    refused = [(s, h, b) for s, h, b in answers if s != 200]
    assert refused, "no request was refused"
    for status, headers, data in refused:
        assert status in (429, 503), (status, data)
        assert int(headers.get("Retry-After", headers.get("retry-after"))) >= 1
        assert json.loads(data)["error"]["type"] == "OverloadedError"
    for doc, (status, _, data) in zip(docs, answers):
        if status == 200:
            _assert_same(json.loads(data), _expected(reference, doc))


def test_a_stream_resumes_without_repeats_when_its_replica_dies(reference):
    """The ingress's resume logic, on the real chunks of a runtime stream: the first attempt's
    replica dies after two chunks (a stand-in for the Ray Serve handle raises Ray's
    ActorDiedError there), the second attempt replays from the start, and the client still gets
    each token and each piece of text exactly once."""
    import asyncio

    from ray.exceptions import ActorDiedError

    from t5rt.serve.ingress import Ingress
    from t5rt.serve.protocol import SSEReader, chunk_doc, parse_generate_request

    doc = {"text": TEXTS[0], "max_new_tokens": 24}
    chunks = [chunk_doc(c) for c in reference.stream(TEXTS[0], max_new_tokens=24)]
    assert len(chunks) >= 3, "too few chunks to cut the stream in the middle"
    want = _expected(reference, doc)

    class DyingHandle:  # .options(stream=True).stream.remote(req) as on a DeploymentHandle
        attempts = 0

        def options(self, stream):
            return self

        @property
        def stream(self):
            return self

        def remote(self, req):
            self.attempts += 1
            return self._items(dies=self.attempts == 1)

        async def _items(self, dies):
            yield {"started": True, "replica": f"r{self.attempts}", "stats": {}}
            for i, c in enumerate(chunks):
                if dies and i == 2:
                    raise ActorDiedError()
                yield {"chunk": c}

    async def relay():
        ingress = Ingress(DyingHandle())
        req = parse_generate_request(json.dumps(doc).encode(), stream=True)
        items = await ingress._open_stream(req)
        return [part async for part in ingress._relay(req, items, time.perf_counter())], ingress

    parts, ingress = asyncio.run(relay())
    reader = SSEReader()
    events = [ev for line in b"".join(parts).splitlines(keepends=True) if (ev := reader.feed(line)) is not None]
    assert all(name is None for name, _ in events), events
    docs = [d for _, d in events]
    assert [t for d in docs for t in d["tokens"]] == want.sequences[0]
    assert "".join(d["text"] for d in docs) == want.texts[0]
    assert docs[-1]["finished"] and ingress.model.attempts == 2
    assert _metric(ingress.metrics.text().decode(), "t5rt_retries_total") == 1
