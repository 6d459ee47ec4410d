"""Array primitives the decoding strategies are built from, on any array module `xp`.

Every function works on numpy (CPU) and cupy (GPU) with the same results, takes the array
module explicitly and keeps shapes static (no boolean-mask indexing, no `nonzero`, no host
reads), so a strategy's `step()` built from them can be captured in a CUDA graph. They are
the seams where a fused CUDA kernel (kernels/) can replace the generic code: keep the
signatures and the tie rules documented here.

Two implementations where it matters: numpy gets sort/partition-based code (fast on CPU);
other array modules (cupy) get sort-free code built from elementwise ops, reductions, argmax
and scatters, because cupy's sort/argsort synchronise the stream (cupy issue #9126) and so
cannot be captured in a CUDA graph. `*_capture_safe` functions are that second path; tests
run them on numpy against the first.

Tie rule: among equal values the lower index comes first (deterministic, the same on numpy
and cupy; `argmax` agrees with torch). `torch.topk` leaves its tie order unspecified; in beam
search exact ties only arise among the -1e9 placeholder entries, which never reach the output.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

Array = Any  # numpy.ndarray | cupy.ndarray

NEG_INF = float("-inf")


def _stable_kind(xp: Any) -> str | None:
    # cupy's sort is always stable and accepts only kind=None.
    return "stable" if xp is np else None


def argsort_desc(xp: Any, x: Array) -> Array:
    """Indices sorting the last axis descending; equal values keep ascending index order."""
    return xp.argsort(-x, axis=-1, kind=_stable_kind(xp))


def argsort_asc(xp: Any, x: Array) -> Array:
    """Indices sorting the last axis ascending; stable."""
    return xp.argsort(x, axis=-1, kind=_stable_kind(xp))


def sortable_key(xp: Any, x: Array) -> Array:
    """float32 -> int64 in [0, 2**32) with the same order as the floats (-inf lowest)."""
    b = x.astype(xp.float32, copy=False).view(xp.int32)
    s = xp.where(b >= 0, b, b ^ xp.int32(0x7FFFFFFF))  # negative floats: flip magnitude bits
    return s.astype(xp.int64) + (1 << 31)


def topk_capture_safe(xp: Any, x: Array, k: int) -> tuple[Array, Array]:
    """topk without sorting: k rounds of argmax over unique int64 keys (value, then lower index;
    value key in the high 33 bits, 2**31-1 - index in the low 31, so M < 2**31).

    x: [N, M] -> values [N, k], indices [N, k] int64; the same result as `topk`.
    """
    n, m = x.shape
    key = (sortable_key(xp, x) << 31) | (xp.int64(0x7FFFFFFF) - xp.arange(m, dtype=xp.int64))  # [N, M]
    rows = xp.arange(n, dtype=xp.int64)
    idx = xp.empty((n, k), dtype=xp.int64)
    for j in range(k):  # static loop: k is a config constant
        best = xp.argmax(key, axis=-1).astype(xp.int64)  # [N]
        idx[:, j] = best
        key[rows, best] = -1  # taken
    return xp.take_along_axis(x, idx, axis=-1), idx


def kth_largest_key_capture_safe(xp: Any, x: Array, k: int) -> Array:
    """sortable_key of the k-th largest value per row by a 32-step radix search: [N, M] -> [N, 1]."""
    key = sortable_key(xp, x)  # [N, M]
    tau = xp.zeros((x.shape[0], 1), dtype=xp.int64)
    for bit in range(31, -1, -1):
        cand = tau | (1 << bit)
        tau = xp.where((key >= cand).sum(axis=-1, keepdims=True) >= k, cand, tau)
    return tau


def top_p_drop_mask(xp: Any, scores: Array, cut: float, min_keep: int) -> Array:
    """HF TopP's removal mask: ascending-sorted tokens whose cumulative probability <= cut,
    except the last `min_keep`. scores [N, V] -> bool [N, V]."""
    order = argsort_asc(xp, scores)  # [N, V]
    cum = xp.cumsum(softmax(xp, xp.take_along_axis(scores, order, axis=-1)), axis=-1)
    drop_sorted = cum <= cut  # [N, V] in sorted order
    drop_sorted[:, -min_keep:] = False
    drop = xp.empty_like(drop_sorted)
    drop[row_ids(xp, scores.shape[0]), order] = drop_sorted  # back to vocab order
    return drop


def top_p_drop_mask_capture_safe(xp: Any, scores: Array, cut: float, min_keep: int) -> Array:
    """`top_p_drop_mask` without sorting (equal up to float rounding of the cumulative sums).

    Dropped tokens form a prefix of the ascending (value, index) order. A 32-step radix search
    finds the largest value key kappa whose mass of tokens with key <= kappa is <= cut (those
    are all dropped); in the next group of equal values, token i (r-th by index) is dropped
    while mass + r * p <= cut; the top `min_keep` tokens (value, then higher index) are kept.
    """
    n, v = scores.shape
    p = softmax(xp, scores).astype(xp.float64)  # [N, V]
    key = sortable_key(xp, scores)  # [N, V]
    kappa = xp.zeros((n, 1), dtype=xp.int64)
    for bit in range(31, -1, -1):
        cand = kappa | (1 << bit)
        mass = xp.where(key <= cand, p, 0.0).sum(axis=-1, keepdims=True)
        kappa = xp.where(mass <= cut, cand, kappa)
    below = key <= kappa  # [N, V] whole groups dropped
    mass = xp.where(below, p, 0.0).sum(axis=-1, keepdims=True)  # [N, 1]
    nxt = xp.where(below, xp.int64(1 << 33), key).min(axis=-1, keepdims=True)  # next group's key
    group = key == nxt  # [N, V]
    rank = xp.cumsum(group, axis=-1)  # 1-based within the group, by index
    drop = below | (group & (mass + rank * p <= cut))
    keep_key = (key << 31) | xp.arange(v, dtype=xp.int64)  # ties: higher index is "later"
    rows = xp.arange(n, dtype=xp.int64)
    for _ in range(min_keep):
        best = xp.argmax(keep_key, axis=-1)
        drop[rows, best] = False
        keep_key[rows, best] = -1
    return drop


def topk(xp: Any, x: Array, k: int) -> tuple[Array, Array]:
    """(values, indices) of the k largest along the last axis, sorted descending, ties -> lower index.

    x: [N, M] -> values [N, k] (x.dtype), indices [N, k] int64. Small rows: one stable sort.
    Large rows (the beam step's [B, nb*V]): select with a partition, then sort only k.
    """
    if xp is not np:
        return topk_capture_safe(xp, x, k)
    m = x.shape[-1]
    if m <= 8 * k or m <= 2048:
        idx = argsort_desc(xp, x)[..., :k].astype(xp.int64)  # [N, k]
        return xp.take_along_axis(x, idx, axis=-1), idx
    # numpy only from here (host code may branch on data): exactly k chosen per row
    thr = kth_largest(xp, x, k)  # [N, 1]
    gt = x > thr  # [N, M]
    eq = x == thr
    room = k - gt.sum(axis=-1, keepdims=True)  # [N, 1] >= 1: how many ties at thr to take
    if (eq.sum(axis=-1, keepdims=True) == room).all():
        chosen = gt | eq
    else:  # ties at the threshold: the lowest indices win
        chosen = gt | (eq & (xp.cumsum(eq, axis=-1) <= room))
    idx = xp.nonzero(chosen)[1].reshape(x.shape[0], k).astype(xp.int64)  # ascending index
    order = argsort_desc(xp, xp.take_along_axis(x, idx, axis=-1))  # stable: ties keep index order
    idx = xp.take_along_axis(idx, order, axis=-1)
    return xp.take_along_axis(x, idx, axis=-1), idx


def kth_largest(xp: Any, x: Array, k: int) -> Array:
    """The k-th largest value along the last axis (k >= 1), keepdims: [..., M] -> [..., 1]."""
    m = x.shape[-1]
    return xp.partition(x, m - k, axis=-1)[..., m - k : m - k + 1]


def log_softmax(xp: Any, x: Array) -> Array:
    """log_softmax over the last axis in float32: x - max - log(sum(exp(x - max)))."""
    x = x.astype(xp.float32, copy=False)
    shifted = x - x.max(axis=-1, keepdims=True)  # [..., V]
    return shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(xp: Any, x: Array) -> Array:
    """softmax over the last axis in float32 (rows of -inf except one are fine)."""
    x = x.astype(xp.float32, copy=False)
    e = xp.exp(x - x.max(axis=-1, keepdims=True))  # [..., V]
    return e / e.sum(axis=-1, keepdims=True)


def argmax(xp: Any, x: Array) -> Array:
    """argmax over the last axis, first maximum wins: [N, V] -> [N] int64."""
    return xp.argmax(x, axis=-1).astype(xp.int64)


def row_ids(xp: Any, n: int) -> Array:
    """[n, 1] int64 row numbers, for fancy-index scatters (preallocate it once per shape)."""
    return xp.arange(n, dtype=xp.int64)[:, None]


def scatter_true(xp: Any, n_cols: int, idx: Array, rows: Array) -> Array:
    """A [N, n_cols] bool mask with True at (r, idx[r, j]); idx == n_cols marks "no entry".

    idx: [N, J] int64 in [0, n_cols]; rows: row_ids(xp, N). Returns a fresh [N, n_cols] mask.
    Duplicates are fine (every write stores True). This is torch's `scatter_(1, idx, True)`
    with a spare column for masked-out entries.
    """
    mask = xp.zeros((idx.shape[0], n_cols + 1), dtype=xp.bool_)  # [N, C+1]
    mask[rows, idx] = True
    return mask[:, :n_cols]


def scatter_rows(xp: Any, dst: Array, idx: Array, values: Array, rows: Array) -> None:
    """dst[r, idx[r, j]] = values[r, j] in place (numpy put_along_axis; cupy has none)."""
    dst[rows, idx] = values


def gather_rows(xp: Any, x: Array, idx: Array) -> Array:
    """x[idx] along axis 0 (beam reorder of a state buffer): [N, ...] -> [len(idx), ...]."""
    return xp.take(x, idx, axis=0)


def assign_where(xp: Any, dst: Array, cond: Array, new: Array) -> None:
    """dst[...] = where(cond, new, dst) in place: a masked state update with a static shape."""
    xp.copyto(dst, xp.where(cond, new, dst))


def sample_from_probs(xp: Any, probs: Array, u: Array) -> Array:
    """One token per row by inverse CDF: the first index whose cumulative probability exceeds u * total.

    probs: [N, V] (non-negative, need not be normalised), u: [N] in (0, 1) -> [N] int64.
    """
    cdf = xp.cumsum(probs.astype(xp.float64), axis=-1)  # [N, V]
    target = u[:, None] * cdf[:, -1:]  # [N, 1]
    idx = (cdf <= target).sum(axis=-1).astype(xp.int64)  # [N]
    return xp.minimum(idx, probs.shape[-1] - 1)


def gumbel_topk(xp: Any, logp: Array, u: Array, k: int) -> tuple[Array, Array]:
    """k indices per row drawn without replacement from softmax(logp), in draw order.

    logp: [N, M] float32 (log-weights, -inf = impossible), u: [N, M] uniforms.
    Returns (logp at the drawn indices [N, k], indices [N, k] int64).
    """
    keys = logp.astype(xp.float64) - xp.log(-xp.log(u))  # [N, M]
    _, idx = topk(xp, keys, k)
    return xp.take_along_axis(logp, idx, axis=-1), idx


def reset_sequences(history: Array, tokens: Array, step_counter: Array, done: Array,
                    pad: int, start: int) -> None:
    """The state every strategy has, back to before step 0 in place: history [N, T+1] = [start,
    pad, ...], tokens [N] = start, step counter (0-d) = 0, done (0-d) = False."""
    history.fill(pad)
    history[:, 0] = start
    tokens.fill(start)
    step_counter.fill(0)
    done.fill(False)


def kernel_launcher(xp: Any, fused: Any) -> Any:
    """Who runs a strategy's fused kernels (kernels/decoding_step.cu through t5rt.kernels), or
    None for the array code. fused: None = the CUDA kernels on cupy unless
    $T5RT_DECODING_FUSED=0 (array code if they cannot load, with a warning), the array code on
    numpy; False = array code; True = the CUDA kernels; a t5rt.kernels Launcher = that one
    (tests: t5rt.kernels.host.HostKernels runs the same kernels on numpy)."""
    from .. import kernels
    from ..errors import BackendError

    if fused is None:
        if xp is np or os.environ.get("T5RT_DECODING_FUSED", "1") == "0":
            return None
        try:
            return kernels.cuda_launcher()
        except BackendError as e:
            warnings.warn(f"t5rt.decoding: fused step kernels unavailable ({e}); using array code", stacklevel=3)
            return None
    if fused is False:
        return None
    if fused is True:
        return kernels.cuda_launcher()
    return fused
