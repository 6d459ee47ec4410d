"""The scheduler: one worker thread per runtime that owns the device (DESIGN.md §5a).

Callers (any thread, any asyncio loop) only `put()` checked requests on a bounded queue and
wait on the request's future or channel. The worker takes every arrival at each step
boundary, hands them to its executor (the in-flight batcher), and runs one step of it. Nothing
else touches engines, buffers, captured graphs or decoding state, so no lock is held around
device work and one slow request never blocks the queue.

    executor.admit(requests)    take ownership (run now, or hold until slots free up)
    executor.busy()             has admitted work
    executor.step()             one step boundary: drop cancelled/expired, join, step, finish
    executor.waiting()          admitted but not yet running (counts toward the queue bound)
    executor.fail_all(exc)      give every owned request `exc` (closing, or a device failure)
    executor.warm(src_lens)     make ahead what requests of these source buckets would make on
                                first use (Runtime.warmup); -> what it made

Device work that is not a request (warm-up) goes through `call(fn)`: fn runs on the worker at
a step boundary, before the arrivals of that boundary are admitted.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Protocol

from ..errors import BackendError, OverloadedError, RuntimeClosedError, T5rtError
from .request import Request
from .stats import ServiceStats

log = logging.getLogger("t5rt.service")


class Executor(Protocol):
    def admit(self, requests: list[Request]) -> None: ...

    def busy(self) -> bool: ...

    def step(self) -> None: ...

    def waiting(self) -> int: ...

    def slots_in_use(self) -> int: ...

    def fail_all(self, exc: BaseException) -> None: ...

    def warm(self, src_lens: list[int]) -> dict[str, Any]: ...


def as_request_error(e: BaseException) -> T5rtError:
    """What a caller gets when running its request raised `e`: a T5rtError as it is, a
    MemoryError as RequestTooLargeError, anything else as BackendError."""
    if isinstance(e, T5rtError):
        return e
    if isinstance(e, MemoryError):
        from ..generate import too_large

        return too_large(e)
    return BackendError(f"the runtime failed while running this request: {type(e).__name__}: {e}")


class Scheduler:
    """A bounded request queue and the worker thread that drains it into `executor`."""

    def __init__(self, executor: Executor, stats: ServiceStats, *, max_queue: int, name: str = "t5rt-scheduler"):
        self.executor = executor
        self.stats = stats
        self.max_queue = max_queue
        self._queue: deque[Request] = deque()
        self._tasks: deque[tuple[Callable[[], Any], Future]] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # -- callers ---------------------------------------------------------------------------
    def put(self, request: Request) -> None:
        with self._cv:
            if self._closed:
                raise RuntimeClosedError("this runtime was closed; load a new one to generate again")
            depth = len(self._queue) + self.executor.waiting()
            if depth >= self.max_queue:
                self.stats.count("rejected")
                raise OverloadedError(
                    f"the runtime's queue is full ({depth} requests waiting, RuntimeOptions.max_queue="
                    f"{self.max_queue}); retry later, or load with a larger max_queue")
            self._queue.append(request)
            self._cv.notify()

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run fn() on the worker at the next step boundary (requests in flight pause for it);
        -> a future of its result (an exception it raises arrives as a T5rtError)."""
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeClosedError("this runtime was closed; load a new one to generate again")
            self._tasks.append((fn, fut))
            self._cv.notify()
        return fut

    def queue_depth(self) -> int:
        return len(self._queue) + self.executor.waiting()

    def close(self, timeout: float | None = None, wait: bool = True) -> None:
        """Stop the worker; requests not finished yet fail with RuntimeClosedError."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def is_worker(self) -> bool:
        """True in the scheduler's own thread (where waiting on a request would deadlock)."""
        return threading.current_thread() is self._thread

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the worker ------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._tasks and not self._closed and not self.executor.busy():
                    self._cv.wait()
                if self._closed:
                    left = list(self._queue)
                    self._queue.clear()
                    tasks = list(self._tasks)
                    self._tasks.clear()
                    break
                arrivals = list(self._queue)
                self._queue.clear()
                tasks = list(self._tasks)
                self._tasks.clear()
            for fn, fut in tasks:
                _run_task(fn, fut)
            del tasks
            try:
                if arrivals:
                    self.executor.admit(arrivals)
                self.executor.step()
            except Exception as e:  # noqa: BLE001 - the worker must outlive any one failure
                log.exception("t5rt: scheduler step failed")
                err = as_request_error(e)
                for r in arrivals:
                    r.fail(err)
                try:
                    self.executor.fail_all(err)  # every request is answered before rows are freed
                except Exception:  # noqa: BLE001 - e.g. a sticky CUDA error: stop taking requests
                    log.exception("t5rt: the scheduler cannot recover; closing the runtime")
                    with self._cv:
                        self._closed = True
            del arrivals  # an idle worker holds no request (each holds its runtime)
        closed = RuntimeClosedError("the runtime was closed before this request finished")
        for r in left:
            r.fail(closed)
        for _, fut in tasks:
            if fut.set_running_or_notify_cancel():
                fut.set_exception(closed)
        self.executor.fail_all(closed)


def _run_task(fn: Callable[[], Any], fut: Future) -> None:
    """One call() on the worker: its result or its error (as a T5rtError) into its future. A
    task that fails leaves the worker as it was: the requests in flight go on."""
    if not fut.set_running_or_notify_cancel():
        return
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - the caller gets it; the worker lives on
        log.exception("t5rt: a scheduler task failed")
        fut.set_exception(as_request_error(e))
    else:
        fut.set_result(result)
