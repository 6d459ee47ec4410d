"""The fused decoding-step kernels (kernels/decoding_step.cu) checked on the CPU.

kernels/*.cu are compiled as C++ for the host (t5rt.kernels.host.HostKernels: blocks of real
geometry, barriers, shared memory) and driven through the very same strategy code on numpy
arrays (`fused=` the host launcher). Every state buffer must equal the array code's after every
step — including steps after done() — and the decoded sequences must equal Hugging Face
`generate()` on a tiny real T5. The GPU runs of the same kernels are in test_decoding_gpu.py;
each kernel against its NumPy reference in test_kernels_host.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import t5rt.kernels
from t5rt import GenerationConfig
from t5rt.decoding import make_strategy
from t5rt.decoding.ops import kernel_launcher

V, T, B = 64, 10, 3
PAD, EOS, START = 0, 1, 0

CONFIGS = [
    dict(),
    dict(output_scores=True, min_new_tokens=4),
    dict(repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=3, bad_words_ids=[[5], [7, 8]]),
    dict(do_sample=True, seed=4, num_return_sequences=2, temperature=1.5, top_k=20, top_p=0.9,
         output_scores=True),
    dict(num_beams=3, length_penalty=0.7, num_return_sequences=2),
    dict(num_beams=4, early_stopping=True, no_repeat_ngram_size=2, output_scores=True),
    dict(num_beams=3, early_stopping="never", length_penalty=1.5, min_new_tokens=2),
    dict(num_beams=2, early_stopping="never", length_penalty=-0.5),
    dict(num_beams=2, do_sample=True, seed=9, top_k=10, output_scores=True),
]


def _logits_source(seed: int, eos_bias: float):
    """A fixed random "bigram model": logits = table[last token] + noise[t] (eos made likely)."""
    rs = np.random.default_rng(seed)
    table = (rs.standard_normal((V, V)) * 3).astype(np.float32)  # [V, V]
    table[:, EOS] += eos_bias
    noise = (rs.standard_normal((T + 4, 64, V)) * 0.5).astype(np.float32)  # [T+4, rows, V]
    return table, noise


STATE = ("history", "tokens", "parent", "step_counter", "_done", "unfinished", "seq_logprob",
         "token_logprob", "running_score", "fin_seq", "fin_score", "fin_flag", "fin_len",
         "heuristic_unsat", "fin_token_logprob")


def _run(opts, fused, seed=0, eos_bias=0.0, strategy=None):
    """Drive a strategy over T + 3 steps; `strategy`: a used one to reset() and drive again."""
    table, noise = _logits_source(seed, eos_bias)
    cfg = GenerationConfig(max_new_tokens=T, **opts)
    cfg.validate()
    if strategy is None:
        s = make_strategy(np, cfg, batch=B, vocab_size=V, max_new_tokens=T, pad_token_id=PAD,
                          eos_token_id=EOS, decoder_start_token_id=START, fused=fused)
    else:
        s = strategy
        s.reset()
    states = []
    for t in range(T + 3):  # 3 steps past the limit: a frozen strategy must not change
        s.step(table[s.tokens] + noise[t, : s.rows])
        states.append({k: getattr(s, k).copy() for k in STATE if getattr(s, k, None) is not None})
    return s.result(), s.token_scores(), states, s


@pytest.mark.parametrize("opts", CONFIGS)
@pytest.mark.parametrize("seed,eos_bias", [(0, 0.0), (1, 2.5), (2, 5.0)])
def test_fused_state_equals_array_code_every_step(host_kernels, opts, seed, eos_bias):
    want = _run(opts, False, seed, eos_bias)
    got = _run(opts, host_kernels, seed, eos_bias)
    assert got[0] == want[0]
    assert got[1] == want[1]
    for t, (a, b) in enumerate(zip(want[2], got[2])):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(b[k], a[k], err_msg=f"{k} after step {t}")


@pytest.mark.parametrize("opts", CONFIGS)
@pytest.mark.parametrize("path", ["array", "fused"])
def test_reset_strategy_equals_a_fresh_one(host_kernels, opts, path):
    """A runtime reuses a strategy (and the CUDA graph captured over its step) across requests:
    after reset() it must behave exactly like a new one, whatever the last request left in it."""
    fused = host_kernels if path == "fused" else False
    used = _run(opts, fused, seed=1, eos_bias=5.0)[3]    # a request whose rows finished early
    fresh = _run(opts, fused, seed=2, eos_bias=0.0)
    # whatever reset() forgets must show: poison every state buffer with values a new strategy
    # never starts from (flags inverted, tokens and scores arbitrary)
    new = _run(opts, fused, seed=2, eos_bias=0.0)[3]
    new.reset()
    for k in STATE:
        a = getattr(used, k, None)
        if a is None:
            continue
        if a.dtype == np.bool_:
            a[...] = ~getattr(new, k)
        else:
            a[...] = getattr(new, k) + 7
    again = _run(opts, fused, seed=2, eos_bias=0.0, strategy=used)
    assert again[0] == fresh[0] and again[1] == fresh[1]
    for t, (a, b) in enumerate(zip(fresh[2], again[2])):
        for k in a:
            np.testing.assert_array_equal(b[k], a[k], err_msg=f"{k} after step {t}")


def test_reset_draws_a_fresh_seed_only_without_config_seed(host_kernels):
    cfg = GenerationConfig(max_new_tokens=T, do_sample=True)
    s = make_strategy(np, cfg, batch=B, vocab_size=V, max_new_tokens=T, pad_token_id=PAD,
                      eos_token_id=EOS, decoder_start_token_id=START, fused=host_kernels)
    first = s.seed
    s.reset()
    assert s.seed != first and int(s._seed[0]) == s.seed
    seeded = _run(dict(do_sample=True, seed=5), host_kernels)[3]
    seeded.reset()
    assert seeded.seed == 5 and int(seeded._seed[0]) == 5


def test_eos_bias_exercises_early_finishes(host_kernels):
    """The cases above include sequences that end before the limit and runs that stop early."""
    (seqs, _), _, states, _ = _run(dict(num_beams=4, early_stopping=True), host_kernels, 2, 5.0)
    assert any(len(s) < T for s in seqs)
    done_at = [bool(st["_done"]) for st in states].index(True)
    assert done_at < T - 1


def test_min_new_tokens_kernel_blocks_eos_until_min(host_kernels):
    table, noise = _logits_source(3, 50.0)  # eos would win every step
    cfg = GenerationConfig(max_new_tokens=T, min_new_tokens=4)
    s = make_strategy(np, cfg, batch=B, vocab_size=V, max_new_tokens=T, pad_token_id=PAD,
                      eos_token_id=EOS, decoder_start_token_id=START, fused=host_kernels)
    while not bool(s.done()):
        s.step(table[s.tokens] + noise[int(s.step_counter), : s.rows])
    seqs, _ = s.result()
    assert all(len(q) == 5 and q[-1] == EOS and EOS not in q[:-1] for q in seqs), seqs


def test_launcher_choice():
    assert kernel_launcher(np, None) is None  # numpy: array code by default
    assert kernel_launcher(np, False) is None
    k = object()
    assert kernel_launcher(np, k) is k


# --- against Hugging Face on a tiny real T5 -----------------------------------------------------
@pytest.mark.parametrize("with_kernels", [False, True])
@pytest.mark.parametrize("opts", [dict(), dict(num_beams=3, length_penalty=0.8, num_return_sequences=2),
                                  dict(num_beams=2, no_repeat_ngram_size=2, min_new_tokens=3)])
def test_fused_matches_hf_generate(host_kernels, opts, with_kernels):
    """with_kernels: the token choice is t5rt.kernels too (argmax_logsumexp, beam_step,
    beam_topk), as on the GPU: every kernel of a step runs, here on the host build."""
    torch = pytest.importorskip("torch")
    from transformers.modeling_outputs import BaseModelOutput

    from conftest import make_t5

    torch.set_num_threads(1)
    model = make_t5(5, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    vocab, steps = model.config.vocab_size, 8
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(2, vocab, (2, 6), generator=g)
    mask = torch.ones_like(ids)
    with torch.no_grad():  # make eos a real option: its lm_head row = 1.3 x a frequent token's
        tok = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4)[0, 3]
        model.lm_head.weight[EOS] = model.lm_head.weight[tok] * 1.3
    cfg = GenerationConfig(max_new_tokens=steps, **opts)
    cfg.validate()
    s = make_strategy(np, cfg, batch=2, vocab_size=vocab, max_new_tokens=steps, pad_token_id=PAD,
                      eos_token_id=EOS, decoder_start_token_id=START, fused=host_kernels,
                      kernels=t5rt.kernels if with_kernels else None)
    r = s.rows_per_input
    with torch.no_grad():
        hidden = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        enc = BaseModelOutput(last_hidden_state=hidden.repeat_interleave(r, 0))
        while not bool(s.done()):
            t = int(s.step_counter)
            dec = torch.from_numpy(np.ascontiguousarray(s.history[:, : t + 1]))
            logits = model(encoder_outputs=enc, attention_mask=mask.repeat_interleave(r, 0),
                           decoder_input_ids=dec).logits[:, -1]
            s.step(logits.float().numpy())
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, **opts)
    want = []
    for row in out.tolist():
        row = row[1:]
        want.append(row[: row.index(EOS) + 1] if EOS in row else row)
    assert s.result()[0] == want


def test_decoding_step_bench_runs_on_cpu(tmp_path):
    """bench/decoding_step.py (run on the H100 for the real table) works end to end on numpy."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "decoding_step.py"
    spec = importlib.util.spec_from_file_location("decoding_step_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "table.md"
    assert bench.main(["--cpu", "--vocab", "64", "--steps", "6", "--repeats", "1", "--out", str(out)]) == 0
    rows = [ln for ln in out.read_text().splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert len(rows) == 3 * 2  # cases x batches
    assert all(float(r.split("|")[5]) > 0 for r in rows)
