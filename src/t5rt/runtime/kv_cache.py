"""Self-attention KV cache updates: the write form's row write and beam search's reorder.

Array-module generic (numpy/cupy) reference paths that are CUDA-graph capturable (positions and
parents are device arrays, never read on the host). On CUDA the fused kernels of t5rt.kernels
replace them when available (one launch for all layers; reorder of the valid prefix only).
"""

from __future__ import annotations

from typing import Any


class CacheOps:
    """Cache write + reorder for one DecoderBuffers, on numpy/cupy or the fused kernels."""

    def __init__(self, xp: Any, bufs: Any, kernels: Any = None):
        self.xp = xp
        self.bufs = bufs
        self.kernels = kernels
        self.rows = xp.arange(bufs.rows, dtype=xp.int64)  # [N]
        self._caches = self._rows = self._scratch = None
        if kernels is not None:
            self._caches = kernels.PointerTable(bufs.self_k + bufs.self_v)  # [2L] device pointers
            if bufs.new_k:
                self._rows = kernels.PointerTable(bufs.new_k + bufs.new_v)

    def write(self, position: Any) -> None:
        """cache[n, :, position[n], :] = new[n, :, 0, :] for every layer (write form)."""
        if self._rows is not None:
            self.kernels.kv_write(self._caches, self._rows, position)
            return
        b = self.bufs
        for cache, new in zip(b.self_k + b.self_v, b.new_k + b.new_v):
            cache[self.rows, :, position, :] = new[:, :, 0, :]  # [N, H, Dk]

    def reorder(self, parent: Any, valid_len: Any) -> None:
        """cache[n, :, :len] = cache[parent[n], :, :len] for every layer (beam search)."""
        if self._caches is not None:
            if self._scratch is None:  # only beam search needs it: allocated on first use
                self._scratch = self.kernels.reorder_scratch(self._caches)
            self.kernels.beam_reorder(self._caches, parent, valid_len, self._scratch)
            return
        b = self.bufs
        for cache in b.self_k + b.self_v:
            cache[...] = cache[parent]  # whole cache: rows past len are masked and harmless
