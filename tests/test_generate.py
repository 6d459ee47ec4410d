"""t5rt.load + generate() on the CPU against Hugging Face generate(), same weights, fp32.

Every comparison runs the real exporter and the real ONNX Runtime engine; the reference is
`transformers` generate() on the same model.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import t5rt

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import export_tiny as _export, hf_generate as _hf, make_t5, padded_inputs as _inputs  # noqa: E402


@pytest.fixture(scope="module")
def v11(tmp_path_factory):
    model = make_t5(11, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    return model, _export(model, tmp_path_factory, "v11")


@pytest.fixture(scope="module")
def v10_inplace(tmp_path_factory):
    # num_decoder_layers != num_layers (HF 5.17 generate breaks when the decoder is the deeper one)
    model = make_t5(12, feed_forward_proj="relu", tie_word_embeddings=True, num_layers=3, num_decoder_layers=2)
    return model, _export(model, tmp_path_factory, "v10", cache_update="inplace", opset=24)


@pytest.fixture(scope="module")
def rt_v11(v11):
    return t5rt.load(v11[1], backend="ort", device="cpu")


@pytest.mark.parametrize("new", [1, 20])
def test_greedy_matches_hf_padded_batch(v11, rt_v11, new):
    model, _ = v11
    ids, mask = _inputs(1)
    ref, _ = _hf(model, ids, mask, max_new_tokens=new, num_beams=1)
    out = rt_v11.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new)
    assert out.sequences == ref


def test_greedy_inplace_cache_form_matches_hf(v10_inplace):
    model, d = v10_inplace
    rt = t5rt.load(d, backend="ort", device="cpu")
    assert rt.manifest.cache_update == "inplace"
    ids, mask = _inputs(2, lens=(5, 9))
    ref, _ = _hf(model, ids, mask, max_new_tokens=30, min_new_tokens=30, num_beams=1)
    assert rt.generate(input_ids=ids, attention_mask=mask, max_new_tokens=30, min_new_tokens=30).sequences == ref


def test_batch_equals_one_at_a_time(rt_v11):
    ids, mask = _inputs(3, lens=(4, 11, 8, 2))
    both = rt_v11.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, num_beams=2).sequences
    single = []
    for i in range(ids.shape[0]):
        n = int(mask[i].sum())
        single += rt_v11.generate(input_ids=ids[i:i + 1, :n], max_new_tokens=16, num_beams=2).sequences
    assert both == single


@pytest.mark.parametrize(
    "beam",
    [
        dict(num_beams=2, length_penalty=1.0, early_stopping=False),
        dict(num_beams=3, length_penalty=0.6, early_stopping=True, num_return_sequences=2),
        dict(num_beams=4, length_penalty=2.0, early_stopping="never", num_return_sequences=4),
    ],
)
def test_beam_search_matches_hf(v11, rt_v11, beam):
    model, _ = v11
    ids, mask = _inputs(4)
    ref, hf = _hf(model, ids, mask, max_new_tokens=24, **beam)
    out = rt_v11.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, **beam)
    assert out.sequences == ref
    np.testing.assert_allclose(out.scores, hf.sequences_scores.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "proc",
    [
        dict(repetition_penalty=1.7),
        dict(no_repeat_ngram_size=2),
        dict(min_new_tokens=20),
        dict(bad_words_ids=[[5], [7, 8]]),
    ],
)
def test_processors_match_hf_greedy(v11, rt_v11, proc):
    model, _ = v11
    ids, mask = _inputs(5)
    ref, _ = _hf(model, ids, mask, max_new_tokens=24, num_beams=1, **proc)
    assert rt_v11.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, **proc).sequences == ref


def test_sampling_seeded_and_topk1_is_greedy(rt_v11):
    ids, mask = _inputs(6)
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=True)
    a = rt_v11.generate(seed=3, top_k=0, **kw).sequences
    assert a == rt_v11.generate(seed=3, top_k=0, **kw).sequences
    assert a != rt_v11.generate(seed=4, top_k=0, **kw).sequences
    greedy = rt_v11.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16).sequences
    assert rt_v11.generate(seed=9, top_k=1, **kw).sequences == greedy
    many = rt_v11.generate(seed=1, num_return_sequences=3, **kw).sequences
    assert len(many) == 3 * ids.shape[0]


@pytest.mark.parametrize("how", [dict(), dict(num_beams=3, num_return_sequences=2, output_scores=True)])
def test_strategy_reused_across_requests(v11, how):
    """A request of the same shape and config reuses the last one's strategy, reset in place."""
    model, d = v11
    rt = t5rt.load(d, backend="ort", device="cpu", inflight=False)  # the direct path's strategy cache
    kw = dict(max_new_tokens=18, min_new_tokens=5, **how)
    runs = []
    for seed in (21, 22, 21):  # A, B, A: B's state must not leak into A's second run
        ids, mask = _inputs(seed, lens=(9, 4))
        out = rt.generate(input_ids=ids, attention_mask=mask, **kw)
        hf_kw = {k: v for k, v in kw.items() if k != "output_scores"}
        assert out.sequences == _hf(model, ids, mask, **hf_kw)[0]
        runs.append((out.sequences, out.scores, out.token_scores))
    assert runs[0] == runs[2]
    assert len(rt._strategies) == 1
    # a request of the same shape with a user logits processor gets its own strategy: the hook runs
    calls = []

    def ban_greedy_choice(history, scores, step):
        calls.append(step)
        scores = scores.copy()
        scores[:, 5] = 1e4  # force token 5
        return scores

    out = rt.generate(input_ids=ids, attention_mask=mask, logits_processors=[ban_greedy_choice], **kw)
    assert calls and out.sequences[0] == [5] * kw["max_new_tokens"]
    assert len(rt._strategies) == 1  # and it is not kept
    unseeded = dict(input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=True)
    assert rt.generate(**unseeded).sequences != rt.generate(**unseeded).sequences  # fresh seed each


