"""The public entry points: `t5rt.load(DIR)` and `Runtime.generate(...)`.

    rt = t5rt.load(DIR, backend="auto", device="cuda")
    out = rt.generate(["summarize: ..."], num_beams=4, max_new_tokens=64)
    out.sequences   # list[list[int]]: one per returned sequence, input order, r of each consecutive
    out.scores      # beam sequence scores, or summed log-probs of the chosen tokens
    out.texts       # decoded sequences when the export has a tokenizer

Every argument is checked before any device state is touched, so a request that raises leaves
the runtime ready for the next one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import math
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import (
    InvalidExportError,
    InvalidInputError,
    InvalidOptionError,
    RequestTimeoutError,
    RequestTooLargeError,
    RuntimeClosedError,
    T5rtError,
)
from .export_check import verify_export
from .generation_config import GenerationConfig
from .inputs import chunks, parse_inputs
from .manifest import Manifest, load_manifest
from .runtime.buckets import pow2_buckets, src_bucket
from .runtime.device import Device, resolve_device
from .runtime.memory import available_bytes, check_request_fits
from .runtime.runner import RuntimeOptions, T5Runner
from .service.stats import ServiceStats

if TYPE_CHECKING:
    from concurrent.futures import Future

    from .service import AsyncTokenStream, Request, Scheduler, TokenStream

log = logging.getLogger("t5rt")


@dataclass
class GenerateOutput:
    sequences: list[list[int]]
    scores: list[float] | None = None
    texts: list[str] | None = None
    token_scores: list[list[float]] | None = None  # output_scores=True: log-prob of each token
    timings: dict[str, float] = field(default_factory=dict)


class Runtime:
    """A loaded export on one device and backend, shared by any number of threads and asyncio
    tasks: generate / submit / agenerate / stream / astream enqueue requests for the runtime's
    scheduler thread, which alone touches the device (DESIGN.md §5a)."""

    def __init__(self, manifest: Manifest, options: RuntimeOptions):
        options.validate()
        self.manifest = manifest
        self.options = options
        self.device = Device(resolve_device(options.device))
        # nothing of the export runs before its files passed (DESIGN.md §11); cost in .verification
        self.verification = verify_export(manifest, hashes=options.verify)
        from .engines import open_sessions

        self.backend, self.backend_reason, sessions = open_sessions(manifest, options.backend, self.device, options)
        log.info("t5rt: backend %s (%s) on %s", self.backend, self.backend_reason, self.device.name)
        kernels = None
        if self.device.is_cuda and options.kernels:
            kernels = _load_kernels()
        self.runner = T5Runner(manifest, self.device, sessions, options, kernels)
        self.tokenizer = _load_tokenizer(manifest)
        self.generation_config = _generation_defaults(manifest)
        self.last_timings: dict[str, float] = {}
        # strategies kept across requests (reset in place), so their captured CUDA graphs replay
        self._strategies: OrderedDict[tuple, Any] = OrderedDict()
        # the service core (DESIGN.md §5a): a scheduler thread, started by the first request
        self._service_lock = threading.Lock()
        self._scheduler: Scheduler | None = None
        self._closed = False
        self._stats = ServiceStats()
        # CUDA: free memory for the request estimate, read here and by the scheduler thread between
        # steps (callers' threads make no CUDA call: one could break a graph being captured)
        self.available = available_bytes(self.device) if self.device.is_cuda else (None, "")

    # -- inputs ----------------------------------------------------------------------------
    def _inputs(self, texts: Any, input_ids: Any, attention_mask: Any) -> tuple[np.ndarray, np.ndarray]:
        """-> (ids [B, s], mask [B, s]) int64 host arrays, right padded; every problem raises (inputs.py)."""
        return parse_inputs(texts, input_ids, attention_mask, manifest=self.manifest, tokenizer=self.tokenizer)

    # -- generate (any thread) --------------------------------------------------------------
    def generate(self, texts: str | Sequence[str] | None = None, *, input_ids: Any = None,
                 attention_mask: Any = None, config: GenerationConfig | None = None,
                 **options: Any) -> GenerateOutput:
        """Generate for every input; safe from any thread (the runtime's scheduler runs it).

        options: GenerationConfig fields, and `timeout` (seconds; RequestTimeoutError past it)."""
        if self._scheduler is not None and self._scheduler.is_worker():
            raise InvalidInputError("generate() called from inside this runtime's own decoding step (a logits "
                                    "processor?) would wait for itself; use submit() there, or another runtime")
        req = self._enqueue(texts, input_ids, attention_mask, config, options)
        try:
            out = req.future.result(timeout=_left(req))
        except _TIMEOUTS as e:  # the deadline holds here too, even if a step runs long
            req.future.cancel()
            raise e if isinstance(e, RequestTimeoutError) else req.timed_out() from None
        except BaseException:
            req.future.cancel()  # KeyboardInterrupt while waiting: the request leaves the batch
            raise
        self.last_timings = out.timings
        return out

    def submit(self, texts: str | Sequence[str] | None = None, *, input_ids: Any = None,
               attention_mask: Any = None, config: GenerationConfig | None = None,
               **options: Any) -> "Future[GenerateOutput]":
        """Enqueue a request -> concurrent.futures.Future[GenerateOutput]. Bad input raises here,
        in the caller's thread; a full queue raises OverloadedError. `future.cancel()` frees the
        request's slots at the next step."""
        return self._enqueue(texts, input_ids, attention_mask, config, options).future

    async def agenerate(self, texts: str | Sequence[str] | None = None, *, input_ids: Any = None,
                        attention_mask: Any = None, config: GenerationConfig | None = None,
                        **options: Any) -> GenerateOutput:
        """`await rt.agenerate(...)`: generate() for asyncio; cancelling the task cancels the request."""
        import asyncio

        req = self._enqueue(texts, input_ids, attention_mask, config, options)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(req.future), _left(req))
        except _TIMEOUTS as e:
            req.future.cancel()
            raise e if isinstance(e, RequestTimeoutError) else req.timed_out() from None
        except asyncio.CancelledError:
            req.future.cancel()
            raise

    def stream(self, texts: str | Sequence[str] | None = None, *, input_ids: Any = None,
               attention_mask: Any = None, config: GenerationConfig | None = None,
               **options: Any) -> "TokenStream":
        """Iterator of StreamChunk (.tokens, .text, .finished) for ONE input, as tokens are chosen
        (every done_check_interval steps); beam search yields its final sequence as one chunk.
        Their tokens concatenate to generate(...).sequences[0]; close() cancels the request."""
        from .service import TokenStream

        return TokenStream(self._stream_request(texts, input_ids, attention_mask, config, options))

    def astream(self, texts: str | Sequence[str] | None = None, *, input_ids: Any = None,
                attention_mask: Any = None, config: GenerationConfig | None = None,
                **options: Any) -> "AsyncTokenStream":
        """`async for chunk in rt.astream(...)`: stream() for asyncio (bad input raises at the call)."""
        from .service import AsyncTokenStream

        return AsyncTokenStream(self._stream_request(texts, input_ids, attention_mask, config, options))

    def stats(self) -> dict[str, Any]:
        """Service metrics: queue depth, slots in use, requests done/failed, tokens/s (last 10 s),
        time to first token (p50/p99), decoder steps and host time per step."""
        svc = self._scheduler
        live = {"queue_depth": svc.queue_depth() if svc else 0,
                "slots_in_use": svc.executor.slots_in_use() if svc else 0,
                "max_queue": self.options.max_queue}
        return self._stats.snapshot(**live)

    def warmup(self, src_lens: Sequence[int] | None = None) -> dict[str, Any]:
        """Make now what requests would otherwise make on first use, so that none pays for it:
        in-flight (the default), per source bucket of `src_lens` (None: every bucket up to the
        export's max_input_len) its slot pool, the decoder step at every slot-count bucket, the
        pooled-rows kernels and the encoder at every batch bucket, each run as a request runs it
        (on CUDA each of those shapes is a CUDA graph captured on its first runs: tens of ms that
        would otherwise land on some request's latency); with inflight=False one greedy request
        per bucket. Runs on the scheduler thread between steps (requests in flight pause, a pool
        holding requests is left as it is); safe from any thread. Costs device memory: every
        bucket's pool and encoder buffers stay allocated, as under a load that reaches them all.
        -> what it made: {"seconds", "source_buckets", ...}."""
        m = self.manifest
        if src_lens is None:
            buckets = pow2_buckets(m.max_input_len, 16)  # every value src_bucket takes
        else:
            lens = list(src_lens) if isinstance(src_lens, Sequence) and not isinstance(src_lens, str) else []
            if not lens or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool)
                                   and 1 <= n <= m.max_input_len for n in lens):
                raise InvalidOptionError(f"src_lens={src_lens!r} is invalid: give source lengths (integers in "
                                         f"[1, {m.max_input_len}], the export's max_input_len), or None for all")
            buckets = sorted({src_bucket(n, m.max_input_len) for n in lens})
        svc = self._service()
        if svc.is_worker():
            raise InvalidInputError("warmup() called from inside this runtime's own decoding step would wait "
                                    "for itself; call it before serving, from another thread")
        return svc.call(lambda: svc.executor.warm(buckets)).result()

    def close(self) -> None:
        """Stop the scheduler thread; unfinished requests fail with RuntimeClosedError."""
        with self._service_lock:
            self._closed = True
            svc, self._scheduler = self._scheduler, None
        if svc is not None:
            svc.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- requests (caller's thread) --------------------------------------------------------
    def _request(self, texts: Any, input_ids: Any, attention_mask: Any, config: GenerationConfig | None,
                 options: dict[str, Any]) -> "Request":
        """Every check a request needs, in the caller's thread -> a Request ready to enqueue."""
        from .service import Request

        timeout = options.pop("timeout", None)
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not 0 < timeout < math.inf):
            raise InvalidOptionError(f"timeout={timeout!r} is invalid: must be a number of seconds > 0 (or None)")
        cfg = GenerationConfig.from_options(self.generation_config if config is None else config, **options)
        m = self.manifest
        cfg.validate(max_output_len=m.max_output_len, vocab_size=m.dims.vocab_size)
        ids, mask = self._inputs(texts, input_ids, attention_mask)
        max_new = cfg.max_new_tokens_for(m.max_output_len)
        if cfg.min_new_tokens > max_new:
            raise InvalidOptionError(f"min_new_tokens={cfg.min_new_tokens} exceeds the {max_new} new tokens this "
                                     "request makes at most; raise max_new_tokens")
        check_request_fits(m, cfg, batch=min(ids.shape[0], self.options.max_batch), src_len=ids.shape[1],
                           max_new_tokens=max_new, device=self.device, options=self.options,
                           available=self.available if self.device.is_cuda else None)
        if self.options.inflight and cfg.rows_per_input() > self.options.max_batch:
            raise InvalidOptionError(
                f"one input takes {cfg.rows_per_input()} decoder rows (num_beams / num_return_sequences) but "
                f"a decode batch holds max_batch={self.options.max_batch}; load with a larger max_batch")
        return Request(ids, mask, cfg, max_new, timeout=timeout, owner=self)

    def _enqueue(self, texts: Any, input_ids: Any, attention_mask: Any, config: GenerationConfig | None,
                 options: dict[str, Any]) -> "Request":
        req = self._request(texts, input_ids, attention_mask, config, options)
        self._service().put(req)
        return req

    def _stream_request(self, texts: Any, input_ids: Any, attention_mask: Any, config: GenerationConfig | None,
                        options: dict[str, Any]) -> "Request":
        from .service import Channel, StreamWriter

        req = self._request(texts, input_ids, attention_mask, config, options)
        if req.inputs != 1:
            raise InvalidInputError(f"stream() takes one input, got {req.inputs}; "
                                    "call it once per input (or use submit() for a batch)")
        req.channel = Channel()
        req.writer = StreamWriter(req.channel, self.tokenizer, self.manifest.special_tokens.eos_token_id)
        self._service().put(req)
        return req

    def _service(self) -> "Scheduler":
        """The scheduler thread, started on first use."""
        with self._service_lock:
            if self._closed:
                raise RuntimeClosedError("this runtime was closed; load a new one to generate again")
            if self._scheduler is None:
                from .service import InflightExecutor, Scheduler, SoloExecutor

                executor = InflightExecutor if self.options.inflight else SoloExecutor
                # the worker sees the runtime through a weak proxy (each queued Request holds it
                # strongly), so an idle runtime nobody references is freed and stops its thread
                self._scheduler = Scheduler(executor(weakref.proxy(self), self._stats), self._stats,
                                            max_queue=self.options.max_queue)
                weakref.finalize(self, self._scheduler.close, wait=False)
            return self._scheduler

    # -- execution (scheduler thread only) -------------------------------------------------
    def _output(self, sequences: list[list[int]], scores: list[float], token_scores: Any,
                cfg: GenerationConfig, timings: dict[str, float]) -> GenerateOutput:
        texts_out = None
        if self.tokenizer is not None:
            texts_out = [self.tokenizer.decode(s, skip_special_tokens=True) for s in sequences]
        return GenerateOutput(sequences=sequences, scores=scores, texts=texts_out,
                              token_scores=token_scores if cfg.output_scores else None, timings=dict(timings))

    def _run_whole(self, req: "Request") -> GenerateOutput | None:
        """One request alone, start to end, in chunks of max_batch inputs (the direct path);
        None when it was cancelled or timed out on the way."""
        cfg, ids, mask, max_new = req.config, req.input_ids, req.attention_mask, req.max_new_tokens
        sequences: list[list[int]] = []
        scores: list[float] = []
        token_scores: list[list[float]] = []
        agg: dict[str, float] = {}
        for lo, chunk_ids, chunk_mask in chunks(ids, mask, self.options.max_batch):
            try:
                got = self._generate_chunk(chunk_ids, chunk_mask, cfg, max_new, lo, req)
            except MemoryError as e:  # the estimate (runtime/memory.py) erred low: still a T5rtError
                raise too_large(e) from e
            if got is None:
                return None
            seqs, scs, tok = got
            sequences += seqs
            scores += scs
            token_scores += tok or []
            for k, v in self.runner.timings.as_dict().items():
                if not k.endswith("step_s"):
                    agg[k] = agg.get(k, 0.0) + v
        steps = agg.get("steps", 0)
        agg["step_s"] = agg["decode_s"] / steps if steps else 0.0
        agg["host_step_s"] = agg["host_s"] / steps if steps else 0.0
        return self._output(sequences, scores, token_scores, cfg, agg)

    def _generate_chunk(self, ids: np.ndarray, mask: np.ndarray, cfg: GenerationConfig, max_new: int,
                        first_input: int,
                        req: "Request") -> tuple[list[list[int]], list[float], Any] | None:
        with self.device.use():  # state set up on the stream the engines and graphs run on
            strategy = self._strategy(cfg, ids.shape[0], max_new, first_input)
        enc = self.runner.encode(ids, mask)
        eager = not strategy.capturable  # user hooks run Python per step: no CUDA graph
        dropped = False

        def on_check(steps: int) -> bool:  # the host is in sync here
            nonlocal dropped
            now = time.perf_counter()
            self._stats.first_token(req, now)
            if req.writer is not None and first_input == 0 and strategy.parent is None:
                req.writer.update_from(self.device, strategy)
            dropped = req.dropped(now)
            return dropped

        self.runner.decode(enc, strategy, max_new, eager=eager, profile=self.options.profile, on_check=on_check)
        if dropped:
            return None
        seqs, scores = strategy.result()
        tok = strategy.token_scores() if cfg.output_scores else None
        return [list(map(int, s)) for s in seqs], [float(x) for x in scores], tok


    def _strategy(self, cfg: GenerationConfig, batch: int, max_new: int, first_input: int) -> Any:
        """A strategy for this chunk: the one an identical earlier request used, reset in place
        (its buffers keep their addresses, so with RuntimeOptions.reuse_step_graphs the runner's
        CUDA graph captured over its step replays again), else a new one. Strategies running user
        logits processors (host code) are never kept."""
        key = reuse_key(cfg, batch, max_new, first_input)
        cached = None if key is None else self._strategies.get(key)
        if cached is not None:
            self._strategies.move_to_end(key)
            cached.reset()
            return cached
        strategy = self._new_strategy(cfg, batch, max_new, first_input)
        # CUDA: only with reuse_step_graphs (on by default; off: capture per request)
        if key is not None and (not self.device.is_cuda or self.options.reuse_step_graphs):
            self._strategies[key] = strategy
            while len(self._strategies) > self.options.max_cached_buckets:
                _, dropped = self._strategies.popitem(last=False)
                self.runner.forget(dropped)  # its captured graphs can never be hit again
        return strategy

    def _new_strategy(self, cfg: GenerationConfig, batch: int, max_new: int, first_input: int) -> Any:
        """The decoding strategy for `batch` inputs starting at request-wide input `first_input`."""
        from .decoding import make_strategy

        st = self.manifest.special_tokens
        return make_strategy(
            self.device.xp, cfg, batch=batch, vocab_size=self.manifest.dims.vocab_size,
            max_new_tokens=max_new, pad_token_id=st.pad_token_id, eos_token_id=st.eos_token_id,
            decoder_start_token_id=st.decoder_start_token_id,
            first_input=first_input,  # a chunked request samples exactly like one batch
            kernels=self.runner.kernels,  # fused token choice on the GPU (None: array code)
        )


