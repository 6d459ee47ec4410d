"""Checks a decoding step makes on its scores, raising InvalidLogitsError (a T5rtError).

    checked_user_scores(xp, out, scores, i, fn)  a logits processor's result: an xp float array
                                                 of the logits' shape [N, V] -> float32
    check_sampling_scores(xp, scores, t)         NaN / +inf / all -inf rows make NaN or inf
                                                 probabilities: Hugging Face's sampling raises
                                                 there (torch.multinomial), so does t5rt
    check_beam_logp(xp, logp, t)                 a NaN log-prob row under beam search

They read the device (a host sync), so strategies run them on numpy and in eager steps (user
logits processors) only; a captured CUDA step skips them.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidLogitsError
from .ops import Array


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def checked_user_scores(xp: Any, out: Any, scores: Array, i: int, fn: Any) -> Array:
    """logits_processors[i]'s return value -> float32 [N, V], or InvalidLogitsError."""
    where = f"logits_processors[{i}] ({_name(fn)})"
    if not isinstance(out, xp.ndarray):
        raise InvalidLogitsError(f"{where} returned {type(out).__name__}; it must return an "
                                 f"{xp.__name__} float array shaped like the logits {tuple(scores.shape)}")
    if out.shape != scores.shape:
        raise InvalidLogitsError(f"{where} returned shape {tuple(out.shape)}; it must keep the logits' "
                                 f"shape {tuple(scores.shape)} [rows, vocab]")
    if out.dtype.kind != "f":
        raise InvalidLogitsError(f"{where} returned {out.dtype} values; it must return floats (float32)")
    return out.astype(xp.float32, copy=False)


def check_sampling_scores(xp: Any, scores: Array, t: int) -> None:
    """scores [N, V] about to be sampled from: each row needs a finite maximum."""
    bad = ~xp.isfinite(scores.max(axis=-1))  # NaN anywhere, +inf, or every token -inf
    if bool(bad.any()):
        row = int(xp.argmax(bad))
        raise InvalidLogitsError(
            f"sampling step {t}: the probabilities of row {row} hold NaN or inf (scores with NaN, +inf, or "
            "every token -inf), as Hugging Face refuses too; check the logits processors or the export")


def check_beam_logp(xp: Any, logp: Array, t: int) -> None:
    """logp [N, V] of a beam step: NaN rows cannot be ranked."""
    bad = xp.isnan(logp.max(axis=-1))
    if bool(bad.any()):
        row = int(xp.argmax(bad))
        raise InvalidLogitsError(f"beam search step {t}: the log-probabilities of row {row} are NaN; "
                                 "check the logits processors or the export")
