"""Counter-based random numbers, identical on numpy and cupy, and the samplers built on them.

Nothing here keeps hidden state: a uniform is a pure function of (seed, step, row, col),

    x = seed ^ (step * 0x9E3779B97F4A7C15) ^ ((row + 1) * 0xBF58476D1CE4E5B9) ^ ((col + 1) * 0x94D049BB133111EB)
    z = splitmix64(x)                            # uint64 arithmetic, wrapping
    u = ((z >> 11) + 0.5) * 2**-53               # float64 in (0, 1), never exactly 0 or 1

so the step can be read from the device step counter inside a CUDA graph, the same seed gives
the same numbers on CPU and GPU, and rows/steps never share a stream.

Sampling methods (documented choice; the samplers are in ops.py, kernel seams):
- One token per row (`ops.sample_from_probs`): inverse CDF with ONE uniform per row (col = 0)
  over the probabilities in vocabulary index order: the token is the first index whose
  cumulative probability (float64) exceeds u * total. Tokens of probability 0 are never drawn.
- k distinct candidates per row without replacement (beam sampling, `ops.gumbel_topk`):
  Gumbel-top-k with one uniform per (row, col): keys = logp - log(-log(u)); the k largest keys
  in descending order are distributed exactly like k successive draws without replacement
  (what `torch.multinomial(..., replacement=False)` does), in draw order.
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np

from .ops import Array

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_ROW_MUL = np.uint64(0xBF58476D1CE4E5B9)
_COL_MUL = np.uint64(0x94D049BB133111EB)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_ONE = np.uint64(1)


def fresh_seed() -> int:
    """A random 63-bit seed for seed=None (a new one per generate call)."""
    return secrets.randbits(63)


def splitmix64(xp: Any, x: Array) -> Array:
    """The splitmix64 output function on a uint64 array (wrapping arithmetic)."""
    z = x + _GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def uniform(xp: Any, seed: Array, step: Array, rows: Array, cols: Array | None = None) -> Array:
    """u(seed, step, row[, col]) in (0, 1) as float64.

    seed: [1] uint64; step: 0-d/[1] integer (device counter); rows: [N, 1] or [N] integer;
    cols: optional [C] integer. Returns [N] (no cols) or [N, C].
    """
    s = step.reshape(1).astype(xp.uint64)  # [1]
    r = rows.reshape(-1, 1).astype(xp.uint64)  # [N, 1]
    x = seed.reshape(1, 1) ^ (s.reshape(1, 1) * _GOLDEN) ^ ((r + _ONE) * _ROW_MUL)  # [N, 1]
    if cols is not None:
        c = cols.reshape(1, -1).astype(xp.uint64)  # [1, C]
        x = x ^ ((c + _ONE) * _COL_MUL)  # [N, C]
    else:
        x = x ^ _COL_MUL  # col = 0
        x = x.reshape(-1)  # [N]
    z = splitmix64(xp, x)
    return ((z >> _S11).astype(xp.float64) + 0.5) * (2.0**-53)


def seed_array(xp: Any, seed: int) -> Array:
    """The seed as a [1] uint64 device array."""
    return xp.asarray(np.array([seed], dtype=np.uint64))


def reseed(xp: Any, seed_arr: Array, seed: int | None) -> int:
    """A request's seed (`seed`, or a fresh one when None) written into a seed_array in place
    (its address stays: CUDA graphs keep reading it); -> the seed."""
    seed = seed if seed is not None else fresh_seed()
    seed_arr[...] = xp.asarray(np.array([seed], dtype=np.uint64))
    return seed