def too_large(e: MemoryError) -> RequestTooLargeError:
    """A MemoryError the estimate (runtime/memory.py) did not foresee, as the T5rtError it is."""
    if isinstance(e, RequestTooLargeError):
        return e
    return RequestTooLargeError(f"this request ran out of memory ({e or 'MemoryError'}); ask for "
                                "fewer beams, new tokens or inputs per chunk")


# a future's / asyncio's time-out (distinct from the builtin TimeoutError before Python 3.11)
_TIMEOUTS = (TimeoutError, concurrent.futures.TimeoutError, asyncio.TimeoutError)


def _left(req: "Request") -> float | None:
    """Seconds until the request's deadline (None: no timeout)."""
    d = req.deadline
    return None if d is None else max(d - time.perf_counter(), 0.0)


def reuse_key(cfg: GenerationConfig, batch: int, max_new: int, first_input: int) -> tuple | None:
    """What makes two strategies interchangeable after reset(); None: never reuse (user logits
    processors are host code)."""
    if cfg.logits_processors:
        return None
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "logits_processors"}
    return (repr(fields), batch, max_new, first_input)


def _generation_defaults(m: Manifest) -> GenerationConfig:
    """The export's generation_config.json (the model's own defaults, which HF generate() uses),
    else HF's defaults. A max_length beyond what the export holds is capped to it."""
    path = m.directory / "generation_config.json" if m.directory is not None else None
    if path is None or not path.is_file():
        return GenerationConfig()
    try:
        cfg = GenerationConfig.from_hf(json.loads(path.read_text()), strict=False)
    except (ValueError, T5rtError) as e:
        log.warning("t5rt: %s is unusable (%s); using Hugging Face's generation defaults", path, e)
        return GenerationConfig()
    cap = m.max_output_len
    if cfg.max_new_tokens is not None and cfg.max_new_tokens > cap:
        cfg.max_new_tokens = cap
    if cfg.max_length is not None and cfg.max_length - 1 > cap:
        log.info("t5rt: the model's max_length %d is capped to the export's %d new tokens", cfg.max_length, cap)
        cfg.max_length = cap + 1
    return cfg


