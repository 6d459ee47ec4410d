"""Will a request fit? An estimate of its memory, checked before anything is allocated.

    check_request_fits(manifest, cfg, batch=B, src_len=s, max_new_tokens=n, device=dev, options=o)

The estimate (bytes) of one chunk of `batch` inputs, N = batch x rows per input (beams, or
sampled sequences), V = vocab, T = cache bucket, S = source bucket, a = activation bytes:

    buffers   2 L N H T Dk a (self K/V) + 2 L N H S Dk a (cross K/V, per row) + 4 N V (logits)
              + encoder: B S (D a + 16) + 2 L B H S Dk a
    decoding  history and per-token scores: 12 N (T+1), beam search x 8 (candidates, finished)
              per-step temporaries over [N, V]: 32 N V (greedy, sampling), 48 N V (beam search)

It is an estimate (engines' own workspaces are not counted) that errs high by little; what
matters is that a request which cannot fit (5000 beams on a real vocabulary) is refused in
microseconds with a RequestTooLargeError instead of running for seconds into a MemoryError.
The limit: RuntimeOptions.max_request_bytes, else free device memory (CUDA) or available host
memory (CPU: MemAvailable, capped by RLIMIT_AS).
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import RequestTooLargeError
from .buckets import cache_bucket, src_bucket

_ACT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


def request_bytes(m: Any, cfg: Any, batch: int, src_len: int, max_new_tokens: int) -> int:
    """Estimated bytes of one chunk of `batch` inputs (see the module doc)."""
    d, a = m.dims, _ACT_BYTES[m.precision]
    beams = cfg.num_beams > 1
    n = batch * cfg.rows_per_input()
    T = cache_bucket(max_new_tokens, m.max_output_len)
    S = src_bucket(src_len, m.max_input_len)
    L, H, Dk, V = d.num_decoder_layers, d.num_heads, d.d_kv, d.vocab_size
    buffers = 2 * L * n * H * T * Dk * a + 2 * L * n * H * S * Dk * a + 4 * n * V
    encoder = batch * S * (d.d_model * a + 16) + 2 * L * batch * H * S * Dk * a
    history = 12 * n * (max_new_tokens + 1) * (8 if beams else 1)
    temporaries = (48 if beams else 32) * n * V
    return buffers + encoder + history + temporaries


def available_bytes(device: Any) -> tuple[int | None, str]:
    """-> (bytes the device can still give, where that number comes from); None: unknown."""
    if getattr(device, "is_cuda", False):
        try:
            import cupy

            free, _ = cupy.cuda.runtime.memGetInfo()
            return int(free + cupy.get_default_memory_pool().free_bytes()), "free GPU memory"
        except Exception:  # noqa: BLE001 - no number: no limit
            return None, "GPU"
    avail = _mem_available()
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY and (avail is None or soft < avail):
            return int(soft), "the address-space limit (ulimit -v)"
    except (ImportError, OSError, ValueError):
        pass
    return avail, "available host memory"


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def check_request_fits(m: Any, cfg: Any, *, batch: int, src_len: int, max_new_tokens: int,
                       device: Any, options: Any, available: tuple[int | None, str] | None = None) -> int:
    """RequestTooLargeError when the estimate exceeds the limit; -> the estimate.

    available: an earlier available_bytes(device) to use instead of asking the device now (the
    service core checks requests in callers' threads, which must make no CUDA call while the
    scheduler thread may be capturing a CUDA graph)."""
    need = request_bytes(m, cfg, batch, src_len, max_new_tokens)
    limit, source = options.max_request_bytes, "RuntimeOptions.max_request_bytes"
    if limit is None:
        limit, source = available if available is not None else available_bytes(device)
    if limit is not None and need > limit:
        rows = (f"{cfg.num_beams} beams" if cfg.num_beams > 1
                else f"{cfg.num_return_sequences} sequences" if cfg.do_sample else "1 sequence")
        raise RequestTooLargeError(
            f"this request needs about {need / 2**30:.2f} GiB ({batch} inputs x {rows} x "
            f"{max_new_tokens} new tokens over a {m.dims.vocab_size}-token vocabulary), more than the "
            f"{limit / 2**30:.2f} GiB of {source}; ask for fewer beams, new tokens or inputs per chunk "
            "(RuntimeOptions.max_batch), or raise RuntimeOptions.max_request_bytes")
    return need
