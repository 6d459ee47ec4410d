"""The model deployment: one replica = one t5rt runtime on one device (DESIGN.md §10).

The ingress calls it through a Ray Serve handle with a checked GenerateRequest. Errors a request
causes (bad input the export rejects, a full queue, a timeout) come back as an ErrorReply in the
result, not as exceptions through Ray, so they keep their type and status; an exception that
does reach the ingress means the replica itself failed. Every result carries the replica's
Runtime.stats() for the ingress's /metrics.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import Any

from ..errors import T5rtError
from .protocol import GenerateRequest, chunk_doc, error_reply, output_doc

STATS_KEYS = ("queue_depth", "slots_in_use", "tokens_per_s", "ttft_p50_s")


class T5Replica:
    """Ray Serve deployment class (wrapped by serve.deployment in app.py)."""

    def __init__(self, directory: str, runtime_options: dict[str, Any]):
        import t5rt

        self.rt = t5rt.load(directory, **runtime_options)
        self.name = f"{os.uname().nodename}:{os.getpid()}"

    # -- calls from the ingress ------------------------------------------------------------------
    async def generate(self, req: GenerateRequest) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            out = await self.rt.agenerate(*req.call_args(), **req.call_kwargs())
        except T5rtError as e:
            return {"error": error_reply(e), **self._info()}
        doc = output_doc(out)
        return {"ok": doc, "tokens": sum(len(s) for s in doc["sequences"]), "replica_s": time.perf_counter() - t0,
                "ttft_s": (out.timings or {}).get("ttft_s"), **self._info()}

    async def stream(self, req: GenerateRequest) -> AsyncIterator[dict[str, Any]]:
        """First item: {"started": True} once the request is accepted, or {"error": ...};
        then one {"chunk": {...}} per chunk of new tokens, the last one finished."""
        try:
            chunks = self.rt.astream(*req.call_args(), **req.call_kwargs())  # bad input raises here
        except T5rtError as e:
            yield {"error": error_reply(e), **self._info()}
            return
        yield {"started": True, **self._info()}
        try:
            async for chunk in chunks:
                yield {"chunk": chunk_doc(chunk)}
        except T5rtError as e:  # e.g. a timeout mid-stream
            yield {"error": error_reply(e), **self._info()}

    def stats(self) -> dict[str, Any]:
        return self._info()

    # -- the runtime ------------------------------------------------------------------------------
    def _info(self) -> dict[str, Any]:
        stats = self.rt.stats()
        return {"replica": self.name, "stats": {k: stats.get(k) for k in STATS_KEYS}}