def test_user_logits_processor_hook(rt_v11):
    ids, mask = _inputs(7, lens=(6,))
    seen = []

    def ban_all_but(history, logits, t):  # research hook: array in, array out
        seen.append((history.shape, t))
        out = logits.copy()
        out[:, :] = -np.inf
        out[:, 42] = 0.0
        return out

    out = rt_v11.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, logits_processors=[ban_all_but])
    assert out.sequences == [[42] * 5]
    assert [t for _, t in seen] == list(range(5))


@pytest.mark.parametrize(
    "bad, needle",
    [
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(max_new_tokens=10_000), "max_new_tokens"),
        (dict(min_new_tokens=-2), "min_new_tokens"),
        (dict(temprature=0.5), "unknown generation option"),
    ],
)
def test_invalid_options_raise_and_runtime_keeps_working(rt_v11, bad, needle):
    ids, mask = _inputs(8, lens=(5,))
    with pytest.raises(t5rt.InvalidOptionError, match=needle):
        rt_v11.generate(input_ids=ids, attention_mask=mask, **bad)
    assert len(rt_v11.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3).sequences) == 1


def test_bad_inputs_raise(rt_v11):
    with pytest.raises(t5rt.InvalidInputError, match="empty"):
        rt_v11.generate(input_ids=[])
    with pytest.raises(t5rt.InvalidInputError, match="at most 64"):
        rt_v11.generate(input_ids=[[5] * 65])
    with pytest.raises(t5rt.InvalidInputError, match="outside"):
        rt_v11.generate(input_ids=[[5, 10_000]])
    with pytest.raises(t5rt.InvalidInputError, match="tokenizer"):
        rt_v11.generate(["no tokenizer in this export"])
    assert rt_v11.generate(input_ids=[[5, 6, 1]], max_new_tokens=2).sequences


def test_not_an_export(tmp_path):
    with pytest.raises(t5rt.NotAnExportError, match="manifest.json"):
        t5rt.load(tmp_path)
    with pytest.raises(t5rt.NotAnExportError, match="not a directory"):
        t5rt.load(tmp_path / "missing")


