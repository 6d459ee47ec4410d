"""In-flight (continuous) batching for encoder-decoder generation (DESIGN.md §5a).

A request is cut into members (chunks of inputs that fit a slot pool, like the direct path's
max_batch chunks); each member owns a contiguous block of rows in the pool of its source bucket,
its own decoding strategy (batch = its inputs, request-wide RNG rows: `first_input`), and, on
CUDA, the CUDA graph captured over its per-step decoding work. One scheduler step:

    drop      cancelled / timed-out requests leave; their rows are free at once
    join      waiting members take free rows (FIFO per pool, so a beam block waiting for
              room is never overtaken for good); their encoder + cross K/V run batched
              (one encoder launch per pool per step) and are scattered into their rows
    step      per pool: ONE decoder-step launch over the first n rows (n = slot-count bucket),
              cache row writes, then the token choice: on CUDA every single-row greedy /
              sampling member of the pool in ONE launch (decoding/pooled.py: per-row options
              and step counters); other members (beams, several rows, processors) each on its
              own rows (a graph replay each on CUDA), feeding their next tokens and positions;
              a strategy outlives its member (reset in place for the next of its shape), and so
              does its graph: a later member of that shape takes the same rows if they are free
              and replays it instead of capturing its own
    check     every done_check_interval steps (or when a member reached max_new_tokens): the
              one host sync; finished members return their result at once and leave; streamed
              inputs get their new tokens

A member's tokens do not depend on its neighbours: the decoder step is row-independent and a
member's strategy is exactly the one the direct path builds for the same chunk.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..inputs import chunks
from ..runtime.buckets import pow2_at_least, pow2_buckets, src_bucket
from ..runtime.kv_cache import CacheOps
from .request import Request
from .scheduler import as_request_error
from .slots import SlotPool
from .solo import finish, refresh_available
from .stats import ServiceStats

KEEP_STRATEGIES = 64  # idle strategies kept for reuse (reset in place), least recently used dropped
# warm(): runs of each engine on CUDA (ORT captures a graph id's CUDA graph after two plain runs;
# the third is that capture, so the first request of the shape replays it)
WARM_RUNS_CUDA = 3


@dataclass(eq=False)
class _Job:
    """One request's progress: its members' results by chunk index."""

    req: Request
    parts: list[Any]
    left: int
    joined_at: float | None = None
    steps: int = 0


@dataclass(eq=False)
class _Idle:
    """A finished member's decoding state, kept for a later member of the same reuse key: its
    strategy (reset in place) and, on CUDA, the graph captured over its per-step work, which
    replays only where it was captured: the same rows of the same pool, with the same view and
    cache ops (the graph holds their device addresses)."""

    key: Any
    strategy: Any
    pool: SlotPool
    lo: int
    graph: Any = None
    view: Any = None
    cache: CacheOps | None = None


@dataclass(eq=False)
class _Member:
    job: _Job
    index: int                # chunk index within the request
    first_input: int          # request-wide index of its first input (RNG rows)
    input_ids: np.ndarray     # [b, s] host, trimmed to the chunk's longest input
    attention_mask: np.ndarray
    rows_per_input: int
    src_len: int              # source bucket = its pool
    pool: SlotPool | None = None
    lo: int = 0
    strategy: Any = None
    key: Any = None           # strategy reuse key (None: never reused)
    view: Any = None          # DecoderBuffers of its rows (views into the pool)
    cache: CacheOps | None = None  # beam search: reorder inside its rows
    graph: Any = None         # CUDA: its captured per-step decoding work
    spare: Any = None         # CUDA: a graph captured by an earlier member on these rows, replayed from step 1
    pooled: bool = False      # decoded by its pool's PooledRows (row lo), not a strategy of its own
    steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def inputs(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def rows(self) -> int:
        return self.inputs * self.rows_per_input

    @property
    def max_new(self) -> int:
        return self.job.req.max_new_tokens


class InflightExecutor:
    """The scheduler's executor when RuntimeOptions.inflight (the default)."""

    def __init__(self, runtime: Any, stats: ServiceStats):
        self.rt = runtime
        self.runner = runtime.runner
        self.dev = runtime.device
        self.opts = runtime.options
        self.stats = stats
        self.capacity = self.opts.max_batch  # rows per pool
        self.pending: list[_Member] = []
        self.active: list[_Member] = []
        self.pools: dict[int, SlotPool] = {}
        self._enc: dict[tuple[int, int], Any] = {}
        self._idle: OrderedDict[int, _Idle] = OrderedDict()  # id(strategy) -> idle state, oldest first
        self._cache_len = self.runner.decoder_cache_len(runtime.manifest.max_output_len)
        self._reuse = not self.dev.is_cuda or self.opts.reuse_step_graphs
        self._graphs = self.dev.is_cuda and self.opts.cuda_graphs
        self._waiting = 0

    # -- executor protocol -----------------------------------------------------------------
    def admit(self, requests: list[Request]) -> None:
        refresh_available(self.rt)
        for req in requests:
            self.pending += self._members(req)
        self._count_waiting()

    def _count_waiting(self) -> None:
        self._waiting = len({id(m.job) for m in self.pending})

    def busy(self) -> bool:
        return bool(self.pending or self.active)

    def waiting(self) -> int:
        """Requests admitted but not running yet (as of the last step boundary: callers' put()
        reads it for the queue bound without walking the waiting list)."""
        return self._waiting

    def slots_in_use(self) -> int:
        return sum(m.rows for m in self.active)

    def step(self) -> None:
        # every array op below runs on the runtime's stream (CUDA: the legacy default stream
        # would not be ordered with it)
        with self.dev.use():
            t0 = time.perf_counter()
            self._drop(t0)
            self._join()
            self._count_waiting()
            self.stats.joined(time.perf_counter() - t0)
            stepped = 0
            for pool in list(self.pools.values()):
                members = [m for m in self.active if m.pool is pool]
                if members:
                    self._step_pool(pool, members)
                    stepped += 1
            if stepped:
                self.stats.count("scheduler_steps")

    def fail_all(self, exc: BaseException) -> None:
        """Every request in flight or waiting fails with `exc`; then their rows are freed (that
        may touch the device, which may be what failed: the requests are answered first)."""
        jobs = {id(m.job): m.job for m in self.active + self.pending}
        for job in jobs.values():
            self.stats.count("failed")
            job.req.fail(exc)
        held = [m for m in self.pending if m.pool is not None]  # rows taken by an interrupted join
        self.pending.clear()
        self._waiting = 0
        for m in held:
            m.pool.used[m.lo:m.lo + m.rows] = False
        for m in list(self.active):
            self._leave(m)

    def warm(self, src_lens: list[int]) -> dict[str, Any]:
        """Runtime.warmup on the worker: per source bucket its slot pool, the decoder step at every
        slot-count bucket (CUDA: powers of two up to max_batch, each an engine with its own CUDA
        graph; the CPU, which binds any count on first use at no cost: all rows once), the pool's
        pooled-rows launches, and the encoder + cross K/V at every batch bucket, each run as a
        request would run it.
        A pool that already holds requests is left alone (its steps are theirs)."""
        t0 = time.perf_counter()
        cuda = self.dev.is_cuda
        runs = WARM_RUNS_CUDA if cuda else 1
        sizes = pow2_buckets(self.capacity) if cuda else [self.capacity]  # CPU: the whole pool once
        made = {"pools": 0, "decoder_steps": 0, "encoders": 0}
        with self.dev.use():
            for s in src_lens:
                fresh = s not in self.pools
                pool = self._pool(s)
                made["pools"] += fresh
                if pool.used.any():
                    continue
                for n in sizes:
                    for _ in range(runs):
                        pool.step(n)  # free rows: position 0, outputs nobody reads
                    if pool.decoder is not None:
                        pool.decoder.flush()
                        for _ in range(2):  # its graph for n is captured at the second use
                            pool.decoder.step(n)
                    made["decoder_steps"] += 1
                for k in pow2_buckets(self.opts.max_batch):
                    enc = self._encoder(k, s)
                    ids, mask = np.zeros((k, s), np.int64), np.ones((k, s), np.int64)
                    for _ in range(runs):
                        self.runner.run_encoder(enc, ids, mask)
                    made["encoders"] += 1
            self.dev.synchronize()
        refresh_available(self.rt)
        return {"seconds": time.perf_counter() - t0, "source_buckets": list(src_lens), "launch_sizes": sizes, **made}

    # -- members ---------------------------------------------------------------------------
    def _members(self, req: Request) -> list[_Member]:
        r = req.config.rows_per_input()
        per = max(1, min(self.opts.max_batch, self.capacity // r))
        job = _Job(req, [], 0)
        members = []
        for lo, ids, mask in chunks(req.input_ids, req.attention_mask, per):
            members.append(_Member(job, len(members), lo, ids, mask, r,
                                   src_bucket(ids.shape[1], self.rt.manifest.max_input_len)))
        job.parts, job.left = [None] * len(members), len(members)
        return members

    def _drop(self, now: float) -> None:
        seen: dict[int, bool] = {}

        def gone(m: _Member) -> bool:
            k = id(m.job)
            if k not in seen:
                seen[k] = m.job.req.dropped(now)
                if seen[k]:
                    self.stats.count("cancelled" if m.job.req.future.cancelled() else "timed_out")
            return seen[k]

        for m in [m for m in self.active if gone(m)]:
            self._leave(m)
        self.pending = [m for m in self.pending if not gone(m)]

    def _join(self) -> None:
        """Waiting members take free rows, FIFO within each pool; then their encoders run."""
        blocked: set[int] = set()
        joining: dict[int, list[_Member]] = {}
        still: list[_Member] = []
        for m in self.pending:
            if m.src_len in blocked:
                still.append(m)
                continue
            pool, lo = self._rows_of_idle_graph(m)
            if lo is None:
                for pool in self._pools_for(m.src_len):
                    lo = pool.alloc(m.rows)
                    if lo is not None:
                        break
            if lo is None:
                blocked.add(m.src_len)
                still.append(m)
                continue
            m.pool, m.lo = pool, lo
            joining.setdefault(pool.src_len, []).append(m)
        self.pending = still
        for members in joining.values():
            try:
                self._start(members)
            except Exception as e:  # noqa: BLE001 - these requests fail; the others go on
                err = as_request_error(e)
                for m in members:
                    if m not in self.active:  # rows taken, never started: give them back
                        m.pool.used[m.lo:m.lo + m.rows] = False
                for job in {id(m.job): m.job for m in members}.values():
                    self._fail_job(job, err)

    def _rows_of_idle_graph(self, m: _Member) -> tuple[Any, int | None]:
        """CUDA: free rows where an idle member of m's reuse key left its captured graph (a pool m
        may join), taken -> (pool, lo); else (None, None). So a recurring request shape (beam
        search, several inputs) replays a graph instead of capturing one per request."""
        if not self._graphs or not self._reuse or not any(e.graph is not None for e in self._idle.values()):
            return None, None
        first = next(iter(self._existing_pools_for(m.src_len)), None)  # the pool m would try first
        key = first and self._key(m)
        if key is None:
            return None, None
        for e in reversed(self._idle.values()):  # most recently used first
            if e.graph is not None and e.pool is first and e.key == key and first.alloc_at(e.lo, m.rows):
                return first, e.lo
        return None, None

    def _pools_for(self, src_len: int) -> Any:
        """The pools a member of source bucket src_len may join, in order. With share_pools: the
        existing pools of a bucket >= its own, those already running requests first (each pool
        is one more decoder-step launch a scheduler step, so fewer busy pools means shorter steps
        for everyone; padding adds exact zeros), smallest bucket first (gather_pools: the busy
        ones longest first, so the shorter pools drain); then its own bucket's pool, made on
        first use."""
        yield from self._existing_pools_for(src_len)
        if src_len not in self.pools:
            yield self._pool(src_len)

    def _existing_pools_for(self, src_len: int) -> list[SlotPool]:
        """_pools_for's pools that exist already, in its order."""
        if not self.opts.share_pools:
            return [self.pools[src_len]] if src_len in self.pools else []
        gather = self.opts.gather_pools

        def order(p: SlotPool) -> tuple[bool, int]:
            busy = bool(p.used.any())
            return (not busy, -p.src_len if busy and gather else p.src_len)
        return sorted((p for s, p in self.pools.items() if s >= src_len), key=order)

    def _pool(self, src_len: int) -> SlotPool:
        pool = self.pools.get(src_len)
        if pool is None:
            pool = self.pools[src_len] = SlotPool(self.runner, src_len, self._cache_len, self.capacity)
            pool.decoder = self._pooled_rows(pool)
        return pool

    def _pooled_launcher(self) -> Any:
        """The kernels' launcher for pooled rows: on CUDA when the strategies use the fused
        kernels too (a pooled row must decode exactly as solo), else None (every member keeps a
        strategy of its own)."""
        from ..decoding import ops

        if not self.dev.is_cuda or self.runner.kernels is None or not self.opts.inflight_kernels:
            return None
        return ops.kernel_launcher(self.dev.xp, None)

    def _pooled_rows(self, pool: SlotPool) -> Any:
        """The pool's PooledRows (decoding/pooled.py), or None."""
        launcher = self._pooled_launcher()
        if launcher is None:
            return None
        from .. import kernels
        from ..decoding.pooled import PooledRows

        st, b = self.rt.manifest.special_tokens, pool.bufs
        capture = None
        if self._graphs:
            from ..runtime.cuda_graph import CapturedStep

            def capture(fn: Any) -> Any:
                return CapturedStep(fn, self.dev.stream, self.dev.graph_pool)
        return PooledRows(kernels, launcher, capacity=self.capacity,
                          width=self.rt.manifest.max_output_len + 1, input_ids=b.input_ids, position=b.position,
                          logits=b.logits, pad=st.pad_token_id, eos=st.eos_token_id,
                          start=st.decoder_start_token_id, vocab_size=self.rt.manifest.dims.vocab_size,
                          capture=capture)

    def _start(self, members: list[_Member]) -> None:
        """Encoder + cross K/V of members joining one pool, batched (<= max_batch inputs a
        launch), scattered into their rows; each gets its strategy and its first inputs."""
        xp, pool = self.dev.xp, members[0].pool
        now = time.perf_counter()
        groups: list[list[_Member]] = [[]]
        for m in members:
            if groups[-1] and sum(x.inputs for x in groups[-1]) + m.inputs > self.opts.max_batch:
                groups.append([])
            groups[-1].append(m)
        with self.dev.use():
            for group in groups:
                k = sum(m.inputs for m in group)
                width = max(m.input_ids.shape[1] for m in group)
                ids = np.zeros((k, width), np.int64)
                mask = np.zeros((k, width), np.int64)
                src, dst, row = [], [], 0
                for m in group:
                    b, s = m.input_ids.shape
                    ids[row:row + b, :s], mask[row:row + b, :s] = m.input_ids, m.attention_mask
                    src += [row + i for i in range(b) for _ in range(m.rows_per_input)]
                    dst += range(m.lo, m.lo + m.rows)
                    row += b
                enc = self._encoder(k, pool.src_len)
                self.runner.run_encoder(enc, ids, mask)
                pool.load(enc, xp.asarray(np.array(src, np.int64)), xp.asarray(np.array(dst, np.int64)))
            for m in members:
                mode = pool.decoder and pool.decoder.accepts(m.job.req.config, m.inputs, m.rows_per_input, m.max_new)
                if mode:
                    pool.decoder.join(m.lo, mode, m.job.req.config, m.max_new, m.first_input)
                    m.pooled, m.strategy = True, pool.decoder
                    self.stats.count("pooled")
                    if m.job.joined_at is None:
                        m.job.joined_at = now
                    self.active.append(m)
                    continue
                m.strategy = self._strategy(m)
                if m.view is None:  # (else: the view and cache ops of the graph it will replay)
                    m.view = pool.bufs.rows_view(m.lo, m.lo + m.rows)
                    if m.strategy.parent is not None:
                        m.cache = CacheOps(xp, m.view, self.runner.kernels)
                self._feed(m)
                if m.job.joined_at is None:
                    m.job.joined_at = now
                self.active.append(m)

    def _encoder(self, inputs: int, src_len: int) -> Any:
        """Encoder buffers per (batch bucket, source bucket), kept for the runtime's life (a
        handful of shapes; each its own engine and, on CUDA, its own captured graph)."""
        key = (min(pow2_at_least(inputs), self.opts.max_batch), src_len)
        enc = self._enc.get(key)
        if enc is None:
            enc = self._enc[key] = self.runner.new_encoder_buffers(*key)
        return enc

    def _key(self, m: _Member) -> Any:
        """m's strategy reuse key (None: never reused), worked out once (the join may ask first)."""
        from ..generate import reuse_key

        if m.key is None and self._reuse:
            m.key = reuse_key(m.job.req.config, m.inputs, m.max_new, m.first_input)
        return m.key

    def _strategy(self, m: _Member) -> Any:
        """An idle strategy of the same key reset in place, else a new one (the direct path's).
        One that left a captured graph on m's very rows comes first: m then takes its view, cache
        ops and graph (m.spare, replayed from step 1 on instead of a capture)."""
        if self._key(m) is not None:
            # (graphs elsewhere go last: a strategy taken from them loses its graph)
            same = sorted(((sid, e) for sid, e in self._idle.items() if e.key == m.key),
                          key=lambda se: se[1].graph is not None)
            here = [(sid, e) for sid, e in same if e.graph is not None and e.pool is m.pool and e.lo == m.lo]
            if here or same:
                sid, e = (here or same)[0]
                del self._idle[sid]
                if here:
                    m.view, m.cache, m.spare = e.view, e.cache, e.graph
                e.strategy.reset()
                return e.strategy
        return self.rt._new_strategy(m.job.req.config, m.inputs, m.max_new, m.first_input)

    @staticmethod
    def _feed(m: _Member) -> None:
        """The chosen tokens and their positions become the member's next engine inputs."""
        m.view.input_ids[:, 0] = m.strategy.tokens
        m.view.position[...] = m.strategy.step_counter

    def _after_engine(self, m: _Member) -> None:
        """A member's per-step work after the shared engine launch (captured on CUDA)."""
        m.strategy.step(m.view.logits)
        if m.cache is not None:  # beam search: rows 0..t are valid after step t
            m.cache.reorder(m.strategy.parent, m.strategy.step_counter)
        self._feed(m)

    def _leave(self, m: _Member) -> None:
        self.active.remove(m)
        if m.pooled:
            m.pool.decoder.leave(m.lo)
        m.pool.free(m.lo, m.rows)
        if m.key is not None and not m.pooled:  # kept with its graph, which replays on these rows only
            self._idle[id(m.strategy)] = _Idle(m.key, m.strategy, m.pool, m.lo, m.graph or m.spare, m.view, m.cache)
            while len(self._idle) > KEEP_STRATEGIES:
                self._idle.popitem(last=False)
        m.strategy = m.view = m.cache = m.graph = m.spare = None

    # -- one step of one pool --------------------------------------------------------------
    def _step_pool(self, pool: SlotPool, members: list[_Member]) -> None:
        t0 = time.perf_counter()
        pooled = False
        with self.dev.use():
            n = pool.launch_rows()
            if pool.decoder is not None:
                pool.decoder.flush()  # joins (fresh rows: their first inputs) and leaves
            pool.step(n)
            engine = time.perf_counter() - t0
            for m in members:
                if m.strategy is None:  # its request failed earlier in this step
                    continue
                if m.pooled:
                    pooled = True
                    m.steps += 1
                    continue
                try:
                    if m.graph is not None:
                        m.graph.launch()
                    elif m.spare is not None and m.steps >= 1:  # an earlier member's graph, these rows
                        m.graph, m.spare = m.spare, None
                        self.stats.count("graphs_reused")
                        m.graph.launch()
                    elif self._graphs and m.steps >= 1 and m.strategy.capturable:
                        # step 0 ran eagerly (it loads every kernel); from step 1 on: one replay
                        from ..runtime.cuda_graph import CapturedStep

                        m.graph = CapturedStep(lambda m=m: self._after_engine(m), self.dev.stream, self.dev.graph_pool)
                        self.stats.count("graphs_captured")
                        m.graph.launch()
                    else:
                        self._after_engine(m)  # user logits processors run here (host code)
                except Exception as e:  # noqa: BLE001 - one request's failure is that request's
                    self._fail_job(m.job, as_request_error(e))
                    continue
                m.steps += 1
            if pooled:
                try:
                    pool.decoder.step(n)
                except Exception as e:  # noqa: BLE001 - the pooled requests fail, the others go on
                    err = as_request_error(e)
                    for job in {id(m.job): m.job for m in members if m.pooled and m.strategy is not None}.values():
                        self._fail_job(job, err)
        members = [m for m in members if m.strategy is not None]
        host = time.perf_counter() - t0
        if members and (pool.steps % self.opts.done_check_interval == 0 or any(m.steps >= m.max_new for m in members)):
            self.dev.synchronize()  # the one host synchronisation (its wait is not host time)
            self.stats.count("done_checks")
            t1 = time.perf_counter()
            self._check(members, t1)
            host += time.perf_counter() - t1
        self.stats.stepped(sum(m.rows for m in members), host, engine)

    def _fail_job(self, job: _Job, exc: BaseException) -> None:
        """One request failed (e.g. its logits processor raised): it alone leaves and gets `exc`."""
        for m in [m for m in self.active if m.job is job]:
            self._leave(m)
        self.pending = [m for m in self.pending if m.job is not job]
        self._count_waiting()
        self.stats.count("failed")
        job.req.fail(exc)

    def _check(self, members: list[_Member], now: float) -> None:
        """Which members finished (one host read for the pooled rows, one for the others' done
        flags); finished ones complete, streamed ones get their new tokens."""
        xp = self.dev.xp
        own = [m for m in members if not m.pooled]
        pooled = [m for m in members if m.pooled]
        with self.dev.use():
            done = list(self.dev.to_host(xp.stack([m.strategy.done() for m in own]))) if own else []
            snap = None
            if pooled:
                snap = pooled[0].pool.decoder.snapshot(max(m.lo for m in pooled) + 1,
                                                       any(m.job.req.config.output_scores for m in pooled))
                done += [not snap.unfinished[m.lo] for m in pooled]
        for m, d in zip(own + pooled, done):
            req = m.job.req
            self.stats.first_token(req, now)
            if bool(d) or m.steps >= m.max_new:
                try:
                    self._complete(m, snap)
                except Exception as e:  # noqa: BLE001 - its request fails, not everyone's
                    self._fail_job(m.job, as_request_error(e))
            elif req.writer is not None and m.pooled:
                req.writer.update(snap.tokens(m.lo, self.rt.manifest.special_tokens.eos_token_id))
            elif req.writer is not None and m.first_input == 0 and m.strategy.parent is None:
                req.writer.update_from(self.dev, m.strategy)

    def _complete(self, m: _Member, snap: Any = None) -> None:
        cfg, job = m.job.req.config, m.job
        if m.pooled:  # its row in the pool's snapshot (as SamplingStrategy.result / token_scores)
            seq = snap.tokens(m.lo, self.rt.manifest.special_tokens.eos_token_id)
            seqs, scores = [seq], [float(snap.seq_logprob[m.lo])]
            tok = [snap.token_logprob[m.lo, 1:1 + len(seq)].tolist()] if cfg.output_scores else None
        else:
            seqs, scores = m.strategy.result()
            tok = m.strategy.token_scores() if cfg.output_scores else None
        job.parts[m.index] = ([list(map(int, s)) for s in seqs], [float(x) for x in scores], tok)
        job.steps = max(job.steps, m.steps)
        self._leave(m)
        job.left -= 1
        if job.left:
            return
        sequences, scores_all, token_scores = [], [], []
        for s, sc, tk in job.parts:
            sequences += s
            scores_all += sc
            token_scores += tk or []
        req, now = job.req, time.perf_counter()
        timings = {"queue_s": (job.joined_at or now) - req.submitted,
                   "ttft_s": (req.first_token_at or now) - req.submitted,
                   "latency_s": now - req.submitted, "steps": job.steps}
        finish(req, self.rt._output(sequences, scores_all, token_scores, cfg, timings), self.stats)

