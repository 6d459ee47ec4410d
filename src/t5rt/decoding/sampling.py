"""Greedy search and multinomial sampling: one token per row per step (HF `_sample`).

Rows: N = batch * r (r = num_return_sequences when sampling, 1 for greedy); the rows of
input b are b*r .. b*r+r-1. Per step t (the position of `tokens`):

    scores = pipeline(history, logits)          # processors (+ warpers when sampling)
    next   = argmax(scores) | sample(softmax(scores))
    next   = where(unfinished, next, pad)       # finished rows are padded with pad
    history[:, t+1] = next; unfinished &= next != eos and t+1 < max_new_tokens

`.scores` of a sequence: the sum over its generated tokens (eos included, padding excluded)
of log_softmax(processed scores)[token] — Hugging Face's
`compute_transition_scores(..., normalize_logits=True)` summed.

With config.output_scores, `token_scores()` also gives each token's log-prob (the summands).

`step()` is static-shaped and sync-free; once `done()` it changes nothing (like HF's loop
having stopped), so a runtime that checks `done()` only every few steps stays exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..generation_config import GenerationConfig
from . import ops, rng
from .ops import Array
from .processors import LogitsPipeline


class SamplingStrategy:
    """Greedy (do_sample=False) or multinomial sampling (do_sample=True)."""

    parent = None  # no cache reordering

    def __init__(self, xp: Any, config: GenerationConfig, *, batch: int, vocab_size: int,
                 max_new_tokens: int, pad_token_id: int, eos_token_id: int,
                 decoder_start_token_id: int, first_input: int = 0):
        self.xp, self.config = xp, config
        self.do_sample = config.do_sample
        r = config.num_return_sequences if config.do_sample else 1
        self.batch, self.rows_per_input, self.rows = batch, r, batch * r
        self.vocab_size, self.max_new_tokens = vocab_size, max_new_tokens
        self.pad, self.eos = pad_token_id, eos_token_id
        N, T = self.rows, max_new_tokens
        self.pipeline = LogitsPipeline(xp, config, rows=N, vocab_size=vocab_size,
                                       history_len=T + 1, eos_token_id=eos_token_id, beams=False)
        # state, updated in place by step()
        self.history = xp.full((N, T + 1), pad_token_id, dtype=xp.int64)  # [N, T+1]
        self.history[:, 0] = decoder_start_token_id
        self.tokens = xp.full((N,), decoder_start_token_id, dtype=xp.int64)  # [N]
        self.unfinished = xp.ones((N,), dtype=xp.bool_)  # [N]
        self.seq_logprob = xp.zeros((N,), dtype=xp.float32)  # [N]
        self.output_scores = bool(config.output_scores)
        if self.output_scores:  # col j+1 = log-prob of the token at history col j+1
            self.token_logprob = xp.zeros((N, T + 1), dtype=xp.float32)  # [N, T+1]
        # a CUDA graph may replay step() only when no user (host) processors run in it
        self.capturable = not self.pipeline.has_user_processors
        self.step_counter = xp.zeros((), dtype=xp.int64)  # t
        self._done = xp.zeros((), dtype=xp.bool_)
        self.host_step = 0
        # constants
        self._cols = xp.arange(T + 1, dtype=xp.int64)[None, :]  # [1, T+1]
        self._row_idx = xp.arange(N, dtype=xp.int64) + first_input * r  # [N] RNG stream per row
        self.seed = config.seed if config.seed is not None else rng.fresh_seed()
        self._seed = rng.seed_array(xp, self.seed)  # [1] uint64

    def step(self, logits: Array) -> None:
        """Consume logits [N, V] of position t; append one token per row; t += 1 (until done)."""
        xp, t = self.xp, self.step_counter
        active = ~self._done  # 0-d
        scores = self.pipeline(self.history, logits.astype(xp.float32, copy=False), t, self.host_step)
        logp = ops.log_softmax(xp, scores)  # [N, V]
        if self.do_sample:
            u = rng.uniform(xp, self._seed, t, self._row_idx)  # [N]
            nxt = ops.sample_from_probs(xp, xp.exp(logp), u)  # [N]
        else:
            nxt = ops.argmax(xp, scores)  # [N]
        nxt = xp.where(self.unfinished, nxt, self.pad)
        chosen = xp.take_along_axis(logp, nxt[:, None], axis=-1)[:, 0]  # [N]
        live = self.unfinished & active
        ops.assign_where(xp, self.seq_logprob, live, self.seq_logprob + chosen)
        # history[:, t+1] = next (column clamped so a step after done stays in bounds)
        col = xp.minimum(t + 1, self.max_new_tokens)
        at_col = (self._cols == col) & active  # [1, T+1]
        ops.assign_where(xp, self.history, at_col, nxt[:, None])
        if self.output_scores:
            ops.assign_where(xp, self.token_logprob, at_col & live[:, None], chosen[:, None])
        ops.assign_where(xp, self.tokens, active, nxt)
        at_max = t + 1 >= self.max_new_tokens
        ops.assign_where(xp, self.unfinished, active, self.unfinished & (nxt != self.eos) & ~at_max)
        self.step_counter += active.astype(xp.int64)
        xp.copyto(self._done, ~self.unfinished.any())
        self.host_step += 1

    def done(self) -> Array:
        """0-d bool on the device: every row finished (eos or max_new_tokens)."""
        return self._done

    def result(self) -> tuple[list[list[int]], list[float]]:
        """Host side: sequences without the start token, cut after the first eos; scores."""
        hist = _to_host(self.history)
        t = int(_to_host(self.step_counter))
        lp = _to_host(self.seq_logprob)
        seqs, scores = [], []
        for n in range(self.rows):
            seqs.append(_cut_at_eos(hist[n, 1 : t + 1].tolist(), self.eos))
            scores.append(float(lp[n]))
        return seqs, scores


    def token_scores(self) -> list[list[float]] | None:
        """Per returned sequence, the log-prob of each of its tokens (config.output_scores)."""
        if not self.output_scores:
            return None
        seqs, _ = self.result()
        lp = _to_host(self.token_logprob)
        return [lp[n, 1 : 1 + len(sq)].tolist() for n, sq in enumerate(seqs)]


def _cut_at_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def _to_host(x: Array) -> np.ndarray:
    return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)
