"""Decoding strategies on cupy (marker `gpu`): same results as numpy, and `step()` captured in a
CUDA graph (capture fails on any host synchronisation) replays to the same tokens as eager.

Every case runs in three modes: "array" (array code only, fused=False), "fused" (one
state-update kernel per step, kernels/decoding_step.cu) and "kernels" (that + t5rt.kernels for the token
choice: argmax_logsumexp, sample_logprob, beam_step/beam_topk).

Logits come from a fixed random "bigram model" (logits = table[last token] + noise[t]) so the
numpy and cupy runs see identical inputs without a network; model parity with Hugging Face
is tested on the CPU in test_decoding.py (and for the fused kernels' host build in
test_decoding_fused.py).

Sampling with t5rt.kernels draws with the same RNG numbers from the same distribution as the
array code, but sums probabilities differently (float32 chunks vs float64 cumsum; top-p mass in
fixed point), so a uniform within float error of a CDF edge may pick the neighbouring token:
that mode is checked statistically (test_sampling_kernel_agrees_with_array_code).
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


MODES = ["array", "fused", "kernels"]


def _mode_kwargs(xp, mode):
    if xp is np or mode == "array":
        return dict(fused=False)
    if mode == "fused":
        return dict(fused=True)
    import t5rt.kernels as K

    K.load()
    return dict(fused=True, kernels=K)


def _make(xp, opts, mode="array", batch=B, vocab=V, steps=T):
    cfg = GenerationConfig(max_new_tokens=steps, **opts)
    cfg.validate()
    return make_strategy(xp, cfg, batch=batch, vocab_size=vocab, max_new_tokens=steps, pad_token_id=PAD,
                         eos_token_id=EOS, decoder_start_token_id=START, **_mode_kwargs(xp, mode))


def _run(xp, opts, mode="array"):
    table, noise = _bigram()
    table, noise = xp.asarray(table), xp.asarray(noise)
    s = _make(xp, opts, mode)
    for t in range(T):
        s.step(table[s.tokens] + noise[t, : s.rows])
    return s.result()


def _kernel_sampling(opts, mode):
    return mode == "kernels" and opts.get("do_sample") and opts.get("num_beams", 1) == 1


def test_rng_identical_on_cupy():
    import cupy

    args = (np.array(7, dtype=np.int64), np.arange(100), np.arange(33))
    u_np = rng.uniform(np, rng.seed_array(np, 2**62 + 12345), *args)
    u_cp = rng.uniform(cupy, rng.seed_array(cupy, 2**62 + 12345), *(cupy.asarray(a) for a in args))
    np.testing.assert_array_equal(u_np, cupy.asnumpy(u_cp))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("opts", CONFIGS)
def test_cupy_matches_numpy(opts, mode):
    import cupy

    seq_np, sc_np = _run(np, opts)
    seq_cp, sc_cp = _run(cupy, opts, mode)
    if _kernel_sampling(opts, mode):  # see the module docstring; checked statistically below
        assert [len(q) for q in seq_cp] and all(0 < len(q) <= T for q in seq_cp)
        return
    assert seq_cp == seq_np
    np.testing.assert_allclose(sc_cp, sc_np, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("opts", CONFIGS)
def test_cuda_graph_replay_matches_eager(opts, mode):
    import cupy

    from t5rt.runtime.cuda_graph import CapturedStep

    want = _run(cupy, opts, mode)
    table, noise = _bigram()
    table, noise = cupy.asarray(table), cupy.asarray(noise)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        s = _make(cupy, opts, mode)
        logits = cupy.empty((s.rows, V), dtype=cupy.float32)  # the engine's output buffer
        cupy.copyto(logits, table[s.tokens] + noise[0, : s.rows])
        s.step(logits)  # step 0 eager (loads kernels)
        graph = None
        for t in range(1, T):
            cupy.copyto(logits, table[s.tokens] + noise[t, : s.rows])
            if graph is None:
                graph = CapturedStep(lambda: s.step(logits), stream, cupy.cuda.MemoryPool())  # records, runs nothing
            graph.launch()
        stream.synchronize()
    assert s.result() == want


@pytest.mark.parametrize("mode", ["fused", "kernels"])
@pytest.mark.parametrize("opts,batch", [(dict(), 1), (dict(), 8), (dict(output_scores=True), 8),
                                        (dict(num_beams=4), 1), (dict(num_beams=4, output_scores=True), 8),
                                        (dict(num_beams=4, length_penalty=0.6, min_new_tokens=3), 2)])
def test_t5_small_shape_matches_numpy(opts, batch, mode):
    """vocab 32128, 20 steps of random logits (eos likely later on): tokens, parents, finished
    hypotheses identical to numpy at every step; scores equal to float rounding."""
    import cupy

    v, steps = 32128, 20
    rs = np.random.default_rng(batch)
    a = _make(np, opts, batch=batch, vocab=v, steps=steps)
    b = _make(cupy, opts, mode, batch=batch, vocab=v, steps=steps)
    for t in range(steps + 2):
        logits = (rs.standard_normal((a.rows, v)) * 3).astype(np.float32)
        logits[:, EOS] += 0.4 * t  # eos becomes likely: rows finish at different steps
        a.step(logits)
        b.step(cupy.asarray(logits))
        np.testing.assert_array_equal(cupy.asnumpy(b.tokens), a.tokens, err_msg=f"step {t}")
        if a.parent is not None:
            np.testing.assert_array_equal(cupy.asnumpy(b.parent), a.parent, err_msg=f"step {t}")
        assert bool(b.done()) == bool(a.done()) and int(b.step_counter) == int(a.step_counter)
    (sa, ca), (sb, cb) = a.result(), b.result()
    assert sb == sa
    np.testing.assert_allclose(cb, ca, rtol=1e-5, atol=1e-4)
    if opts.get("output_scores"):
        for x, y in zip(a.token_scores(), b.token_scores()):
            np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("opts", [dict(top_k=0), dict(temperature=0.7, top_k=50),
                                  dict(top_k=0, top_p=0.9), dict(temperature=1.3, top_k=20, top_p=0.8)])
def test_sampling_kernel_agrees_with_array_code(opts):
    """One step over 4000 rows: the kernel draws the array code's token except where the uniform
    sits within float error of a CDF edge (rare); its log-probs equal the array code's."""
    import cupy

    n, v = 4000, 384
    rs = np.random.default_rng(3)
    logits = (rs.standard_normal((n, v)) * 2).astype(np.float32)
    cfg = dict(do_sample=True, seed=11, output_scores=True, **opts)
    a = _make(np, cfg, batch=n, vocab=v, steps=2)
    b = _make(cupy, cfg, "kernels", batch=n, vocab=v, steps=2)
    a.step(logits)
    b.step(cupy.asarray(logits))
    ta, tb = a.tokens, cupy.asnumpy(b.tokens)
    same = ta == tb
    assert same.mean() > 0.995, same.mean()
    np.testing.assert_allclose(cupy.asnumpy(b.seq_logprob)[same], a.seq_logprob[same], rtol=1e-4, atol=1e-4)


def test_sampling_kernel_rows_follow_first_input():
    """A request split into chunks samples like one batch with the kernel too (RNG rows)."""
    import cupy

    n, v = 12, 384
    logits = cupy.asarray((np.random.default_rng(1).standard_normal((n, v)) * 2).astype(np.float32))
    cfg = GenerationConfig(do_sample=True, seed=5, top_k=0, max_new_tokens=3, num_return_sequences=2)

    def sample(lg, first):
        s = make_strategy(cupy, cfg, batch=lg.shape[0] // 2, vocab_size=v, max_new_tokens=3,
                          pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=START,
                          first_input=first, **_mode_kwargs(cupy, "kernels"))
        s.step(lg)
        return cupy.asnumpy(s.tokens)

    whole = sample(logits, 0)
    np.testing.assert_array_equal(sample(logits[6:], 3), whole[6:])
