"""Decoding strategies (t5rt.decoding) against Hugging Face `generate()` on tiny real T5 models.

The strategies are driven by a stepper that takes logits from the HF model itself: the encoder
runs once, then every step runs the HF decoder on the full prefix `strategy.history[:, :t+1]`
(so beam reordering needs no cache handling). Outputs are compared token for token with
`model.generate(...)` on the same weights.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from transformers import LogitsProcessor, LogitsProcessorList  # noqa: E402
from transformers.modeling_outputs import BaseModelOutput  # noqa: E402

from conftest import make_t5  # noqa: E402
from t5rt import GenerationConfig, InvalidOptionError  # noqa: E402
from t5rt.decoding import make_strategy, rng  # noqa: E402

V = 384  # conftest.TINY vocab
PAD, EOS, START = 0, 1, 0


# --- fixtures and helpers ---------------------------------------------------------------------
def _inputs():
    """Three inputs of lengths 7, 5, 3 (right-padded, with attention mask)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, V, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    return ids * mask, mask


@torch.no_grad()
def _eos_prone(model, row: int, pos: int, scale: float):
    """Make eos a real option: its lm_head row becomes `scale` x the row of the token greedy
    search emits for input `row` at step `pos`, so sequences end at varied lengths (random
    weights alone almost never pick eos among 384 tokens)."""
    ids, mask = _inputs()
    tok = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=pos + 1)[row, pos + 1]
    model.lm_head.weight[EOS] = model.lm_head.weight[tok] * scale
    return model


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread (and CI has 2 CPUs shared by everything)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def batch():
    return _inputs()


@pytest.fixture(scope="module")
def model():
    """T5 v1.1 shapes (gated-gelu, untied head); greedy ends rows at 6/-/6, beams at 5..16."""
    return _eos_prone(make_t5(3, feed_forward_proj="gated-gelu", tie_word_embeddings=False), 0, 5, 1.4)


@pytest.fixture(scope="module")
def model_v10():
    """T5 v1.0 shapes (relu, tied embeddings)."""
    return _eos_prone(make_t5(0), 1, 8, 1.2)


def strategy_for(config: GenerationConfig, n_inputs: int, T: int, xp=np):
    return make_strategy(xp, config, batch=n_inputs, vocab_size=V, max_new_tokens=T,
                         pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=START)


@torch.no_grad()
def drive(model, ids, mask, config: GenerationConfig, T: int):
    """Run a strategy to completion with HF-model logits; returns the strategy."""
    s = strategy_for(config, ids.shape[0], T)
    r = s.rows_per_input
    hidden = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    enc = BaseModelOutput(last_hidden_state=hidden.repeat_interleave(r, 0))
    m = mask.repeat_interleave(r, 0)
    while not bool(s.done()):
        t = int(s.step_counter)
        dec = torch.from_numpy(np.ascontiguousarray(s.history[:, : t + 1]))
        logits = model(encoder_outputs=enc, attention_mask=m, decoder_input_ids=dec).logits[:, -1]
        s.step(logits.float().numpy())
    return s


@torch.no_grad()
def hf_generate(model, ids, mask, T: int, **kw):
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=T,
                          return_dict_in_generate=True, output_scores=True, **kw)


def hf_sequences(out) -> list[list[int]]:
    """HF sequences without the start token, cut after the first eos (padding after it)."""
    seqs = []
    for row in out.sequences.tolist():
        row = row[1:]
        seqs.append(row[: row.index(EOS) + 1] if EOS in row else row)
    return seqs


def config(**kw) -> GenerationConfig:
    cfg = GenerationConfig(**kw)
    cfg.validate()
    return cfg


def assert_same_as_hf(model, ids, mask, T, **kw):
    ours_seqs, ours_scores = drive(model, ids, mask, config(max_new_tokens=T, **kw), T).result()
    out = hf_generate(model, ids, mask, T, **kw)
    assert ours_seqs == hf_sequences(out), f"options {kw}"
    return ours_seqs, ours_scores, out


# --- greedy -------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [4, 16])
@pytest.mark.parametrize("which", ["model", "model_v10"])
def test_greedy_matches_hf(request, batch, which, T):
    seqs, _, _ = assert_same_as_hf(request.getfixturevalue(which), *batch, T)
    if T == 16:  # some rows stopped at eos (padding exercised), some ran to the limit
        assert any(len(s) < T for s in seqs) and any(len(s) == T for s in seqs)


