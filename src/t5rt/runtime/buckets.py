"""Bucket policy: which static shapes buffers, engines and CUDA graphs are made for.

Rows (batch * beams) are exact; the source length is padded up to a bucket (masked positions
add exact zeros to attention, so padding does not change results); the self-attention cache
length T is the smallest bucket that holds every position of the request.
"""

from __future__ import annotations


def pow2_at_least(n: int, lo: int = 1) -> int:
    """The smallest power of two (times lo) that is >= n."""
    b = lo
    while b < n:
        b *= 2
    return b


def pow2_buckets(most: int, lo: int = 1) -> list[int]:
    """Every value min(pow2_at_least(n, lo), most) takes for n in [1, most]: lo, 2 lo, ... below
    `most`, then `most` (what Runtime.warmup makes ahead)."""
    out, b = [], lo
    while b < most:
        out.append(b)
        b *= 2
    return out + [most]


def src_bucket(src_len: int, max_input_len: int) -> int:
    """Source length bucket: powers of two from 16, capped at the export's max_input_len."""
    return min(pow2_at_least(src_len, 16), max_input_len)


def cache_bucket(max_new_tokens: int, max_output_len: int) -> int:
    """Cache rows for positions 0..max_new_tokens-1: powers of two from 16, capped at max_output_len."""
    return min(pow2_at_least(max_new_tokens, 16), max_output_len)
