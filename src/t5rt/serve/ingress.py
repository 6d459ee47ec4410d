"""The HTTP ingress deployment: auth, routes, JSON, metrics, and retries when a replica dies.

Ray Serve's proxy hands every HTTP request to `Ingress.__call__`; the ingress checks what it can
(API key first, then the JSON), and sends the request to the model deployment through a handle.
When the replica holding a request dies (killed, OOM, node lost), Ray raises an actor error here;
generate is idempotent (a sampling request without a seed got one at parse time), so the request
is sent again and lands on a live replica. A stream that had already sent tokens resumes: the new
attempt's tokens are compared by position and only the ones not yet sent go out.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..errors import RequestTooLargeError, T5rtError
from .errors import AuthenticationError, MethodNotAllowedError, NotFoundError, ServiceUnavailableError
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .protocol import ErrorReply, error_reply, parse_generate_request, sse_event

ROUTES = {"/v1/generate": "POST", "/v1/generate/stream": "POST", "/healthz": "GET", "/metrics": "GET"}
RETRY_BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0)
HEALTH_TIMEOUT_S = 5.0


def _replica_lost_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the replica went away", not "the request failed"."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    return (RayActorError, ActorDiedError, ActorUnavailableError)


class Ingress:
    """Ray Serve deployment class (wrapped by serve.deployment in app.py)."""

    def __init__(self, model: Any, api_key: str | None = None, retry_window_s: float = 60.0,
                 max_body_bytes: int = 1 << 20):
        self.model = model
        self.api_key = api_key.encode() if api_key else None
        self.retry_window_s = retry_window_s
        self.max_body_bytes = max_body_bytes
        self.metrics = Metrics()
        self.lost = _replica_lost_errors()

    async def __call__(self, request: Request) -> Response:
        t0 = time.perf_counter()
        path = request.url.path.rstrip("/") or "/"
        route = path if path in ROUTES else "other"
        try:
            self._authorize(request)
            if path not in ROUTES:
                raise NotFoundError(f"no route {path}; routes: {', '.join(ROUTES)}")
            if request.method != ROUTES[path]:
                raise MethodNotAllowedError(f"{path} takes {ROUTES[path]}, not {request.method}")
            if path == "/healthz":
                response = await self._healthz()
            elif path == "/metrics":
                response = Response(self.metrics.text(), media_type=CONTENT_TYPE_LATEST)
            elif path == "/v1/generate":
                response = await self._generate(request, t0)
            else:
                return await self._stream(request, t0)  # counted when the stream ends
        except T5rtError as e:
            response = self._error(e, route, t0)
        except self.lost as e:
            response = self._error(ServiceUnavailableError(f"no model replica answered: {e}"), route, t0)
        except Exception as e:  # noqa: BLE001 - a server fault: 500 with what happened
            response = self._error(e, route, t0)
        else:
            self.metrics.answered(route, response.status_code, time.perf_counter() - t0)
        return response

    # -- routes -----------------------------------------------------------------------------------
    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        got = request.headers.get("authorization", "")
        scheme, _, key = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.api_key):
            raise AuthenticationError("this server needs an API key: send the header 'Authorization: Bearer KEY'"
                                      if not got else "wrong API key in the Authorization header")

    async def _healthz(self) -> Response:
        """200 once a model replica answers (within HEALTH_TIMEOUT_S), else 503."""
        try:
            info = await asyncio.wait_for(self._call(lambda: self.model.stats.remote(),
                                                     deadline=time.monotonic() + HEALTH_TIMEOUT_S), HEALTH_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise ServiceUnavailableError(f"no model replica answered within {HEALTH_TIMEOUT_S:g} s "
                                          "(still loading, or all restarting)") from None
        return JSONResponse({"status": "ok", "replica": info["replica"]})

    async def _body(self, request: Request) -> bytes:
        """The request body, refused before it is read when its Content-Length is over the limit."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            raise RequestTooLargeError(f"request body is {length} bytes; this server takes at most "
                                       f"{self.max_body_bytes}")
        return await request.body()

    async def _generate(self, request: Request, t0: float) -> Response:
        req = parse_generate_request(await self._body(request), max_bytes=self.max_body_bytes)
        self.metrics.in_flight.inc()
        t1 = time.perf_counter()
        try:
            res = await self._call(lambda: self.model.generate.remote(req))
        finally:
            self.metrics.in_flight.dec()
        t2 = time.perf_counter()
        self.metrics.replica_stats(res["replica"], res["stats"])
        if "error" in res:
            raise _Replied(res["error"])
        self.metrics.tokens.inc(res["tokens"])
        if res.get("ttft_s") is not None:
            self.metrics.ttft.observe(res["ttft_s"])
        # where the time went (ms): parsing here, the call to the model deployment, inside the replica
        timing = (f"parse;dur={1e3 * (t1 - t0):.2f}, model;dur={1e3 * (t2 - t1):.2f}, "
                  f"replica;dur={1e3 * res['replica_s']:.2f}")
        return JSONResponse(res["ok"], headers={"Server-Timing": timing})

    async def _stream(self, request: Request, t0: float) -> Response:
        route = "/v1/generate/stream"
        try:
            req = parse_generate_request(await self._body(request), stream=True, max_bytes=self.max_body_bytes)
            items = await self._open_stream(req)
        except T5rtError as e:
            return self._error(e, route, t0)
        except Exception as e:  # noqa: BLE001
            return self._error(e, route, t0)
        return StreamingResponse(self._relay(req, items, t0), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    # -- streaming --------------------------------------------------------------------------------
    async def _open_stream(self, req: Any) -> Any:
        """A started stream on some replica (its first item was {"started": True}); errors raise."""
        deadline = time.monotonic() + self.retry_window_s
        for attempt in range(1 << 30):
            items = self.model.options(stream=True).stream.remote(req)
            try:
                first = await items.__anext__()
            except self.lost as e:
                await self._backoff(attempt, deadline, e)
                continue
            self.metrics.replica_stats(first["replica"], first["stats"])
            if "error" in first:
                raise _Replied(first["error"])
            return items
        raise AssertionError("unreachable")

    async def _relay(self, req: Any, items: Any, t0: float) -> AsyncIterator[bytes]:
        route = "/v1/generate/stream"
        sent_tokens: list[int] = []
        sent_text = ""
        deadline = time.monotonic() + self.retry_window_s
        attempt = 0
        self.metrics.in_flight.inc()
        try:
            while True:
                tokens: list[int] = []  # this attempt's tokens and text so far
                text = ""
                try:
                    async for item in items:
                        if "error" in item:
                            err = item["error"]
                            self._count_error(route, err, t0)
                            yield sse_event(err.doc(), event="error")
                            return
                        chunk = item["chunk"]
                        tokens += chunk["tokens"]
                        text += chunk["text"] or ""
                        new_tokens = tokens[len(sent_tokens):]
                        if not new_tokens and not chunk["finished"]:
                            continue  # a resumed stream catching up with what was sent
                        if not sent_tokens and new_tokens:
                            self.metrics.ttft.observe(time.perf_counter() - t0)
                        doc = {"tokens": new_tokens, "text": text[len(sent_text):], "finished": chunk["finished"]}
                        sent_tokens, sent_text = sent_tokens + new_tokens, max(sent_text, text, key=len)
                        self.metrics.tokens.inc(len(new_tokens))
                        yield sse_event(doc)
                    self.metrics.answered(route, 200, time.perf_counter() - t0)
                    return
                except self.lost as e:
                    try:
                        await self._backoff(attempt, deadline, e)
                        attempt += 1
                        items = await self._open_stream(req)
                    except T5rtError as err:
                        reply = error_reply(err)
                        self._count_error(route, reply, t0)
                        yield sse_event(reply.doc(), event="error")
                        return
                except Exception as e:  # noqa: BLE001 - a server fault mid-stream: say so, then end
                    reply = error_reply(e)
                    self._count_error(route, reply, t0)
                    yield sse_event(reply.doc(), event="error")
                    return
        finally:
            self.metrics.in_flight.dec()
            cancel = getattr(items, "cancel", None)
            if callable(cancel):  # a client that went away: the replica stops decoding for nobody
                try:
                    cancel()
                except Exception:  # noqa: BLE001 - already finished or already gone
                    pass

    # -- calls and errors -------------------------------------------------------------------------
    async def _call(self, send: Any, deadline: float | None = None) -> Any:
        """`await send()`, sent again while the replica it reached died, up to the retry window."""
        deadline = time.monotonic() + self.retry_window_s if deadline is None else deadline
        for attempt in range(1 << 30):
            try:
                return await send()
            except self.lost as e:
                await self._backoff(attempt, deadline, e)
        raise AssertionError("unreachable")

    async def _backoff(self, attempt: int, deadline: float, cause: BaseException) -> None:
        if time.monotonic() >= deadline:
            raise ServiceUnavailableError(f"no model replica answered within {self.retry_window_s:g} s "
                                          f"(last: {type(cause).__name__})")
        self.metrics.retries.inc()
        await asyncio.sleep(RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)])

    def _count_error(self, route: str, reply: ErrorReply, t0: float) -> None:
        self.metrics.answered(route, reply.status, time.perf_counter() - t0, reply.type)

    def _error(self, exc: BaseException, route: str, t0: float) -> Response:
        reply = exc.reply if isinstance(exc, _Replied) else _backpressure_reply(exc) or error_reply(exc)
        self._count_error(route, reply, t0)
        return JSONResponse(reply.doc(), status_code=reply.status, headers=reply.headers())


class _Replied(T5rtError):
    """An ErrorReply the model replica sent back, raised to leave the route."""

    def __init__(self, reply: ErrorReply):
        super().__init__(reply.message)
        self.reply = reply


def _backpressure_reply(exc: BaseException) -> ErrorReply | None:
    """Ray Serve's own queue limit (max_queued_requests) -> 503 with Retry-After, as overload."""
    from ray.serve.exceptions import BackPressureError

    if not isinstance(exc, BackPressureError):
        return None
    return ErrorReply(503, "OverloadedError", f"the service is overloaded ({exc}); retry later",
                      max(1, int(exc.retry_after_s or 1)))
