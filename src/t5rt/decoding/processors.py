"""Logits processors and sampling warpers with Hugging Face semantics, static shapes, any `xp`.

`LogitsPipeline` applies, in transformers 5.17 `_get_logits_processor` order:

    repetition_penalty -> no_repeat_ngram_size -> bad_words_ids -> min_new_tokens
    -> user logits_processors -> [sampling only] temperature -> top_k -> top_p

Each processor sees the whole history buffer `history [N, T+1]` (col 0 = decoder start token,
which Hugging Face counts too) and the device step `t` (0-d int64): columns > t are ignored
through masks, never by slicing, so shapes stay static and nothing reads the device.
User processors are the exception: they get `history[:, :t+1]` and a host int t (eager only).

Beam search applies the pipeline to log-probabilities (as HF does); greedy and sampling to
logits. With beams, top-k/top-p keep at least 2 tokens (HF: number of eos ids + 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import kernels
from ..errors import InvalidLogitsError, T5rtError
from ..generation_config import GenerationConfig
from . import ops
from .guards import checked_user_scores
from .ops import NEG_INF, Array


class RepetitionPenalty:
    """Every token present in the history (start token included): x<0 -> x*p, else x/p."""

    def __init__(self, xp: Any, penalty: float, vocab_size: int, history_len: int, rows: int):
        self.xp, self.vocab = xp, vocab_size
        self.penalty = np.float32(penalty)
        self.cols = xp.arange(history_len, dtype=xp.int64)[None, :]  # [1, T+1]
        self.rows = ops.row_ids(xp, rows)  # [N, 1]

    def __call__(self, history: Array, scores: Array, t: Array) -> Array:
        xp = self.xp
        idx = xp.where(self.cols <= t, history, self.vocab)  # [N, T+1]; V = "no entry"
        seen = ops.scatter_true(xp, self.vocab, idx, self.rows)  # [N, V]
        penalized = xp.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return xp.where(seen, penalized, scores)


class NoRepeatNGram:
    """Ban every token that would complete an n-gram already present in history[:, :t+1]."""

    def __init__(self, xp: Any, n: int, vocab_size: int, history_len: int, rows: int):
        self.xp, self.n, self.vocab = xp, n, vocab_size
        self.n_windows = max(history_len - n + 1, 0)  # window starts s = 0 .. T+1-n
        self.starts = xp.arange(self.n_windows, dtype=xp.int64)[None, :]  # [1, S]
        # [1, n-1]; an n longer than the history never matches (S == 0): allocate nothing for it
        self.offsets = xp.arange(n - 1 if self.n_windows else 0, dtype=xp.int64)[None, :]
        self.rows = ops.row_ids(xp, rows)

    def __call__(self, history: Array, scores: Array, t: Array) -> Array:
        xp, n, S = self.xp, self.n, self.n_windows
        if S == 0:
            return scores
        # prefix = the last n-1 tokens: history[:, t+2-n .. t] (clipped; unused when t+1 < n)
        pcols = xp.maximum(t + 2 - n + self.offsets, 0)  # [1, n-1]
        prefix = xp.take(history, pcols[0], axis=1)  # [N, n-1]
        match = self.starts <= t + 1 - n  # [1, S]: window fully inside history[:, :t+1]
        for j in range(n - 1):  # static loop over the n-gram length
            match = match & (history[:, j : j + S] == prefix[:, j : j + 1])  # [N, S]
        last = history[:, n - 1 : n - 1 + S]  # [N, S] token completing each window
        banned = ops.scatter_true(xp, self.vocab, xp.where(match, last, self.vocab), self.rows)
        return xp.where(banned, xp.float32(NEG_INF), scores)


class BadWords:
    """Forbid each bad word's last token where the history ends with the word's prefix.

    Words equal to [eos] are dropped (as HF does). Single-token words are a static mask.
    """

    def __init__(self, xp: Any, words: Sequence[Sequence[int]], eos_token_id: int,
                 vocab_size: int, rows: int):
        self.xp, self.vocab = xp, vocab_size
        words = [list(w) for w in words if list(w) != [eos_token_id]]
        single = np.zeros(vocab_size, dtype=bool)
        for w in words:
            if len(w) == 1:
                single[w[0]] = True
        self.single = xp.asarray(single)[None, :]  # [1, V]
        multi = [w for w in words if len(w) > 1]
        self.n_multi = len(multi)
        self.rows = ops.row_ids(xp, rows)
        if multi:
            P = max(len(w) for w in multi) - 1  # longest prefix
            prefix = np.full((len(multi), P), -1, dtype=np.int64)  # right-aligned, -1 = wildcard
            for i, w in enumerate(multi):
                prefix[i, P - (len(w) - 1):] = w[:-1]
            self.P = P
            self.prefix = xp.asarray(prefix)[None]  # [1, W, P]
            self.length = xp.asarray(np.array([len(w) for w in multi], dtype=np.int64))[None, :]  # [1, W]
            self.last = xp.asarray(np.array([w[-1] for w in multi], dtype=np.int64))[None, :]  # [1, W]
            self.offsets = xp.arange(P, dtype=xp.int64)  # [P]

    def __call__(self, history: Array, scores: Array, t: Array) -> Array:
        xp = self.xp
        banned = xp.broadcast_to(self.single, scores.shape)
        if self.n_multi:
            cols = xp.maximum(t - self.P + 1 + self.offsets, 0)  # [P]: history[:, t-P+1 .. t]
            tail = xp.take(history, cols, axis=1)[:, None, :]  # [N, 1, P]
            same = (tail == self.prefix) | (self.prefix < 0)  # [N, W, P]
            match = same.all(axis=-1) & (self.length <= t + 1)  # [N, W]; word fits the context
            idx = xp.where(match, self.last, self.vocab)  # [N, W]
            banned = banned | ops.scatter_true(xp, self.vocab, idx, self.rows)
        return xp.where(banned, xp.float32(NEG_INF), scores)


class MinNewTokens:
    """eos -> -inf while fewer than `min_new_tokens` tokens were generated (t < min).

    With a kernel launcher (the fused path) this is one tiny in-place launch
    (t5rt.kernels.min_new_tokens) that reads t on the device (it stays in the CUDA graph after
    t >= min, doing nothing); otherwise a masked copy.
    """

    def __init__(self, xp: Any, min_new_tokens: int, eos_token_id: int, vocab_size: int,
                 launcher: Any = None):
        self.xp, self.min_new, self.eos = xp, min_new_tokens, eos_token_id
        self.launcher = launcher
        self.is_eos = (xp.arange(vocab_size, dtype=xp.int64) == eos_token_id)[None, :]  # [1, V]

    def __call__(self, history: Array, scores: Array, t: Array) -> Array:
        xp = self.xp
        if self.launcher is not None and scores.dtype == xp.float32 and scores.strides[1] == 4:
            return kernels.min_new_tokens(scores, t, self.min_new, self.eos, launcher=self.launcher)
        return xp.where(self.is_eos & (t < self.min_new), xp.float32(NEG_INF), scores)


class Temperature:
    def __init__(self, xp: Any, temperature: float):
        self.xp, self.temperature = xp, np.float32(temperature)

    def __call__(self, history: Array, scores: Array, t: Array) -> Array:
        return scores / self.temperature


class TopK:
    """Keep values >= the k-th largest (ties at the threshold are all kept, as in HF)."""

    def __init__(self, xp: Any, top_k: int, min_keep: int, vocab_size: int):
        self.xp, self.k = xp, min(max(top_k, min_keep), vocab_size)

    def __call__(self, history: Array, scores: Array, t: Array) -> Array:
        xp = self.xp
        if xp is np:
            thr = ops.kth_largest(xp, scores, self.k)  # [N, 1]
            return xp.where(scores < thr, xp.float32(NEG_INF), scores)
        thr_key = ops.kth_largest_key_capture_safe(xp, scores, self.k)  # [N, 1]
        return xp.where(ops.sortable_key(xp, scores) < thr_key, xp.float32(NEG_INF), scores)


class TopP:
    """Drop the ascending-sorted tokens whose cumulative probability is <= 1 - top_p."""

    def __init__(self, xp: Any, top_p: float, min_keep: int, rows: int):
        self.xp, self.min_keep = xp, min_keep
        self.cut = np.float32(1.0 - top_p)  # HF compares float32 cumsums with 1 - top_p

    def __call__(self, history: Array, scores: Array, t: Array) -> Array:
        xp = self.xp
        mask_fn = ops.top_p_drop_mask if xp is np else ops.top_p_drop_mask_capture_safe
        drop = mask_fn(xp, scores, float(self.cut), self.min_keep)
        return xp.where(drop, xp.float32(NEG_INF), scores)


class LogitsPipeline:
    """All configured processors in HF order; `__call__(history, scores, t, host_t)`."""

    def __init__(self, xp: Any, config: GenerationConfig, *, rows: int, vocab_size: int,
                 history_len: int, eos_token_id: int, beams: bool, launcher: Any = None):
        """launcher (t5rt.kernels, fused path): processors that have a kernel use it and may then work
        in place on the scores they are given (see strategy.py)."""
        self.xp = xp
        pre: list[Any] = []
        if config.repetition_penalty != 1.0:
            pre.append(RepetitionPenalty(xp, config.repetition_penalty, vocab_size, history_len, rows))
        if config.no_repeat_ngram_size > 0:
            pre.append(NoRepeatNGram(xp, config.no_repeat_ngram_size, vocab_size, history_len, rows))
        if config.bad_words_ids:
            pre.append(BadWords(xp, config.bad_words_ids, eos_token_id, vocab_size, rows))
        if config.min_new_tokens > 0:
            pre.append(MinNewTokens(xp, config.min_new_tokens, eos_token_id, vocab_size, launcher))
        self.pre = pre
        self.user = list(config.logits_processors)
        warp: list[Any] = []
        if config.do_sample:
            min_keep = 2 if beams else 1  # HF: len(eos ids) + 1 with beams
            if config.temperature != 1.0:
                warp.append(Temperature(xp, config.temperature))
            if config.top_k:
                warp.append(TopK(xp, config.top_k, min_keep, vocab_size))
            if config.top_p < 1.0:
                warp.append(TopP(xp, config.top_p, min_keep, rows))
        self.warp = warp

    @property
    def has_user_processors(self) -> bool:
        return bool(self.user)

    @property
    def is_identity(self) -> bool:
        """No processor or warper is configured: __call__ returns the scores unchanged."""
        return not (self.pre or self.user or self.warp)

    def __call__(self, history: Array, scores: Array, t: Array, host_t: int, warp: bool = True) -> Array:
        """scores [N, V] float32 at position t -> processed scores [N, V] float32.

        warp=False stops before the sampling warpers (a fused sampling kernel applies them)."""
        for p in self.pre:
            scores = p(history, scores, t)
        for i, fn in enumerate(self.user):  # research hook: eager only, host step
            try:
                out = fn(history[:, : host_t + 1], scores, host_t)
            except T5rtError:
                raise
            except Exception as e:  # noqa: BLE001 - the user's code failed: say which hook, keep the cause
                raise InvalidLogitsError(f"logits_processors[{i}] raised {type(e).__name__}: {e}") from e
            scores = checked_user_scores(self.xp, out, scores, i, fn)
        for p in self.warp if warp else ():
            scores = p(history, scores, t)
        return scores