def test_greedy_batch_equals_one_at_a_time(model, batch):
    ids, mask = batch
    together, _ = drive(model, ids, mask, config(max_new_tokens=10), 10).result()
    alone = [drive(model, ids[i : i + 1, : int(mask[i].sum())], mask[i : i + 1, : int(mask[i].sum())],
                   config(max_new_tokens=10), 10).result()[0][0] for i in range(ids.shape[0])]
    assert together == alone


def test_greedy_scores_are_summed_logprobs(model, batch):
    ids, mask = batch
    T = 12
    seqs, scores, out = assert_same_as_hf(model, ids, mask, T)
    trans = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    for n, s in enumerate(seqs):
        assert scores[n] == pytest.approx(float(trans[n, : len(s)].sum()), abs=1e-4)


@pytest.mark.parametrize("opts", [
    dict(repetition_penalty=1.8),
    dict(repetition_penalty=0.6),
    dict(no_repeat_ngram_size=1),
    dict(no_repeat_ngram_size=2),
    dict(no_repeat_ngram_size=3, repetition_penalty=1.2),
    dict(min_new_tokens=6),
    dict(bad_words_ids=[[EOS], [5], [120, 7], [3, 9, 11]]),
])
def test_greedy_processors_match_hf(model, batch, opts):
    assert_same_as_hf(model, *batch, 14, **opts)


def test_processors_change_the_output(model, batch):
    """The processor cases above are not vacuous: each changes greedy output on this model."""
    ids, mask = batch
    base = hf_sequences(hf_generate(model, ids, mask, 14))
    for opts in [dict(repetition_penalty=1.8), dict(no_repeat_ngram_size=2), dict(min_new_tokens=6)]:
        assert hf_sequences(hf_generate(model, ids, mask, 14, **opts)) != base, opts
    # bad words: ban what greedy produced first in row 0, and a bigram it produced
    s0 = base[0]
    bad = [[s0[0]], [s0[1], s0[2]]] if len(s0) > 2 else [[s0[0]]]
    ours, _ = drive(model, ids, mask, config(max_new_tokens=14, bad_words_ids=bad), 14).result()
    assert ours[0] != s0
    assert ours == hf_sequences(hf_generate(model, ids, mask, 14, bad_words_ids=bad))


# --- beam search --------------------------------------------------------------------------------
@pytest.mark.parametrize("opts", [
    dict(num_beams=2),
    dict(num_beams=3, length_penalty=0.0),
    dict(num_beams=4, length_penalty=2.0, num_return_sequences=3),
    dict(num_beams=3, early_stopping=True, length_penalty=-1.0),
    dict(num_beams=3, early_stopping=True, num_return_sequences=2),
    dict(num_beams=4, early_stopping="never", length_penalty=1.5, num_return_sequences=4),
    dict(num_beams=2, early_stopping="never", length_penalty=-0.5),
])
@pytest.mark.parametrize("which", ["model", "model_v10"])
def test_beam_matches_hf(request, batch, which, opts):
    seqs, scores, out = assert_same_as_hf(request.getfixturevalue(which), *batch, 12, **opts)
    np.testing.assert_allclose(scores, out.sequences_scores.numpy(), rtol=1e-5, atol=1e-5)
    assert len(seqs) == batch[0].shape[0] * opts.get("num_return_sequences", 1)


@pytest.mark.parametrize("opts", [
    dict(num_beams=3, repetition_penalty=1.5, no_repeat_ngram_size=2),
    dict(num_beams=2, min_new_tokens=5, bad_words_ids=[[7], [30, 31]]),
])
def test_beam_processors_match_hf(model, batch, opts):
    seqs, scores, out = assert_same_as_hf(model, *batch, 10, **opts)
    np.testing.assert_allclose(scores, out.sequences_scores.numpy(), rtol=1e-5, atol=1e-5)


