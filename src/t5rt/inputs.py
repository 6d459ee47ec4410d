"""A request's inputs checked and padded once, at the API boundary (DESIGN.md §12.5).

    ids, mask = parse_inputs(texts, input_ids, attention_mask, manifest=m, tokenizer=tok)
    # ids, mask: [B, s] int64 host arrays, right padded with pad_token_id / 0

Accepted: `texts` a str or a list/tuple of str (valid Unicode: no lone surrogates);
`input_ids` a flat sequence of ids (one input), a list of such sequences (ragged is fine), or a
1-D/2-D integer array (numpy, or anything with __array__); float ids only when integral and
finite (5.0, never 5.5: nothing is truncated); `attention_mask` the shape of input_ids with
values exactly 0 or 1 (bools, 0.0 and 1.0 included). Everything else is an InvalidInputError
saying which input and position, before any device state is touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .errors import InvalidInputError

_SCALARS = (int, float, np.integer, np.floating, bool, np.bool_)


def parse_inputs(texts: Any, input_ids: Any, attention_mask: Any, *, manifest: Any,
                 tokenizer: Any) -> tuple[np.ndarray, np.ndarray]:
    """-> (ids [B, s], mask [B, s]) int64, right padded; every problem raises InvalidInputError."""
    if (texts is None) == (input_ids is None):
        raise InvalidInputError("pass either texts or input_ids (exactly one of them)")
    vocab = manifest.dims.vocab_size
    if texts is not None:
        if attention_mask is not None:
            raise InvalidInputError("attention_mask goes with input_ids, not with texts")
        rows = _encode(check_texts(texts), manifest, tokenizer)
        masks = [np.ones(len(r), np.int64) for r in rows]
    else:
        rows = _rows(input_ids, "input_ids", _id_values)
        masks = [np.ones(len(r), np.int64) for r in rows]
        if attention_mask is not None:
            masks = _rows(attention_mask, "attention_mask", _mask_values)
            if len(masks) != len(rows) or any(len(a) != len(r) for a, r in zip(masks, rows)):
                shape = [len(r) for r in rows]
                raise InvalidInputError(f"attention_mask must have the shape of input_ids (rows of lengths "
                                        f"{shape[:8]}{'...' if len(shape) > 8 else ''})")
        for i, (r, mk) in enumerate(zip(rows, masks)):
            if not mk.any():
                raise InvalidInputError(f"input {i} is empty (no tokens, or attention_mask all 0)")
            bad = r[(r < 0) | (r >= vocab)]
            if bad.size:
                raise InvalidInputError(f"input {i} has token ids outside [0, {vocab}): {bad[:5].tolist()}")
    max_in = manifest.max_input_len
    for i, r in enumerate(rows):
        if len(r) > max_in:
            raise InvalidInputError(
                f"input {i} is {len(r)} tokens long; this export takes at most {max_in} "
                f"(shorten it, or re-export with --max-input-len {len(r)})"
            )
    s = max(len(r) for r in rows)
    ids = np.full((len(rows), s), manifest.special_tokens.pad_token_id, np.int64)
    mask = np.zeros((len(rows), s), np.int64)
    for i, (r, mk) in enumerate(zip(rows, masks)):
        ids[i, : len(r)] = r
        mask[i, : len(mk)] = mk
    return ids, mask


def chunks(input_ids: np.ndarray, attention_mask: np.ndarray,
           per: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first input, ids, mask) of each run of `per` inputs, trimmed to that run's own longest
    input (the padding a longer input elsewhere in the request put there)."""
    for lo in range(0, input_ids.shape[0], per):
        ids, mask = input_ids[lo:lo + per], attention_mask[lo:lo + per]
        s = int(np.nonzero(mask.any(axis=0))[0].max()) + 1
        yield lo, ids[:, :s], mask[:, :s]


def check_texts(texts: Any) -> list[str]:
    """A str or a list/tuple of non-empty str, each valid Unicode -> list[str]."""
    if isinstance(texts, str):
        texts = [texts]
    elif isinstance(texts, (bytes, bytearray)):
        raise InvalidInputError("texts must be str, not bytes: decode them first (b.decode('utf-8'))")
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise InvalidInputError(f"texts must be a string or a list of strings, got {_what(texts)}")
    if len(texts) == 0:
        raise InvalidInputError("no input: texts is an empty list")
    for i, t in enumerate(texts):
        if not t.strip():
            raise InvalidInputError(f"input {i} is empty; give text to generate from")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidInputError(
                f"input {i} is not valid Unicode text: a lone surrogate {t[e.start]!r} at character {e.start} "
                "(undecodable bytes read as text?); give UTF-8 text") from None
    return list(texts)


