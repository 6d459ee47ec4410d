"""The load bench's HTTP target: the same requests POSTed to `t5rt serve` (`--url`, `--serve N`).

`HTTPTarget.run` streams each request from /v1/generate/stream (the first event with tokens is
the client's time to first token, as `rt.astream` is in-process), over one aiohttp session with
keep-alive connections. `overhead()` matches the HTTP and in-process outcomes of the same
requests (same ids, same seeds) and reports what the HTTP path adds: the median and p99 of the
per-request latency difference, and whether the tokens agree (the same model was served).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...serve.protocol import SSEReader
from .targets import Outcome
from .workload import LoadRequest


def http_target(opts: Any, export_dir: Path, device: str, log: Callable[[str], None]) -> "HTTPTarget":
    """The "http" system of a load run: opts.url, or a `t5rt serve` started on the bench's export."""
    if opts.url is not None:
        log(f"[load] http: driving {opts.url}; it must serve this export: t5rt serve {export_dir}")
        return HTTPTarget(opts.url, opts.api_key)
    from ...serve.local import LocalServer

    log(f"[load] http: starting t5rt serve {export_dir} --replicas {opts.serve} --device {device}")
    server = LocalServer(export_dir, replicas=opts.serve, device=device, extra_args=("--backend", opts.backend))
    return HTTPTarget(server.url, server=server)


class HTTPTarget:
    def __init__(self, url: str, api_key: str | None = None, name: str = "http", server: Any = None):
        self.name, self.url = name, url.rstrip("/")
        self.server = server  # a LocalServer this target started (stopped by close())
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._session: Any = None
        self._loop: Any = None

    async def _http(self) -> Any:
        """One keep-alive session per event loop (the bench runs one asyncio.run per rate)."""
        import aiohttp  # comes with ray[serve] (the `serve` extra)

        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop:
            self._drop()
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                                  timeout=aiohttp.ClientTimeout(total=None))
            self._loop = loop
        return self._session

    def _drop(self) -> None:
        """Forget a session whose loop has ended, closing its sockets (its loop cannot run close())."""
        if self._session is not None and not self._session.closed:
            close = getattr(self._session.connector, "_close", None)
            if close is not None:
                close()
            self._session.detach()
        self._session = self._loop = None

    async def run(self, req: LoadRequest) -> Outcome:
        out = Outcome(req, time.perf_counter())
        seq: list[int] = []
        try:
            http = await self._http()
            async with http.post(self.url + "/v1/generate/stream", data=json.dumps(req.payload()),
                                 headers=self.headers) as resp:
                if resp.status != 200:
                    out.error = f"HTTP {resp.status}: {(await resp.text())[:300]}"
                else:
                    sse = SSEReader()
                    async for raw in resp.content:
                        got = sse.feed(raw)
                        if got is None:
                            continue
                        event, doc = got
                        if event == "error":
                            out.error = f"{doc['error']['type']}: {doc['error']['message']}"
                            break
                        if doc["tokens"] and out.first is None:
                            out.first = time.perf_counter()
                        seq += doc["tokens"]
                        if doc["finished"]:
                            break
        except Exception as e:  # noqa: BLE001 - reported per request (connection refused, reset, ...)
            out.error = f"{type(e).__name__}: {e}"
        out.end = time.perf_counter()
        out.sequence, out.tokens = seq, len(seq)
        return out

    def counters(self) -> dict[str, Any] | None:
        return None

    def close(self) -> None:
        self._drop()
        if self.server is not None:
            self.server.stop()


def overhead(local: list[Outcome], remote: list[Outcome]) -> dict[str, Any]:
    """Per-request latency and TTFT added by the HTTP path (the same requests both ways)."""
    from ..timing import percentile

    by_id = {o.req.id: o for o in local if o.latency is not None}
    pairs = [(by_id[o.req.id], o) for o in remote if o.latency is not None and o.req.id in by_id]
    lat = sorted(r.latency - l.latency for l, r in pairs)
    ttft = sorted(r.ttft - l.ttft for l, r in pairs if r.ttft is not None and l.ttft is not None)
    return dict(pairs=len(pairs),
                overhead_p50_s=percentile(lat, 50) if lat else None,
                overhead_p99_s=percentile(lat, 99) if lat else None,
                ttft_overhead_p50_s=percentile(ttft, 50) if ttft else None,
                tokens_agree=sum(l.sequence == r.sequence for l, r in pairs) / len(pairs) if pairs else None)