def test_beam_parent_tracks_history(model, batch):
    """After each step, row n's history (minus the new token) is row parent[n]'s old history."""
    ids, mask = batch
    s = strategy_for(config(num_beams=3, max_new_tokens=6), 3, 6)
    rs = np.random.default_rng(0)
    for _ in range(4):
        t = int(s.step_counter)
        before = s.history.copy()
        s.step(rs.standard_normal((s.rows, V)).astype(np.float32) * 4)
        np.testing.assert_array_equal(s.history[:, : t + 1], before[s.parent, : t + 1])
        np.testing.assert_array_equal(s.history[:, t + 1], s.tokens)
        assert (s.parent // 3 == np.arange(9) // 3).all()  # parents stay within the input


# --- processed scores: the whole pipeline incl. warpers against HF, step by step ------------------
@pytest.mark.parametrize("opts", [
    dict(do_sample=False, repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=3,
         bad_words_ids=[[4], [50, 60]]),
    dict(do_sample=True, temperature=0.7, top_k=40, top_p=0.8, repetition_penalty=1.2),
    dict(do_sample=True, top_k=0, top_p=0.5, no_repeat_ngram_size=3),
    dict(do_sample=True, temperature=1.5, top_k=3),
])
def test_pipeline_scores_match_hf(model, batch, opts):
    """HF's processed scores at every step equal t5rt's pipeline on HF's own history."""
    ids, mask = batch
    T = 10
    torch.manual_seed(0)
    out = hf_generate(model, ids, mask, T, output_logits=True, **opts)
    seq = out.sequences.numpy()  # [B, 1+steps]
    s = strategy_for(config(max_new_tokens=T, **opts), ids.shape[0], T)
    hist = np.full((s.rows, T + 1), PAD, dtype=np.int64)
    hist[:, : seq.shape[1]] = seq
    for t, (raw, processed) in enumerate(zip(out.logits, out.scores)):
        ours = s.pipeline(hist, raw.numpy(), np.array(t, dtype=np.int64), t)
        want = processed.numpy()
        np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(want), err_msg=f"step {t}")
        fin = ~np.isneginf(want)
        np.testing.assert_allclose(ours[fin], want[fin], rtol=1e-6, atol=1e-6)


# --- user logits processors (research hook) ------------------------------------------------------
class _BanParityTokens(LogitsProcessor):
    """HF form of the same hook: forbid tokens of the parity of the step."""

    def __call__(self, input_ids, scores):
        t = input_ids.shape[1] - 1
        scores = scores.clone()
        scores[:, t % 2 :: 2] = -float("inf")
        return scores


def _ban_parity_tokens(history, logits, t):
    assert history.shape[1] == t + 1
    out = logits.copy()
    out[:, t % 2 :: 2] = -np.inf
    return out


@pytest.mark.parametrize("opts", [dict(), dict(num_beams=3), dict(repetition_penalty=1.4)])
def test_user_logits_processor_matches_hf(model, batch, opts):
    ids, mask = batch
    T = 8
    ours, _ = drive(model, ids, mask, config(max_new_tokens=T, logits_processors=[_ban_parity_tokens],
                                             **opts), T).result()
    out = hf_generate(model, ids, mask, T, logits_processor=LogitsProcessorList([_BanParityTokens()]),
                      **opts)
    assert ours == hf_sequences(out)
    for s in ours:
        assert all(tok % 2 != t % 2 for t, tok in enumerate(s))


# --- sampling -----------------------------------------------------------------------------------
def test_sampling_seed_reproducible_and_seeds_differ(model, batch):
    ids, mask = batch
    T = 10
    cfg = dict(do_sample=True, num_return_sequences=3, max_new_tokens=T, top_k=0, temperature=8.0)
    a = drive(model, ids, mask, config(seed=7, **cfg), T).result()
    b = drive(model, ids, mask, config(seed=7, **cfg), T).result()
    c = drive(model, ids, mask, config(seed=8, **cfg), T).result()
    d = drive(model, ids, mask, config(seed=None, **cfg), T).result()
    assert a == b
    assert a[0] != c[0] and a[0] != d[0]
    assert len(a[0]) == 9
    assert len({tuple(x) for x in a[0]}) > 3  # rows draw independently


def test_sampling_top_k_1_equals_greedy(model, batch):
    ids, mask = batch
    T = 12
    ours, _ = drive(model, ids, mask, config(do_sample=True, top_k=1, seed=3, max_new_tokens=T,
                                             num_return_sequences=2), T).result()
    greedy = hf_sequences(hf_generate(model, ids, mask, T))
    assert ours == [g for g in greedy for _ in range(2)]


