"""Pooled decoding: every single-row greedy / sampling request of an in-flight slot pool decoded
in one launch per step (kernels/sampling_pool.cu, DESIGN.md §5a).

A per-request strategy (sampling.py) costs, per step, a CUDA-graph replay of a few tiny kernels,
and when it starts an eager step plus a capture; at ~40 rows the H100 scheduler spent its time
there (bench/diag/scheduler_profile.py). Here the pool's rows carry their own options and step
counters instead, and one step is ONE kernel (one captured graph per launch size) whatever the
number of requests:

    join(row, ...)   queue the row's options and a fresh sequence   } one upload + one launch
    leave(row)       queue mode 0 (the row is skipped from now on)   } at the next flush()
    step(n)          rows 0..n-1 choose their tokens from the pool's logits and advance
    snapshot(n)      one host copy of the rows' state (the scheduler's done check)

A pooled row decodes bit-identically to the solo strategy of the same request (same device
functions and float expressions; tests/test_kernels.py). What pools: one input, one row per
input (greedy, or sampling with one return sequence), and no processor but min_new_tokens
(repetition / n-gram / bad-words processors, user processors and beams keep their own strategy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..generation_config import GenerationConfig
from . import rng
from .sampling import _cut_at_eos, _to_host

GREEDY, SAMPLE = 1, 2


def pooled_mode(cfg: GenerationConfig, inputs: int, rows_per_input: int) -> int | None:
    """GREEDY or SAMPLE when a request chunk can decode as a pooled row, else None."""
    if inputs != 1 or rows_per_input != 1 or cfg.num_beams != 1:
        return None
    if cfg.repetition_penalty != 1.0 or cfg.no_repeat_ngram_size > 0 or cfg.bad_words_ids or cfg.logits_processors:
        return None
    return SAMPLE if cfg.do_sample else GREEDY


@dataclass
class Snapshot:
    """Rows 0..n-1 on the host: unfinished, position (= tokens generated), seq_logprob, history,
    token_logprob (None unless asked for). Read it before the pool's next step (on numpy the
    arrays are views of the state)."""

    unfinished: np.ndarray
    position: np.ndarray
    seq_logprob: np.ndarray
    history: np.ndarray
    token_logprob: np.ndarray | None

    def tokens(self, row: int, eos: int) -> list[int]:
        """The row's generated tokens so far, cut after the first eos (as SamplingStrategy.result)."""
        return _cut_at_eos(self.history[row, 1:int(self.position[row]) + 1].tolist(), eos)


class PooledRows:
    """The pooled rows of one slot pool: their device state, queued updates and step graphs."""

    def __init__(self, kernels: Any, launcher: Any, *, capacity: int, width: int, input_ids: Any, position: Any,
                 logits: Any, pad: int, eos: int, start: int, vocab_size: int, capture: Any = None):
        """input_ids [C, 1], position [C], logits [C, V] fp32: the pool's decoder-step buffers.
        capture: fn -> CapturedStep (None: launch eagerly every step)."""
        self.k, self.xp = kernels, launcher.xp
        self.state = kernels.PoolState(capacity, width, input_ids.reshape(-1), position, launcher=launcher)
        self.logits = logits
        self.pad, self.eos, self.start, self.vocab = pad, eos, start, vocab_size
        self._capture = capture
        self._updates: dict[int, np.ndarray] = {}  # row -> its latest update (a join overrides a leave)
        self._graphs: dict[int, Any] = {}
        self._eager: set[int] = set()

    def accepts(self, cfg: GenerationConfig, inputs: int, rows_per_input: int, max_new: int) -> int | None:
        return pooled_mode(cfg, inputs, rows_per_input) if max_new < self.state.width else None

    def join(self, row: int, mode: int, cfg: GenerationConfig, max_new: int, rng_row: int) -> None:
        """Row `row` starts a request (applied at the next flush); seed None draws a fresh one, as
        a new strategy would."""
        seed = cfg.seed if cfg.seed is not None else (rng.fresh_seed() if mode == SAMPLE else 0)
        self._updates[row] = self.k.pool_update_row(
            row, mode=mode, temperature=float(cfg.temperature), top_k=int(cfg.top_k or 0), top_p=float(cfg.top_p),
            seed=int(seed), rng_row=rng_row, max_new=max_new, min_new=int(cfg.min_new_tokens),
            vocab_size=self.vocab)

    def leave(self, row: int) -> None:
        self._updates[row] = self.k.pool_update_row(row, mode=0)

    def flush(self) -> None:
        """Queued joins and leaves, as one upload and one launch (before the pool's next step)."""
        if not self._updates:
            return
        upd = self.xp.asarray(np.stack(list(self._updates.values())))
        self._updates.clear()
        self.k.pool_set(self.state, upd, pad=self.pad, start=self.start)

    def step(self, n: int) -> None:
        """Rows 0..n-1 choose their next tokens from the pool's logits (one launch; on CUDA one
        graph per n, captured at its second use so that the first loads the kernel eagerly)."""
        g = self._graphs.get(n)
        if g is not None:
            g.launch()
            return
        if self._capture is not None and n in self._eager:
            self._graphs[n] = g = self._capture(lambda: self._launch(n))
            g.launch()
            return
        self._eager.add(n)
        self._launch(n)

    def _launch(self, n: int) -> None:
        self.k.pool_step(self.state, self.logits, n, eos=self.eos)

    def snapshot(self, n: int, token_scores: bool = False) -> Snapshot:
        """Rows 0..n-1 on the host (the caller has synchronised the stream)."""
        s = self.state
        return Snapshot(*(_to_host(a[:n]) for a in (s.unfinished, s.position, s.seq_logprob, s.history)),
                        _to_host(s.token_logprob[:n]) if token_scores else None)