def _encode(texts: list[str], manifest: Any, tokenizer: Any) -> list[np.ndarray]:
    if tokenizer is None:
        raise InvalidInputError(
            f"this export ({manifest.directory}) has no tokenizer files; "
            "pass input_ids, or re-export from a model directory that has spiece.model"
        )
    rows = [np.asarray(tokenizer.encode(t), np.int64) for t in texts]
    vocab = manifest.dims.vocab_size
    if any(r.size and int(r.max()) >= vocab for r in rows):
        raise InvalidInputError(
            f"the export's tokenizer makes ids >= the model's vocab_size {vocab}: "
            "tokenizer files and model do not match; re-export from a consistent model directory"
        )
    return rows


def _what(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return f"a {v.dtype} array of shape {v.shape}"
    r = repr(v)
    return f"{type(v).__name__} {r[:60]}{'...' if len(r) > 60 else ''}"


def _rows(value: Any, name: str, values: Any) -> list[np.ndarray]:
    """input_ids / attention_mask -> one int64 row per input (`values` checks a row's numbers)."""
    if isinstance(value, (str, bytes, bytearray)):
        raise InvalidInputError(f"{name} must be token ids (a list of ints, a list of lists, or a 2-D array), "
                                f"got {_what(value)}" + ("; to pass text use texts=" if name == "input_ids" else ""))
    if isinstance(value, np.ndarray) or (hasattr(value, "__array__") and not isinstance(value, (list, tuple))):
        try:
            arr = np.asarray(value)
        except Exception as e:  # noqa: BLE001 - any failing __array__ is bad input
            raise InvalidInputError(f"{name} could not be read as an array ({type(e).__name__}: {e})") from None
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise InvalidInputError(f"{name} must be 2-D [batch, length] (or 1-D for one input), got shape {arr.shape}")
        if arr.shape[0] == 0:
            raise InvalidInputError(f"no input: {name} is empty")
        return [values(arr[i], name, i) for i in range(arr.shape[0])]
    if not isinstance(value, (list, tuple)):
        raise InvalidInputError(f"{name} must be a list of lists of token ids or a 2-D array, got {_what(value)}")
    if len(value) == 0:
        raise InvalidInputError(f"no input: {name} is empty")
    if all(isinstance(v, _SCALARS) for v in value):
        value = [value]  # one flat sequence is one input
    out = []
    for i, row in enumerate(value):
        if isinstance(row, np.ndarray) and row.ndim == 1:
            out.append(values(row, name, i))
            continue
        if not isinstance(row, (list, tuple)) or not all(isinstance(v, _SCALARS) for v in row):
            raise InvalidInputError(f"{name}[{i}] must be a flat list of numbers, got {_what(row)}")
        if any(isinstance(v, (bool, np.bool_)) for v in row) and name == "input_ids":
            raise InvalidInputError(f"input_ids[{i}] holds a boolean; token ids are integers")
        try:
            arr = np.asarray(row)
        except (OverflowError, ValueError):
            arr = np.asarray(row, dtype=object)
        out.append(values(arr, name, i))
    return out


def _id_values(row: np.ndarray, name: str, i: int) -> np.ndarray:
    """A row of token ids -> int64; floats only when finite and integral; huge ints refused."""
    if row.size == 0:
        raise InvalidInputError(f"input {i} is empty (no tokens)")
    kind = row.dtype.kind
    if kind in "iu":
        if kind == "u" and row.dtype.itemsize == 8 and int(row.max()) >= 2**63:
            raise InvalidInputError(f"input {i} has token ids outside int64: {int(row.max())}")
        return row.astype(np.int64)
    if kind == "f":
        bad = ~np.isfinite(row) | (row != np.round(row))
        if bad.any():
            j = int(np.argmax(bad))
            raise InvalidInputError(f"{name}[{i}][{j}] is {row[j].item()!r}: token ids are integers "
                                    "(NaN, inf and fractions are not ids)")
        if np.abs(row).max() >= 2**62:
            raise InvalidInputError(f"input {i} has token ids far outside the vocabulary: {float(np.abs(row).max())}")
        return row.astype(np.int64)
    if kind == "O":
        out = np.empty(row.size, np.int64)
        for j, v in enumerate(row.tolist()):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise InvalidInputError(f"{name}[{i}][{j}] is {_what(v)}: token ids are integers")
            if not -(2**63) <= int(v) < 2**63:
                raise InvalidInputError(f"input {i} has token ids outside the vocabulary: {int(v)}")
            out[j] = int(v)
        return out
    raise InvalidInputError(f"{name}[{i}] holds {row.dtype} values; token ids are integers")


def _mask_values(row: np.ndarray, name: str, i: int) -> np.ndarray:
    """A row of an attention mask -> int64; each value exactly 0 or 1 (True/False, 0.0/1.0)."""
    if row.dtype.kind not in "biuf":
        raise InvalidInputError(f"{name}[{i}] holds {row.dtype} values; a mask is 0s and 1s")
    bad = ~((row == 0) | (row == 1))
    if bad.any():
        j = int(np.argmax(bad))
        raise InvalidInputError(f"{name}[{i}][{j}] is {row[j].item()!r}: attention_mask values must be 0 or 1")
    return row.astype(np.int64)
