"""Streaming: the scheduler side (`StreamWriter`: tokens -> chunks) and the caller side
(`TokenStream` / `AsyncTokenStream`: iterators over a request's Channel).

Text: sentencepiece joins pieces with word-boundary markers, so decoding each new token alone
loses or adds spaces. The writer decodes the whole sequence so far and emits what was added
since the last chunk; a trailing U+FFFD (an incomplete byte-fallback character) is held back
until the next token completes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .request import Channel, Request, StreamChunk

_INCOMPLETE = "\ufffd"


class StreamWriter:
    """Turns the growing token sequence of one streamed input into StreamChunks on a Channel."""

    def __init__(self, channel: Channel, tokenizer: Any, eos_token_id: int):
        self.channel = channel
        self.tokenizer = tokenizer
        self.eos = eos_token_id
        self.sent: list[int] = []
        self.text = ""  # text sent so far
        self.closed = False

    def update_from(self, device: Any, strategy: Any) -> None:
        """The tokens a greedy or sampling strategy's first row holds so far (the host is in sync)."""
        t = int(device.to_host(strategy.step_counter))
        self.update(device.to_host(strategy.history[0, 1:t + 1]).tolist())

    def update(self, tokens: Sequence[int], finished: bool = False) -> None:
        """tokens: the whole sequence so far (cut after eos or not); sends what is new."""
        if self.closed:
            return
        tokens = list(tokens)
        if self.eos in tokens:
            tokens = tokens[: tokens.index(self.eos) + 1]
        new = tokens[len(self.sent):]
        if not new and not finished:
            return
        text = None
        if self.tokenizer is not None:
            full = self.tokenizer.decode(tokens, skip_special_tokens=True)
            if not finished:
                full = full.rstrip(_INCOMPLETE) if full.endswith(_INCOMPLETE) else full
            # the decoded prefix never changes in practice; if it did, emit nothing until it agrees
            text = full[len(self.text):] if full.startswith(self.text) else ""
            if full.startswith(self.text):
                self.text = full
        self.sent = tokens
        self.closed = finished
        self.channel.put(StreamChunk(tokens=new, text=text, finished=finished))


class TokenStream:
    """Iterator of StreamChunks for one request (`Runtime.stream`); close() cancels it."""

    def __init__(self, request: Request):
        self.request = request
        self._done = False

    def __iter__(self) -> "TokenStream":
        return self

    def __next__(self) -> StreamChunk:
        if self._done:
            raise StopIteration
        item = self.request.channel.get()
        return self._chunk(item)

    def _chunk(self, item: Any) -> StreamChunk:
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if item.finished:
            self._done = True
        return item

    def close(self) -> None:
        """Stop early: the request is cancelled and leaves the batch at the next step."""
        self._done = True
        self.request.future.cancel()

    def __enter__(self) -> "TokenStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if not self._done:
            self.request.future.cancel()


class AsyncTokenStream(TokenStream):
    """Async iterator of StreamChunks (`Runtime.astream`); task cancellation cancels the request."""

    def __aiter__(self) -> "AsyncTokenStream":
        return self

    async def __anext__(self) -> StreamChunk:
        import asyncio

        if self._done:
            raise StopAsyncIteration
        try:
            item = await self.request.channel.aget()
        except asyncio.CancelledError:
            self.close()
            raise
        return self._chunk(item)

    async def aclose(self) -> None:
        self.close()