def _chi2_upper(df: int, z: float = 4.0) -> float:
    """Wilson-Hilferty chi-square quantile at a normal z (z=4: p ~ 3e-5)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _chi2(counts: np.ndarray, probs: np.ndarray, n: int) -> tuple[float, int]:
    """Pearson chi-square with tokens of expected count < 5 pooled into one cell."""
    exp = probs * n
    big = exp >= 5
    obs_cells = np.append(counts[big], counts[~big].sum())
    exp_cells = np.append(exp[big], exp[~big].sum())
    keep = exp_cells > 0
    stat = float((((obs_cells - exp_cells) ** 2)[keep] / exp_cells[keep]).sum())
    return stat, int(keep.sum()) - 1


@pytest.mark.parametrize("opts", [
    dict(top_k=0, temperature=12.0),
    dict(top_k=30, temperature=10.0, top_p=0.9),
    dict(top_k=0, temperature=15.0, top_p=0.7, repetition_penalty=1.5),
])
@torch.no_grad()
def test_sampled_first_token_frequencies(model, batch, opts):
    """One batched step of 6000 rows: token counts match softmax(HF-processed logits).

    The widened tiny model's logits span +-64; high temperatures spread the mass."""
    from transformers import GenerationConfig as HFConfig

    ids, mask = batch
    n = 6000
    hidden = model.get_encoder()(input_ids=ids[:1], attention_mask=mask[:1]).last_hidden_state
    logits = model(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), attention_mask=mask[:1],
                   decoder_input_ids=torch.tensor([[START]])).logits[:, -1].float()
    hf_cfg = HFConfig(do_sample=True, eos_token_id=EOS, pad_token_id=PAD, decoder_start_token_id=START,
                      **opts)
    procs = model._get_logits_processor(hf_cfg, input_ids_seq_length=1, device="cpu")
    want = torch.softmax(procs(torch.tensor([[START]]), logits.clone()), -1)[0].double().numpy()
    s = make_strategy(np, config(do_sample=True, seed=11, num_return_sequences=n, max_new_tokens=2, **opts),
                      batch=1, vocab_size=V, max_new_tokens=2, pad_token_id=PAD, eos_token_id=EOS,
                      decoder_start_token_id=START)
    s.step(np.repeat(logits.numpy(), n, axis=0))
    counts = np.bincount(s.tokens, minlength=V)
    assert counts[want == 0].sum() == 0  # filtered tokens are never drawn
    stat, df = _chi2(counts, want, n)
    assert df >= 3
    assert stat < _chi2_upper(df), (stat, df)


def test_rng_uniforms_well_formed():
    seed = rng.seed_array(np, 123)
    u = rng.uniform(np, seed, np.array(5, dtype=np.int64), np.arange(4000), np.arange(50))  # [4000, 50]
    assert u.shape == (4000, 50) and (u > 0).all() and (u < 1).all()
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    u2 = rng.uniform(np, seed, np.array(6, dtype=np.int64), np.arange(4000), np.arange(50))
    assert abs(np.corrcoef(u.ravel(), u2.ravel())[0, 1]) < 0.01
    assert (rng.uniform(np, seed, np.array(5, dtype=np.int64), np.arange(4000), np.arange(50)) == u).all()


def test_beam_sampling_reproducible(model, batch):
    ids, mask = batch
    cfg = dict(num_beams=3, do_sample=True, num_return_sequences=2, max_new_tokens=8, top_k=0, temperature=8.0)
    a = drive(model, ids, mask, config(seed=5, **cfg), 8).result()
    b = drive(model, ids, mask, config(seed=5, **cfg), 8).result()
    c = drive(model, ids, mask, config(seed=6, **cfg), 8).result()
    assert a == b and a != c and len(a[0]) == 6
    assert all(x >= y for x, y in zip(a[1][0::2], a[1][1::2]))  # best first within each input


def test_gumbel_topk_first_draw_frequencies():
    from t5rt.decoding import ops

    """Beam sampling draws without replacement: the first draw follows softmax(logp)."""
    rs = np.random.default_rng(0)
    logp = np.log(rs.dirichlet(np.ones(12))).astype(np.float32)
    n = 20000
    u = rng.uniform(np, rng.seed_array(np, 9), np.array(0, dtype=np.int64), np.arange(n), np.arange(12))
    _, idx = ops.gumbel_topk(np, np.repeat(logp[None], n, 0), u, 3)
    assert (idx[:, 0] != idx[:, 1]).all() and (idx[:, 1] != idx[:, 2]).all() and (idx[:, 0] != idx[:, 2]).all()
    stat, df = _chi2(np.bincount(idx[:, 0], minlength=12), np.exp(logp.astype(np.float64)), n)
    assert stat < _chi2_upper(df)