def test_generate_works_with_torch_unimportable(v11):
    model, d = v11
    ids, mask = _inputs(9, lens=(6, 3))
    ref, _ = _hf(model, ids, mask, max_new_tokens=12, num_beams=1)
    code = textwrap.dedent(f"""
        import sys, json
        sys.modules["torch"] = None  # any import of torch now fails
        import numpy as np, t5rt
        rt = t5rt.load({str(d)!r}, backend="ort", device="cpu")
        ids = np.array({ids.tolist()}); mask = np.array({mask.tolist()})
        print(json.dumps(rt.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12).sequences))
        assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    import json

    assert json.loads(res.stdout.strip().splitlines()[-1]) == ref


def test_output_scores_and_beam_sampling(v11, rt_v11):
    model, _ = v11
    ids, mask = _inputs(10, lens=(6, 9))
    out = rt_v11.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, output_scores=True)
    _, hf = _hf(model, ids, mask, max_new_tokens=12, num_beams=1)
    ref = model.compute_transition_scores(hf.sequences, hf.scores, normalize_logits=True).numpy()
    for i, (seq, tok) in enumerate(zip(out.sequences, out.token_scores)):
        assert len(tok) == len(seq)
        # logits are ~1e2 here, so fp32 rounding between ORT and torch shows at ~1e-4
        np.testing.assert_allclose(tok, ref[i, : len(seq)], rtol=1e-3, atol=2e-3)
        assert abs(sum(tok) - out.scores[i]) < 1e-3
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=True, num_beams=3,
              num_return_sequences=2)
    a = rt_v11.generate(seed=7, **kw).sequences
    assert len(a) == 4 and a == rt_v11.generate(seed=7, **kw).sequences


def test_load_options_precedence(v11):
    _, d = v11
    opts = t5rt.RuntimeOptions(backend="ort", device="cpu", done_check_interval=3)
    rt = t5rt.load(d, options=opts, max_batch=2)
    assert (rt.options.backend, rt.options.device, rt.options.done_check_interval, rt.options.max_batch) == \
        ("ort", "cpu", 3, 2)
    assert opts.max_batch == 64  # the caller's object is left alone
    assert t5rt.load(d, device="cpu", options=opts).options.device == "cpu"
    with pytest.raises(t5rt.InvalidOptionError, match="cuda_graph"):
        t5rt.load(d, device="cpu", cuda_graph=False)
    with pytest.raises(t5rt.InvalidOptionError, match="backend"):
        t5rt.load(d, backend="tensorflow", device="cpu")


def test_mt5_and_umt5(tmp_path_factory):
    """mT5 (its own model class, gated-gelu, untied-era config) exports and generates like HF; UMT5,
    whose every layer owns a position bias, is refused with a clear error."""
    import torch
    from transformers import MT5Config, MT5ForConditionalGeneration, UMT5Config, UMT5ForConditionalGeneration

    from conftest import TINY, export_tiny

    torch.manual_seed(31)
    model = MT5ForConditionalGeneration(MT5Config(**dict(TINY, feed_forward_proj="gated-gelu"))).eval()
    with torch.no_grad():  # widen the random init as conftest.make_t5 does (else it emits pad ids only)
        for p in model.parameters():
            p.mul_(4.0)
    rt = t5rt.load(export_tiny(model, tmp_path_factory, "mt5"), backend="ort", device="cpu")
    ids, mask = _inputs(11, lens=(5, 9))
    for beams in (1, 3):
        ref, _ = _hf(model, ids, mask, max_new_tokens=16, num_beams=beams)
        assert rt.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, num_beams=beams).sequences == ref
    umt5 = UMT5ForConditionalGeneration(UMT5Config(**TINY)).eval()
    with pytest.raises(t5rt.T5rtError, match="(?i)umt5|position bias"):
        export_tiny(umt5, tmp_path_factory, "umt5")


def test_one_dimensional_inputs(rt_v11):
    ids, mask = _inputs(12, lens=(6,))
    two_d = rt_v11.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4).sequences
    assert rt_v11.generate(input_ids=ids[0], attention_mask=mask[0], max_new_tokens=4).sequences == two_d
    assert rt_v11.generate(input_ids=ids[0].tolist(), max_new_tokens=4).sequences == two_d
