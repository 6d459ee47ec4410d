"""A small Python client of `t5rt serve` (standard library only; one keep-alive connection per thread).

    from t5rt.serve.client import Client
    c = Client("http://127.0.0.1:8000", api_key=None)
    c.generate(text=["translate English to German: Hi."], num_beams=4)  # {"sequences", "texts", "scores"}
    for event in c.stream(text="summarize: ...", max_new_tokens=64):   # {"tokens", "text", "finished"}
        print(event["text"], end="", flush=True)

An error response raises ServerError with the status and the server's error type and message.
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

from ..errors import T5rtError
from .protocol import SSEReader


class ServerError(T5rtError):
    """The server answered with an error document {"error": {"type", "message"}}."""

    def __init__(self, status: int, type_: str, message: str, retry_after: str | None = None):
        super().__init__(f"HTTP {status} {type_}: {message}")
        self.status, self.type, self.message, self.retry_after = status, type_, message, retry_after


class Client:
    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 300.0):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"url {url!r} must look like http://HOST:PORT")
        self.scheme, self.host, self.port = u.scheme, u.hostname, u.port or (443 if u.scheme == "https" else 80)
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout
        self._local = threading.local()

    # -- API --------------------------------------------------------------------------------------
    def generate(self, text: str | list[str] | None = None, *, input_ids: list[list[int]] | None = None,
                 **options: Any) -> dict[str, Any]:
        """POST /v1/generate -> {"sequences", "texts", "scores"}."""
        return json.loads(self.request("POST", "/v1/generate", _body(text, input_ids, options)))

    def stream(self, text: str | None = None, *, input_ids: list[list[int]] | None = None,
               **options: Any) -> Iterator[dict[str, Any]]:
        """POST /v1/generate/stream -> the events' documents, the last one finished. An error
        event raises ServerError."""
        conn = self._new_connection()
        try:
            conn.request("POST", "/v1/generate/stream", _body(text, input_ids, options), self.headers)
            resp = conn.getresponse()
            if resp.status != 200:
                _raise(resp.status, resp.read(), resp.getheader("Retry-After"))
            sse = SSEReader()
            for raw in resp:
                got = sse.feed(raw)
                if got is None:
                    continue
                event, doc = got
                if event == "error":
                    err = doc.get("error", {})
                    raise ServerError(200, err.get("type", "?"), err.get("message", ""))
                yield doc
                if doc.get("finished"):
                    return
        finally:
            conn.close()

    def health(self) -> dict[str, Any]:
        return json.loads(self.request("GET", "/healthz"))

    def metrics(self) -> str:
        return self.request("GET", "/metrics").decode()

    def request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        """One request on this thread's connection (reconnects once if the server closed it)."""
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, path, body, self.headers)
                resp = conn.getresponse()
                data = resp.read()
            except Exception as e:
                self._local.conn = None  # a failed exchange leaves the connection unusable
                conn.close()
                if attempt or not isinstance(e, (http.client.RemoteDisconnected, ConnectionResetError,
                                                 BrokenPipeError)):
                    raise
                continue
            if resp.status >= 400:
                _raise(resp.status, data, resp.getheader("Retry-After"))
            return data
        raise AssertionError("unreachable")

    # -- connections ------------------------------------------------------------------------------
    def _new_connection(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=self.timeout)

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._new_connection()
        return conn


def _body(text: Any, input_ids: Any, options: dict[str, Any]) -> bytes:
    doc = dict(options)
    if text is not None:
        doc["text"] = text
    if input_ids is not None:
        doc["input_ids"] = input_ids
    return json.dumps(doc).encode()


def _raise(status: int, data: bytes, retry_after: str | None) -> None:
    try:
        err = json.loads(data)["error"]
        raise ServerError(status, err["type"], err["message"], retry_after)
    except (ValueError, KeyError, TypeError):
        raise ServerError(status, "?", data[:500].decode(errors="replace"), retry_after) from None