# --- static shapes, in-place state, done() semantics --------------------------------------------
STATE = {"sample": ["history", "tokens", "unfinished", "seq_logprob", "step_counter", "_done"],
         "beam": ["history", "tokens", "parent", "running_score", "fin_seq", "fin_score", "fin_flag",
                  "fin_len", "heuristic_unsat", "step_counter", "_done"]}


@pytest.mark.parametrize("opts", [
    dict(), dict(do_sample=True, top_p=0.9, seed=1, repetition_penalty=1.2, no_repeat_ngram_size=2),
    dict(num_beams=3, no_repeat_ngram_size=2, bad_words_ids=[[3, 4]]),
    dict(num_beams=2, do_sample=True, seed=2),
])
def test_step_updates_state_in_place_and_freezes_when_done(opts):
    T = 6
    s = strategy_for(config(max_new_tokens=T, **opts), 2, T)
    names = STATE["beam" if opts.get("num_beams", 1) > 1 else "sample"]
    ptrs = {k: (id(getattr(s, k)), getattr(s, k).__array_interface__["data"][0]) for k in names}
    rs = np.random.default_rng(0)
    steps = 0
    while not bool(s.done()):
        s.step(rs.standard_normal((s.rows, V)).astype(np.float32) * 3)
        steps += 1
        assert int(s.step_counter) == steps
    assert steps <= T
    for k in names:
        assert (id(getattr(s, k)), getattr(s, k).__array_interface__["data"][0]) == ptrs[k], k
    assert isinstance(s.done(), np.ndarray) and s.done().shape == ()
    frozen = {k: getattr(s, k).copy() for k in names}
    before = s.result()
    for _ in range(3):  # a runtime that checks done() late keeps stepping: nothing may change
        s.step(rs.standard_normal((s.rows, V)).astype(np.float32) * 3)
    for k in names:
        if k != "parent":
            np.testing.assert_array_equal(getattr(s, k), frozen[k], err_msg=k)
    if s.parent is not None:
        np.testing.assert_array_equal(s.parent, np.arange(s.rows))  # no reorder after done
    assert s.result() == before


def test_layout_rows_and_start_tokens():
    s = strategy_for(config(do_sample=True, num_return_sequences=4, max_new_tokens=5), 3, 5)
    assert (s.rows, s.rows_per_input, s.parent) == (12, 4, None)
    b = strategy_for(config(num_beams=5, num_return_sequences=2, max_new_tokens=5), 3, 5)
    assert (b.rows, b.rows_per_input) == (15, 5)
    for x in (s, b):
        assert x.history.shape == (x.rows, 6) and (x.history[:, 0] == START).all()
        assert (x.tokens == START).all() and int(x.step_counter) == 0


def test_invalid_options_raise():
    with pytest.raises(InvalidOptionError, match="num_beams"):
        strategy_for(GenerationConfig(num_beams=200), 1, 4)
    with pytest.raises(InvalidOptionError, match="bad_words_ids"):
        strategy_for(GenerationConfig(bad_words_ids=[[V + 3]]), 1, 4)
    with pytest.raises(InvalidOptionError, match="max_new_tokens"):
        strategy_for(GenerationConfig(), 1, 0)


def test_decoding_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; import t5rt.decoding, t5rt.decoding.ops, t5rt.decoding.rng; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- primitives and edge cases --------------------------------------------------------------------
@pytest.mark.parametrize("m", [50, 5000])  # one-sort path and partition path
def test_topk_sorted_with_ties_to_lower_index(m):
    from t5rt.decoding import ops

    rs = np.random.default_rng(m)
    for trial in range(20):
        x = rs.integers(-4, 4, (3, m)).astype(np.float32)  # many ties
        x[:, rs.integers(0, m, 10)] = -np.inf
        k = int(rs.integers(1, 9))
        v, i = ops.topk(np, x, k)
        want = np.argsort(-x, axis=-1, kind="stable")[:, :k]
        np.testing.assert_array_equal(i, want)
        np.testing.assert_array_equal(v, np.take_along_axis(x, want, -1))
        vt, _ = torch.topk(torch.from_numpy(x), k)  # same values as torch (its tie order is unspecified)
        np.testing.assert_array_equal(v, vt.numpy())


