"""Decoding strategies on cupy (marker `gpu`): same results as numpy, and `step()` captured in a
CUDA graph (capture fails on any host synchronisation) replays to the same tokens as eager.

Logits come from a fixed random "bigram model" (logits = table[last token] + noise[t]) so the
numpy and cupy runs see identical inputs without a network; model parity with Hugging Face
is tested on the CPU in test_decoding.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from t5rt import GenerationConfig
from t5rt.decoding import make_strategy, rng

pytestmark = pytest.mark.gpu

V, T, B = 64, 10, 3
PAD, EOS, START = 0, 1, 0

CONFIGS = [
    dict(),
    dict(repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=3, bad_words_ids=[[5], [7, 8]]),
    dict(do_sample=True, seed=4, num_return_sequences=2, temperature=1.5, top_k=20, top_p=0.9),
    dict(num_beams=3, length_penalty=0.7, num_return_sequences=2),
    dict(num_beams=4, early_stopping=True, no_repeat_ngram_size=2),
    dict(num_beams=3, early_stopping="never", length_penalty=1.5),
    dict(num_beams=2, do_sample=True, seed=9, top_k=10),
]


def _bigram(seed: int = 0):
    rs = np.random.default_rng(seed)
    table = (rs.standard_normal((V, V)) * 3).astype(np.float32)  # [V, V]
    table[:, EOS] -= 2.0  # eos possible but not immediate
    noise = (rs.standard_normal((T + 1, 64, V)) * 0.5).astype(np.float32)  # [T+1, rows<=64, V]
    return table, noise


def _make(xp, opts):
    cfg = GenerationConfig(max_new_tokens=T, **opts)
    cfg.validate()
    return make_strategy(xp, cfg, batch=B, vocab_size=V, max_new_tokens=T, pad_token_id=PAD,
                         eos_token_id=EOS, decoder_start_token_id=START)


def _run(xp, opts):
    table, noise = _bigram()
    table, noise = xp.asarray(table), xp.asarray(noise)
    s = _make(xp, opts)
    for t in range(T):
        s.step(table[s.tokens] + noise[t, : s.rows])
    return s.result()


def test_rng_identical_on_cupy():
    import cupy

    args = (np.array(7, dtype=np.int64), np.arange(100), np.arange(33))
    u_np = rng.uniform(np, rng.seed_array(np, 2**62 + 12345), *args)
    u_cp = rng.uniform(cupy, rng.seed_array(cupy, 2**62 + 12345), *(cupy.asarray(a) for a in args))
    np.testing.assert_array_equal(u_np, cupy.asnumpy(u_cp))


@pytest.mark.parametrize("opts", CONFIGS)
def test_cupy_matches_numpy(opts):
    import cupy

    seq_np, sc_np = _run(np, opts)
    seq_cp, sc_cp = _run(cupy, opts)
    assert seq_cp == seq_np
    np.testing.assert_allclose(sc_cp, sc_np, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opts", CONFIGS)
def test_cuda_graph_replay_matches_eager(opts):
    import cupy

    from t5rt.runtime.cuda_graph import CapturedStep

    want = _run(cupy, opts)
    table, noise = _bigram()
    table, noise = cupy.asarray(table), cupy.asarray(noise)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        s = _make(cupy, opts)
        logits = cupy.empty((s.rows, V), dtype=cupy.float32)  # the engine's output buffer
        cupy.copyto(logits, table[s.tokens] + noise[0, : s.rows])
        s.step(logits)  # step 0 eager (loads kernels)
        graph = None
        for t in range(1, T):
            cupy.copyto(logits, table[s.tokens] + noise[t, : s.rows])
            if graph is None:
                graph = CapturedStep(lambda: s.step(logits), stream)  # capture records, runs nothing
            graph.launch()
        stream.synchronize()
    assert s.result() == want
