"""Drives the three engines for one request: encode once, then one decoder step per token.

    encode(ids, mask)             encoder + cross K/V graphs, once per request (DESIGN.md §3)
    decode(enc, strategy, n)      decode_one_token n times; on CUDA the per-step decoding work is a
                                  captured CUDA graph replayed after the engine's own step
The host touches the device only to launch work and, every `done_check_interval` steps, to ask
whether every sequence has finished.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidOptionError
from ..manifest import Manifest
from .buckets import cache_bucket, src_bucket
from .buffers import DecoderBuffers, EncoderBuffers
from .device import Device
from .kv_cache import CacheOps


@dataclass
class RuntimeOptions:
    """How a loaded runtime runs (how it decodes is GenerationConfig's business)."""

    backend: str = "auto"             # "auto" | "ort" | "trt" | "native" (CUDA: t5rt's own decoder-step kernels)
    device: str = "auto"              # "auto" | "cpu" | "cuda"
    cuda_graphs: bool = True          # replay the decoder step as CUDA graphs on the GPU
    kernels: bool = True              # use t5rt.kernels' fused CUDA kernels where they exist
    done_check_interval: int = 8      # steps between host checks of "all sequences finished"
    max_batch: int = 64               # larger requests run in chunks of this many inputs; in-flight:
                                      # the decoder rows of one decode batch (slot pool)
    max_cached_buckets: int = 8       # buffer sets kept alive (least recently used dropped)
    threads: int | None = None        # CPU: intra-op threads (None: the cores this process may use)
    cpu_spin: bool = False            # CPU: let ORT's thread pool spin while waiting (faster only on
                                      # an idle machine with cores to spare)
    profile: bool = False             # split per-step device time into engine / decoding (CUDA events)
    tf32: bool = False                # allow TF32 matmuls for fp32 graphs on the GPU (faster, not exact)
    # ORT load-time rewrite (engines/ort_rewrite.py): fp32 residual Add + RMSNorm -> one
    # SkipSimplifiedLayerNormalization; on CUDA also bf16 norm islands -> one all-bf16 norm.
    # None: on, unless $T5RT_ORT_REWRITE=0.
    ort_rewrite: bool | None = None
    # CUDA: reuse the strategy (reset in place) of an earlier request of the same shape and config
    # and replay the decoding step's graph captured for it, instead of allocating and capturing
    # per request (the CPU always reuses strategies). GPU-tested on the H100 2026-12-07:
    # tests/test_gpu_runtime.py::test_strategy_and_graph_reused_across_requests and
    # tests/test_service.py::test_gpu_sixteen_threads_equal_solo[graphs-reuse].
    reuse_step_graphs: bool = True
    # the service core (DESIGN.md §5a): requests waiting beyond this many raise OverloadedError
    max_queue: int = 1024
    # concurrent requests share decoder steps (in-flight batching); False: one request at a time
    inflight: bool = True
    # in-flight on CUDA: t5rt's scheduler kernels. Every single-row greedy / sampling request of a
    # slot pool decodes in one launch a step (decoding/pooled.py, kernels/sampling_pool.cu) instead
    # of a strategy and a graph replay each, and a join's cross K/V land in one launch
    # (t5rt.kernels.rows_copy). GPU-tested on the H100 2026-12-07 (tests/test_kernels.py pool /
    # rows_copy, tests/test_service.py 16 threads; load saturation 93 -> 164 req/s).
    inflight_kernels: bool = True
    # in-flight: a request may join an existing slot pool of a longer source bucket than its own
    # (its source padded; masked positions add exact zeros) instead of starting a pool of its own:
    # every pool is one more decoder-step launch per scheduler step
    share_pools: bool = True
    # in-flight with share_pools: a request joins the busy pool of the *longest* source bucket
    # that fits first (False: the shortest), so requests gather in few pools and the others
    # drain: fewer decoder-step launches a scheduler step, each attending over a longer padded
    # source. Off until a GPU load run shows it pays (`--set gather_pools=1`); the load bench's
    # pools/step column shows what it changes.
    gather_pools: bool = False
    # backend="native": True runs the whole decoder step as one persistent kernel (a grid barrier
    # between phases); False launches one kernel per phase, which measured faster on the H100
    # (t5-small bf16 step 432 us against 466; bench/results/h100-native-pdl-2026-12-07.md)
    native_persistent: bool = False
    # backend="native", per-phase launches on sm_90+: programmatic dependent launch between the
    # phases (each phase's weights stream into L2 while the phase before ends; CUDA graphs keep
    # the overlap): t5-small bf16 step 381 us against 432 without
    native_pdl: bool = True
    # CUDA: an engine that can be captured (backend="native") runs inside the decoding step's CUDA
    # graph, so a step is one graph launch instead of a Python launch per phase. GPU-tested on the
    # H100 2026-12-07 (tests/test_native.py::test_native_generate_matches_hf, with and without PDL)
    graph_engine_step: bool = True
    # load(): check every file's sha256 against the manifest (export_check.py). False skips only
    # the hashing, for a disk you trust; the schema, confinement, sizes and graph I/O are checked.
    verify: bool = True
    # refuse a request whose estimated memory (runtime/memory.py) exceeds this many bytes;
    # None: what the device has (CUDA: free memory; CPU: available host memory)
    max_request_bytes: int | None = None
    # load(): run Runtime.warmup() before returning (every source bucket's pool, slot-count launch
    # and encoder shape made and, on CUDA, captured; device memory held for all of them), so that
    # no request pays a first-use capture. `t5rt serve` turns it on for its replicas.
    warmup: bool = False

    def validate(self) -> None:
        if self.backend not in ("auto", "ort", "trt", "native"):
            raise InvalidOptionError(f"backend={self.backend!r} is invalid: use 'auto', 'ort', 'trt' or 'native'")
        for name in ("done_check_interval", "max_batch", "max_cached_buckets", "max_queue"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InvalidOptionError(f"{name}={v!r} is invalid: must be an integer >= 1")
        t = self.threads
        if t is not None and (not isinstance(t, int) or isinstance(t, bool) or not 1 <= t <= 4096):
            raise InvalidOptionError(f"threads={t!r} is invalid: an integer in [1, 4096], or None for the "
                                     "cores this process may use")
        for name in ("verify", "warmup"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidOptionError(f"{name}={getattr(self, name)!r} is invalid: must be True or False")
        v = self.max_request_bytes
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise InvalidOptionError(f"max_request_bytes={v!r} is invalid: must be an integer >= 1 or None")


@dataclass
class Timings:
    encode_s: float = 0.0     # encoder + cross K/V (synchronised)
    decode_s: float = 0.0     # all decoder steps incl. decoding work (synchronised)
    steps: int = 0
    host_s: float = 0.0       # host time spent issuing the steps (excl. waiting on the device)
    engine_s: float = 0.0     # profile=True on CUDA: device time of the decoder-step engine
    decoding_s: float = 0.0   # profile=True on CUDA: device time of cache ops + decoding work

    def as_dict(self) -> dict[str, float]:
        d = {"encode_s": self.encode_s, "decode_s": self.decode_s, "steps": self.steps, "host_s": self.host_s,
             "engine_s": self.engine_s, "decoding_s": self.decoding_s}
        d["step_s"] = self.decode_s / self.steps if self.steps else 0.0
        d["host_step_s"] = self.host_s / self.steps if self.steps else 0.0
        return d


@dataclass
class _DecodeSlot:
    bufs: DecoderBuffers
    cache: CacheOps
    # id(strategy) -> (strategy, its captured decoding step): replayed again when the runtime
    # hands the same (reset) strategy back for a later request on this slot
    graphs: OrderedDict[int, tuple[Any, Any]] = field(default_factory=OrderedDict)


class T5Runner:
    """Engines + buffers of one export on one device."""

    def __init__(self, manifest: Manifest, device: Device, sessions: dict[str, Any],
                 options: RuntimeOptions, kernels: Any = None):
        self.m = manifest
        self.dev = device
        self.sessions = sessions  # graph name -> backend session with .engine()
        self.opts = options
        self.kernels = kernels
        self._enc: OrderedDict[tuple[int, int], EncoderBuffers] = OrderedDict()
        self._dec: OrderedDict[tuple[int, int, int, int], _DecodeSlot] = OrderedDict()
        self.timings = Timings()

    # -- buffers -------------------------------------------------------------------------
    def _lru(self, cache: OrderedDict, key: Any, make: Any) -> Any:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        value = make()
        cache[key] = value
        while len(cache) > self.opts.max_cached_buckets:
            cache.popitem(last=False)
        return value

    def new_encoder_buffers(self, batch: int, src_len: int) -> EncoderBuffers:
        b = EncoderBuffers.allocate(self.m, self.dev, batch, src_len)
        b.bind(self.m, self.sessions["encoder"].engine(), self.sessions["cross_kv"].engine())
        return b

    def encoder_buffers(self, batch: int, src_len: int) -> EncoderBuffers:
        return self._lru(self._enc, (batch, src_len), lambda: self.new_encoder_buffers(batch, src_len))

    def bind_decoder(self, bufs: DecoderBuffers) -> DecoderBuffers:
        """Bind a new decoder-step engine (CUDA: its own ORT graph) to `bufs`; -> bufs."""
        bufs.bind(self.m, self.sessions["decoder_step"].engine())
        return bufs

    def captures_engine(self, engine: Any) -> bool:
        """Whether `engine`'s step goes into a CUDA graph (the native kernels can be captured; an
        ORT / TensorRT engine replays its own): RuntimeOptions.cuda_graphs and graph_engine_step."""
        o = self.opts
        return bool(self.dev.is_cuda and o.cuda_graphs and o.graph_engine_step and getattr(engine, "capturable", False))

    def decoder_cache_len(self, max_new_tokens: int) -> int:
        """Self-cache rows for a request of max_new_tokens (a backend may fix it: TensorRT's
        in-place KV layer wants a static one)."""
        return getattr(self.sessions["decoder_step"], "static_cache_len", None) \
            or cache_bucket(max_new_tokens, self.m.max_output_len)

    def decoder_slot(self, enc: EncoderBuffers, rows_per_input: int, cache_len: int) -> _DecodeSlot:
        def make() -> _DecodeSlot:
            bufs = DecoderBuffers.allocate(self.m, self.dev, enc, rows_per_input, cache_len)
            bufs.bind(self.m, self.sessions["decoder_step"].engine())
            return _DecodeSlot(bufs, CacheOps(self.dev.xp, bufs, self.kernels))

        key = (enc.batch, enc.src_len, rows_per_input, cache_len)
        return self._lru(self._dec, key, make)

    def forget(self, strategy: Any) -> None:
        """Drop the CUDA graphs captured for `strategy` (the runtime stopped reusing it)."""
        for slot in self._dec.values():
            kept = slot.graphs.get(id(strategy))
            if kept is not None and kept[0] is strategy:
                del slot.graphs[id(strategy)]

    # -- encode ----------------------------------------------------------------------------
    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> EncoderBuffers:
        """input_ids/attention_mask [B, s] host int64 -> encoder buffers holding hidden + cross K/V."""
        b, s = input_ids.shape
        enc = self.encoder_buffers(b, src_bucket(s, self.m.max_input_len))
        t0 = time.perf_counter()
        self.run_encoder(enc, input_ids, attention_mask)
        self.dev.synchronize()
        self.timings.encode_s = time.perf_counter() - t0
        return enc

    def run_encoder(self, enc: EncoderBuffers, input_ids: np.ndarray, attention_mask: np.ndarray) -> None:
        """Enqueue encoder + cross K/V for host inputs [b, s] (b <= enc.batch, s <= enc.src_len;
        the rest of the buffers is padding: masked, one valid column so no row is all-masked)."""
        b, s = input_ids.shape
        ids = np.zeros((enc.batch, enc.src_len), np.int64)
        mask = np.zeros((enc.batch, enc.src_len), np.int64)
        mask[b:, 0] = 1
        ids[:b, :s] = input_ids
        mask[:b, :s] = attention_mask
        with self.dev.use():
            enc.input_ids[...] = self.dev.asarray(ids)
            enc.attention_mask[...] = self.dev.asarray(mask)
            enc.engines["encoder"].run()
            enc.engines["cross_kv"].run()

    # -- decode ----------------------------------------------------------------------------
    def decode(self, enc: EncoderBuffers, strategy: Any, max_new_tokens: int, *,
               eager: bool = False, profile: bool = False, on_check: Any = None) -> int:
        """Run up to max_new_tokens decoder steps driven by `strategy`; returns steps taken.

        profile=True (CUDA) brackets the engine and the decoding work of every step with CUDA
        events, splitting device time into Timings.engine_s and Timings.decoding_s.
        on_check(steps) -> bool runs after each done check (the host is in sync then: streaming
        reads tokens there); True stops decoding (the request was cancelled).
        """
        slot = self.decoder_slot(enc, strategy.rows_per_input, self.decoder_cache_len(max_new_tokens))
        bufs = slot.bufs
        engine = bufs.engine
        # the native engine writes the new K/V rows into the caches itself
        write_form = self.m.cache_update == "write" and not getattr(engine, "writes_cache", False)
        reorder = getattr(strategy, "parent", None) is not None

        def after_engine() -> None:
            # [N, H, 1, Dk] new rows -> cache row `position` (write form), then choose tokens.
            if write_form:
                slot.cache.write(bufs.position)
            strategy.step(bufs.logits)
            if reorder:
                # rows 0..t are valid after step t; step_counter is now t+1
                slot.cache.reorder(strategy.parent, strategy.step_counter)
            feed()

        def feed() -> None:
            # the chosen tokens and their position become the next step's engine inputs
            bufs.input_ids[:, 0] = strategy.tokens
            bufs.position[...] = strategy.step_counter

        use_graph = self.dev.is_cuda and self.opts.cuda_graphs and not eager
        # an engine that can be captured (the native kernels) joins the decoding work's graph:
        # one CUDA graph per step (RuntimeOptions.graph_engine_step)
        engine_in_graph = use_graph and self.captures_engine(engine)

        def whole_step() -> None:
            engine.run()
            after_engine()
        check = self.opts.done_check_interval
        t_start = time.perf_counter()
        waited = 0.0
        steps = 0
        kept = slot.graphs.get(id(strategy)) if self.opts.reuse_step_graphs else None
        graph = kept[1] if kept is not None and kept[0] is strategy else None
        events: list[tuple[Any, Any, Any]] = []
        profile = profile and self.dev.is_cuda
        if profile:
            import cupy
        with self.dev.use():
            bufs.expand_from(enc)
            bufs.clear_caches()
            feed()
            for t in range(max_new_tokens):
                if profile:
                    ev = (cupy.cuda.Event(), cupy.cuda.Event(), cupy.cuda.Event())
                    ev[0].record(self.dev.stream)
                if not (engine_in_graph and t >= 1):
                    engine.run()
                if profile:
                    ev[1].record(self.dev.stream)
                if use_graph and t >= 1:
                    if graph is None:
                        from .cuda_graph import CapturedStep

                        graph = CapturedStep(whole_step if engine_in_graph else after_engine, self.dev.stream,
                                             self.dev.graph_pool)
                        if self.opts.reuse_step_graphs:
                            slot.graphs[id(strategy)] = (strategy, graph)
                            while len(slot.graphs) > self.opts.max_cached_buckets:
                                slot.graphs.popitem(last=False)
                    graph.launch()
                else:
                    after_engine()  # step 0 runs eagerly: it compiles and loads every kernel
                if profile:
                    ev[2].record(self.dev.stream)
                    events.append(ev)
                steps = t + 1
                if steps % check == 0 or steps == max_new_tokens:
                    w0 = time.perf_counter()
                    finished = bool(strategy.done())  # the one host synchronisation
                    waited += time.perf_counter() - w0
                    if finished or (on_check is not None and on_check(steps)):
                        break
            w0 = time.perf_counter()
            self.dev.synchronize()
            waited += time.perf_counter() - w0
        total = time.perf_counter() - t_start
        self.timings.decode_s = total
        self.timings.steps = steps
        self.timings.host_s = total - waited
        if profile:
            # step 0 is eager (kernel compilation); steps >= 1 are what a request costs
            steady = events[1:] or events
            scale = len(events) / len(steady) / 1e3
            self.timings.engine_s = sum(cupy.cuda.get_elapsed_time(a, b) for a, b, _ in steady) * scale
            self.timings.decoding_s = sum(cupy.cuda.get_elapsed_time(b, c) for _, b, c in steady) * scale
        return steps