@pytest.mark.parametrize("opts", [dict(), dict(num_beams=3, num_return_sequences=2)])
def test_one_new_token(model, batch, opts):
    seqs, _, _ = assert_same_as_hf(model, *batch, 1, **opts)
    assert all(len(s) == 1 for s in seqs)


@pytest.mark.parametrize("opts", [dict(), dict(repetition_penalty=1.3),
                                  dict(num_beams=3, num_return_sequences=2, length_penalty=0.5),
                                  dict(num_beams=2, no_repeat_ngram_size=2)])
def test_token_scores_match_hf_transition_scores(model, batch, opts):
    ids, mask = batch
    T = 10
    s = drive(model, ids, mask, config(max_new_tokens=T, output_scores=True, **opts), T)
    seqs, _ = s.result()
    out = hf_generate(model, ids, mask, T, **opts)
    assert seqs == hf_sequences(out)
    if "num_beams" in opts:
        trans = model.compute_transition_scores(out.sequences, out.scores, out.beam_indices)
    else:
        trans = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    for n, (sq, ts) in enumerate(zip(seqs, s.token_scores())):
        assert len(ts) == len(sq)
        # logits of the full-prefix stepper and HF's cached decoder differ by ~1e-5 of +-64
        np.testing.assert_allclose(ts, trans[n, : len(sq)].numpy(), rtol=1e-4, atol=5e-4)
    assert strategy_for(config(max_new_tokens=T, **opts), 3, T).token_scores() is None


def test_capture_safe_primitives_equal_sort_based():
    """The sort-free code cupy runs (CUDA-graph capturable) equals the numpy sort-based code."""
    from t5rt.decoding import ops

    rs = np.random.default_rng(5)
    for trial in range(60):
        n, m = int(rs.integers(1, 5)), int(rs.integers(3, 3000))
        k = int(min(m - 2, rs.integers(1, 10)))
        x = rs.integers(-4, 4, (n, m)).astype(np.float32) if trial % 2 else \
            (rs.standard_normal((n, m)) * 30).astype(np.float32)
        if trial % 3 == 0:
            x[:, rs.integers(0, m, 5)] = -np.inf
        v1, i1 = ops.topk(np, x, k)
        v2, i2 = ops.topk_capture_safe(np, x, k)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(v1, v2)
        np.testing.assert_array_equal(ops.kth_largest_key_capture_safe(np, x, k),
                                      ops.sortable_key(np, ops.kth_largest(np, x, k)))
        for min_keep in (1, 2):
            for top_p in (0.3, 0.8, 0.95):
                cut = float(np.float32(1 - top_p))
                a = ops.top_p_drop_mask(np, x, cut, min_keep)
                b = ops.top_p_drop_mask_capture_safe(np, x, cut, min_keep)
                # float32 cumsum (HF) vs float64 sums: only tokens sitting on the cut may differ
                order = np.argsort(x, axis=-1, kind="stable")
                cum = np.empty_like(x)
                np.put_along_axis(cum, order, np.cumsum(ops.softmax(np, np.take_along_axis(x, order, -1)), -1), -1)
                assert (np.abs(cum[a != b] - cut) < 1e-5).all(), (trial, min_keep, top_p)
                assert (a != b).sum() <= n
    x = np.array([[-np.inf, -3.5, -0.0, 0.0, 1e-30, 2.0, np.inf]], dtype=np.float32)
    key = ops.sortable_key(np, x)
    assert (np.diff(key[0]) >= 0).all() and key.min() >= 0 and key.max() < 2**32


def test_first_input_gives_each_chunk_its_own_stream():
    """Rows 3..5 of a 6-row request sampled as a second chunk (offset 3) = rows 3..5 sampled together."""
    rs = np.random.default_rng(1)
    logits = (rs.standard_normal((12, V)) * 2).astype(np.float32)  # 6 inputs x 2 samples

    def sample(lg, offset):
        s = make_strategy(np, config(do_sample=True, seed=5, top_k=0, max_new_tokens=3,
                                     num_return_sequences=2), batch=lg.shape[0] // 2,
                          vocab_size=V, max_new_tokens=3, pad_token_id=PAD, eos_token_id=EOS,
                          decoder_start_token_id=START, first_input=offset)
        s.step(lg)
        return s.tokens.copy()

    whole = sample(logits, 0)
    np.testing.assert_array_equal(sample(logits[6:], 3), whole[6:])
    assert (sample(logits[6:], 0) != whole[6:]).any()
