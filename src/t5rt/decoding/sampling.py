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
from ..kernels import sample_update
from . import guards, ops, rng
from .ops import Array
from .processors import LogitsPipeline


class SamplingStrategy:
    """Greedy (do_sample=False) or multinomial sampling (do_sample=True)."""

    parent = None  # no cache reordering

    def __init__(self, xp: Any, config: GenerationConfig, *, batch: int, vocab_size: int,
                 max_new_tokens: int, pad_token_id: int, eos_token_id: int,
                 decoder_start_token_id: int, first_input: int = 0, kernels: Any = None,
                 fused: Any = None):
        self.xp, self.config = xp, config
        # cupy: one fused kernel for the state update (t5rt.kernels.sample_update, run by the
        # launcher _sk); t5rt.kernels for the token choice
        self._sk = ops.kernel_launcher(xp, fused)
        self._kernels = kernels if self._sk is not None else None
        self.do_sample = config.do_sample
        r = config.num_return_sequences if config.do_sample else 1
        self.batch, self.rows_per_input, self.rows = batch, r, batch * r
        self.vocab_size, self.max_new_tokens = vocab_size, max_new_tokens
        self.pad, self.eos = pad_token_id, eos_token_id
        N, T = self.rows, max_new_tokens
        self.pipeline = LogitsPipeline(xp, config, rows=N, vocab_size=vocab_size,
                                       history_len=T + 1, eos_token_id=eos_token_id, beams=False,
                                       launcher=self._sk)
        self._start = decoder_start_token_id
        # state, updated in place by step(), set by reset()
        self.history = xp.empty((N, T + 1), dtype=xp.int64)  # [N, T+1]
        self.tokens = xp.empty((N,), dtype=xp.int64)  # [N]
        self.unfinished = xp.empty((N,), dtype=xp.bool_)  # [N]
        self.seq_logprob = xp.empty((N,), dtype=xp.float32)  # [N]
        self.output_scores = bool(config.output_scores)
        if self.output_scores:  # col j+1 = log-prob of the token at history col j+1
            self.token_logprob = xp.empty((N, T + 1), dtype=xp.float32)  # [N, T+1]
        # a CUDA graph may replay step() only when no user (host) processors run in it
        self.capturable = not self.pipeline.has_user_processors
        self._guard = xp is np or not self.capturable  # NaN/inf checks need a host read (guards.py)
        self.step_counter = xp.empty((), dtype=xp.int64)  # t
        self._done = xp.empty((), dtype=xp.bool_)
        self._seed = rng.seed_array(xp, 0)  # [1] uint64
        # constants
        self._cols = xp.arange(T + 1, dtype=xp.int64)[None, :]  # [1, T+1]
        self._row_idx = xp.arange(N, dtype=xp.int64) + first_input * r  # [N] RNG stream per row
        self.reset()
        if self._sk is not None:  # buffers the fused path writes (never reallocated)
            self._nxt = xp.zeros((N,), dtype=xp.int64)  # [N] chosen token before padding
            self._row_max = xp.zeros((N,), dtype=xp.float32)  # [N]
            self._row_logsum = xp.zeros((N,), dtype=xp.float32)  # [N]
        if self._kernels is not None and self.do_sample:  # t5rt.kernels.sample_logprob
            self._lp = xp.zeros((N,), dtype=xp.float32)  # [N] log-prob of the drawn token
            self._row_offset = first_input * r  # request-wide RNG rows
            self._sample_options = kernels.SampleOptions(
                temperature=float(config.temperature), top_k=int(config.top_k or 0), top_p=float(config.top_p))

    def reset(self) -> None:
        """Back to the state before step 0, in place: every buffer keeps its address, so a CUDA
        graph captured over step() replays correctly for the next request. A fresh seed when
        config.seed is None (as a new strategy would draw)."""
        ops.reset_sequences(self.history, self.tokens, self.step_counter, self._done,
                            self.pad, self._start)
        self.host_step = 0
        self.unfinished.fill(True)
        self.seq_logprob.fill(0)
        if self.output_scores:
            self.token_logprob.fill(0)
        self.seed = rng.reseed(self.xp, self._seed, self.config.seed)

    def step(self, logits: Array) -> None:
        """Consume logits [N, V] of position t; append one token per row; t += 1 (until done)."""
        if self._sk is not None:
            return self._step_fused(logits)
        xp, t = self.xp, self.step_counter
        active = ~self._done  # 0-d
        scores = self.pipeline(self.history, logits.astype(xp.float32, copy=False), t, self.host_step)
        if self.do_sample and self._guard:
            guards.check_sampling_scores(xp, scores, self.host_step)
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

    def _step_fused(self, logits: Array) -> None:
        """step() as the token choice + ONE state-update kernel (t5rt.kernels.sample_update).

        With t5rt.kernels: greedy = argmax_logsumexp (2 launches in all), sampling =
        sample_logprob (2 launches); configured processors add theirs. Greedy is token-identical
        to the array code and its summed log-probs differ only in the last float bits (the
        log-sum-exp is summed in another order). Sampling draws with the same RNG numbers from
        the same distribution, but the kernel sums probabilities in float32 chunks (array code:
        float64 cumsum) and keeps a top-p boundary tie group whole, so a draw whose uniform lies
        within float error of a CDF edge can pick the neighbouring token (tests: statistical).
        Without kernels the choice is the array code, then the same update kernel."""
        xp, t = self.xp, self.step_counter
        k = self._kernels
        lp_in = None
        scores = self.pipeline(self.history, logits.astype(xp.float32, copy=False), t, self.host_step,
                               warp=not (self.do_sample and k is not None))
        scores = xp.ascontiguousarray(scores)  # [N, V]
        if self.do_sample and self._guard:
            guards.check_sampling_scores(xp, scores, self.host_step)
        if self.do_sample and k is not None:  # warpers + draw + log-prob in one kernel
            k.sample_logprob(scores, self._seed, t, self._sample_options, row_offset=self._row_offset,
                             out=self._nxt, out_logprob=self._lp, launcher=self._sk)
            scores, lp_in = None, self._lp
        elif self.do_sample:
            mx = scores.max(axis=-1)  # [N]
            shifted = scores - mx[:, None]  # [N, V]
            xp.copyto(self._row_max, mx)
            xp.copyto(self._row_logsum, xp.log(xp.exp(shifted).sum(axis=-1)))
            u = rng.uniform(xp, self._seed, t, self._row_idx)  # [N]
            probs = xp.exp(shifted - self._row_logsum[:, None])  # = exp(log_softmax), as unfused
            xp.copyto(self._nxt, ops.sample_from_probs(xp, probs, u))
        elif k is not None:
            k.argmax_logsumexp(scores, out=self._nxt, row_max=self._row_max, row_logsum=self._row_logsum,
                               launcher=self._sk)
        else:
            xp.copyto(self._nxt, xp.argmax(scores, axis=-1))
            xp.copyto(self._row_max, scores.max(axis=-1))
            xp.copyto(self._row_logsum, xp.log(xp.exp(scores - self._row_max[:, None]).sum(axis=-1)))
        sample_update(self._nxt, self.history, self.tokens, self.unfinished, self.seq_logprob,
                      self.step_counter, self._done, pad=self.pad, eos=self.eos, scores=scores,
                      row_max=None if scores is None else self._row_max,
                      row_logsum=None if scores is None else self._row_logsum, logprob=lp_in,
                      token_logprob=self.token_logprob if self.output_scores else None,
                      launcher=self._sk)
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