def _load_tokenizer(m: Manifest) -> Any:
    if m.directory is None or not {"spiece.model", "tokenizer.json"} & set(m.tokenizer_files):
        return None
    from .tokenizer import T5Tokenizer

    try:
        return T5Tokenizer.from_dir(m.directory)
    except Exception as e:  # noqa: BLE001 - a listed (and hashed) tokenizer that cannot be read: a bad export
        raise InvalidExportError(f"{m.directory}: its tokenizer_files ({', '.join(m.tokenizer_files)}) cannot be "
                                 f"read ({type(e).__name__}: {e}); re-export the model") from None


def _load_kernels() -> Any:
    """t5rt.kernels once its module (CMake fatbin or NVRTC) has loaded; else the array-code paths."""
    from . import kernels

    try:
        kernels.load()
    except Exception as e:  # noqa: BLE001 - say why, then run the generic (slower) paths
        log.warning("t5rt: CUDA kernels unavailable (%s); using array code for cache ops", e)
        return None
    log.info("t5rt: CUDA kernels from %s", kernels.source())
    return kernels


def load(directory: str | Path, backend: str | None = None, device: str | None = None,
         options: RuntimeOptions | None = None, **kwargs: Any) -> Runtime:
    """Load an export made by `t5rt export`.

    backend / device / kwargs override the fields of `options` (a RuntimeOptions, default: all
    defaults: backend "auto", device "auto"); the caller's `options` object is not modified.
    """
    known = RuntimeOptions.__dataclass_fields__
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise InvalidOptionError(f"unknown runtime option(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if backend is not None:
        kwargs["backend"] = backend
    if device is not None:
        kwargs["device"] = device
    opts = dataclasses.replace(options or RuntimeOptions(), **kwargs)
    rt = Runtime(load_manifest(directory), opts)
    if opts.warmup:
        try:
            rt.warmup()
        except BaseException:
            rt.close()
            raise
    return rt
