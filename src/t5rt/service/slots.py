"""A slot pool: the static decode batch of in-flight batching for one source bucket (DESIGN.md §5a).

    bufs         DecoderBuffers of `capacity` rows: self caches [C, H, T, Dk], cross K/V
                 [C, H, S, Dk] and mask [C, S] per row, input_ids [C, 1], position [C], logits [C, V]
    engines[n]   the decoder step bound to the first n rows (CUDA: n = a power of two, the
                 slot-count bucket, each its own ORT/TensorRT CUDA graph; CPU: any n)

A request chunk takes a contiguous block of rows (beam search reorders inside its block),
lowest rows first so that launches stay small; each step runs the engine over the first n rows
that cover every occupied block, whatever positions those rows sit at (position is per row).
Free rows compute garbage nobody reads.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..runtime.buckets import pow2_at_least
from ..runtime.buffers import DecoderBuffers, EncoderBuffers
from ..runtime.kv_cache import CacheOps


class SlotPool:
    def __init__(self, runner: Any, src_len: int, cache_len: int, capacity: int):
        self.runner = runner
        self.src_len, self.cache_len, self.capacity = src_len, cache_len, capacity
        self.bufs = DecoderBuffers.allocate_slots(runner.m, runner.dev, capacity, src_len, cache_len)
        self.used = np.zeros(capacity, dtype=bool)  # host map of occupied rows
        self._heads: dict[int, tuple[DecoderBuffers, CacheOps]] = {}
        self.steps = 0  # decoder steps launched (the done-check cadence counts these)
        self.decoder: Any = None  # CUDA: PooledRows of its single-row greedy / sampling requests
        self._cross: Any = None   # CUDA: its cross K/V as one pointer table (load)
        self._graphs: dict[int, Any] = {}  # launch size -> the engine's captured step (capturable engines)
        self._ran: set[int] = set()        # launch sizes whose engine ran once eagerly

    # -- rows ------------------------------------------------------------------------------
    def alloc(self, rows: int) -> int | None:
        """The lowest free block of `rows` contiguous rows -> its first row, or None."""
        run = 0
        for i in range(self.capacity):
            run = run + 1 if not self.used[i] else 0
            if run == rows:
                lo = i - rows + 1
                self.used[lo:i + 1] = True
                return lo
        return None

    def alloc_at(self, lo: int, rows: int) -> bool:
        """Take rows lo..lo+rows-1 if they are all free -> whether it did."""
        if lo < 0 or lo + rows > self.capacity or self.used[lo:lo + rows].any():
            return False
        self.used[lo:lo + rows] = True
        return True

    def free(self, lo: int, rows: int) -> None:
        """Rows lo..lo+rows-1 are free again. Their position goes back to 0: the pool step runs
        over free rows too, and a row left at a finished request's last position (the cache
        length, for one that used the whole output length) would write past its cache."""
        self.used[lo:lo + rows] = False
        with self.runner.dev.use():  # ordered with the steps on the runtime's stream
            self.bufs.position[lo:lo + rows] = 0

    @property
    def rows_in_use(self) -> int:
        return int(self.used.sum())

    def launch_rows(self) -> int:
        """Rows to run: on CUDA the slot-count bucket, the smallest power of two covering every
        occupied row (one captured graph each); on the CPU (compute-bound, no graphs) exactly
        up to the last occupied row."""
        occupied = np.flatnonzero(self.used)
        top = int(occupied[-1]) + 1 if occupied.size else 1
        if not self.runner.dev.is_cuda:
            return top
        return min(pow2_at_least(top), self.capacity)

    # -- device work -----------------------------------------------------------------------
    def head(self, n: int) -> tuple[DecoderBuffers, CacheOps]:
        """(first n rows bound to their own engine, their cache ops), made on first use."""
        got = self._heads.get(n)
        if got is None:
            view = self.runner.bind_decoder(self.bufs.rows_view(0, n))
            got = self._heads[n] = (view, CacheOps(self.runner.dev.xp, view, self.runner.kernels))
        return got

    def load(self, enc: EncoderBuffers, src_rows: Any, dst_rows: Any) -> None:
        """Cross K/V and mask of encoder rows src_rows[i] -> pool rows dst_rows[i] (device index
        arrays [R] int64; a beam request's input repeats once per beam). With
        RuntimeOptions.inflight_kernels on CUDA: every layer's cross K/V in one launch
        (t5rt.kernels.rows_copy) through pointer tables made once per buffer set, else an
        indexed copy per tensor."""
        b = self.bufs
        s = enc.src_len  # == self.src_len (a pool's encoder runs at its bucket)
        k = self.runner.kernels
        if k is not None and self.runner.dev.is_cuda and self.runner.opts.inflight_kernels:
            if self._cross is None:
                self._cross = k.PointerTable(b.cross_k + b.cross_v)
            if enc.cross_table is None:
                enc.cross_table = k.PointerTable(enc.cross_k + enc.cross_v)
            k.rows_copy(self._cross, enc.cross_table, dst_rows, src_rows)
        else:
            for dst, src in zip(b.cross_k + b.cross_v, enc.cross_k + enc.cross_v):
                dst[dst_rows] = src[src_rows]
        b.encoder_attention_mask[dst_rows, :s] = enc.attention_mask[src_rows]

    def step(self, n: int) -> None:
        """Enqueue the decoder step over rows 0..n-1 and (write form) the cache row writes. An
        engine that can be captured (the native kernels: ~50 launches a step from Python) runs
        eagerly once per launch size, then as a CUDA graph captured at its second use
        (RuntimeOptions.cuda_graphs and graph_engine_step), one replay a step."""
        view, cache = self.head(n)
        if self.runner.captures_engine(view.engine):
            g = self._graphs.get(n)
            if g is None and n in self._ran:
                from ..runtime.cuda_graph import CapturedStep

                dev = self.runner.dev
                g = self._graphs[n] = CapturedStep(view.engine.run, dev.stream, dev.graph_pool)
            if g is None:
                view.engine.run()
                self._ran.add(n)
            else:
                g.launch()
        else:
            view.engine.run()
        if self.runner.m.cache_update == "write" and not getattr(view.engine, "writes_cache", False):
            cache.write(view.position)  # (the native engine writes its new K/V rows itself)
        self.steps += 1
