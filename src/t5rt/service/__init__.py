"""The service core (DESIGN.md §5a): one scheduler thread per runtime owns the device; callers
enqueue requests and wait on futures, asyncio, or token streams.

    request.py     Request (checked inputs + future + deadline), StreamChunk, Channel
    scheduler.py   the bounded queue and the worker thread
    solo.py        executor: one request at a time, whole (the baseline)
    inflight.py    executor: in-flight batching (requests join / leave the decode batch per step)
    slots.py       SlotPool: the static decode batch of one source bucket
    streaming.py   StreamWriter (tokens -> chunks, text deltas), TokenStream / AsyncTokenStream
    stats.py       metrics behind Runtime.stats()
"""

from .inflight import InflightExecutor
from .request import Channel, Request, StreamChunk
from .scheduler import Scheduler
from .solo import SoloExecutor
from .stats import ServiceStats
from .streaming import AsyncTokenStream, StreamWriter, TokenStream

__all__ = ["AsyncTokenStream", "Channel", "InflightExecutor", "Request", "Scheduler", "ServiceStats", "SoloExecutor",
           "StreamChunk", "StreamWriter", "TokenStream"]
