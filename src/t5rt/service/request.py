"""One request as the scheduler sees it: checked inputs, its options, its future and its sinks.

A `Request` is built in the caller's thread (every validation error raises there), enqueued,
and from then on touched only by the scheduler thread, except for three thread-safe exits:
`future` (concurrent.futures: `cancel()` from any thread), `channel` (streamed chunks) and
`deadline` (read-only). The scheduler finishes a request exactly once with `finish` / `fail`.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import RequestTimeoutError
from ..generation_config import GenerationConfig

_ids = itertools.count()


@dataclass
class StreamChunk:
    """New output of one streamed input: token ids in order, their text (with a tokenizer), and
    whether this is the last chunk. The chunks' tokens concatenate to generate(...).sequences[0]."""

    tokens: list[int]
    text: str | None = None
    finished: bool = False


class Channel:
    """Chunks from the scheduler thread to one consumer, sync (`get`) or asyncio (`aget`).

    put() never blocks the scheduler; the consumer side waits on a Condition (threads) or on an
    asyncio.Event set through the consumer's loop (bound on its first `aget`).
    """

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._cv = threading.Condition()
        self._loop: Any = None
        self._event: Any = None

    def put(self, item: Any) -> None:
        """item: a StreamChunk, or an exception to raise in the consumer (ends the stream)."""
        with self._cv:
            self._items.append(item)
            self._cv.notify_all()
            loop, event = self._loop, self._event
        if loop is not None:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the consumer's loop is closed: nobody is listening
                pass

    def get(self) -> Any:
        with self._cv:
            while not self._items:
                self._cv.wait()
            return self._items.popleft()

    async def aget(self) -> Any:
        import asyncio

        with self._cv:
            if self._loop is None:
                self._loop, self._event = asyncio.get_running_loop(), asyncio.Event()
        while True:
            with self._cv:
                if self._items:
                    return self._items.popleft()
                self._event.clear()
            await self._event.wait()


@dataclass(eq=False)
class Request:
    """One generate() call: inputs [B, s] (host int64, right padded), its config, its future."""

    input_ids: np.ndarray               # [B, s] int64
    attention_mask: np.ndarray          # [B, s] int64
    config: GenerationConfig
    max_new_tokens: int
    future: Future = field(default_factory=Future)
    timeout: float | None = None        # seconds from submission
    channel: Channel | None = None      # streaming: chunks of input 0 ...
    writer: Any = None                  # ... written by this StreamWriter (scheduler thread)
    submitted: float = field(default_factory=time.perf_counter)
    id: int = field(default_factory=lambda: next(_ids))
    first_token_at: float | None = None  # when its first chosen token was seen on the host
    owner: Any = field(default=None, repr=False)  # the Runtime: alive while it has requests
    cancelled: bool = False             # set by the future's callback when its caller cancels

    def __post_init__(self) -> None:
        # the scheduler asks every step whether a request was cancelled; a plain attribute set by
        # the future's callback spares it the future's lock per waiting request (an H100 profile
        # had 300 waiting requests cost ~1 ms a step)
        self.future.add_done_callback(self._on_done)

    def _on_done(self, future: Future) -> None:
        if future.cancelled():
            self.cancelled = True

    @property
    def deadline(self) -> float | None:
        return None if self.timeout is None else self.submitted + self.timeout

    @property
    def inputs(self) -> int:
        return int(self.input_ids.shape[0])

    def expired(self, now: float) -> bool:
        d = self.deadline
        return d is not None and now >= d

    def dropped(self, now: float) -> bool:
        """Cancelled by the caller, or past its deadline (then failed with RequestTimeoutError)."""
        if self.cancelled:
            return True
        if self.expired(now):
            self.fail(self.timed_out())
            return True
        return False

    def timed_out(self) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"request {self.id} ran past its timeout of {self.timeout:g} s and was dropped; "
            "give a longer timeout, fewer new tokens, or send fewer concurrent requests")

    def finish(self, output: Any) -> bool:
        """Resolve the future (False when the caller had cancelled it: nothing is delivered)."""
        if not self.future.set_running_or_notify_cancel():
            return False
        self.future.set_result(output)
        return True

    def fail(self, exc: BaseException) -> None:
        if self.channel is not None:
            self.channel.put(exc)
        if self.future.done():
            return
        if self.future.set_running_or_notify_cancel():
            self.future.set_exception(exc)
