"""Property-based fuzz of generate()'s inputs and options (hypothesis).

For any input and option values: generate() either returns a valid result or raises a
t5rt.T5rtError (never another exception, never a crash), and afterwards the runtime still
answers fixed probe requests (greedy, beam search, seeded sampling) exactly as it did before
any fuzzing: a refused request leaves no state behind.

The model is a tiny T5 with a 32128-token vocabulary (t5-small's), so that huge beam counts
pass the "2 x beams <= vocab" rule and reach the memory estimate, which must refuse them in
well under a second (the issue: 5000 beams ran for 30 s into a raw MemoryError).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

import t5rt

pytest.importorskip("torch")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import export_tiny, make_t5, tiny_spiece  # noqa: E402

VOCAB = 32128
PROBES = [
    dict(input_ids=[[5, 6, 7, 1], [9, 1]], max_new_tokens=6),
    dict(input_ids=[[11, 12, 13, 1]], num_beams=3, num_return_sequences=2, max_new_tokens=6),
    dict(input_ids=[[5, 6, 7, 1]], do_sample=True, seed=7, top_k=20, max_new_tokens=6),
    dict(texts=["hello world", "the lazy dog"], max_new_tokens=5),
]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    model = make_t5(31, vocab_size=VOCAB)
    spiece = tiny_spiece(tmp_path_factory.mktemp("spiece") / "spiece.model")
    return export_tiny(model, tmp_path_factory, "fuzz", extra_files=[spiece], max_output_len=16)


def probe(rt):
    out = []
    for p in PROBES:
        p = dict(p)
        texts = p.pop("texts", None)
        r = rt.generate(texts, **p)
        out.append((r.sequences, r.scores))
    return out


@pytest.fixture(scope="module")
def rt(export_dir):
    return t5rt.load(export_dir, backend="ort", device="cpu", threads=1)


@pytest.fixture(scope="module")
def solo(export_dir):
    """The probes' answers from a runtime that never saw a bad request."""
    return probe(t5rt.load(export_dir, backend="ort", device="cpu", threads=1))


# -- strategies ------------------------------------------------------------------------------------

ids_ok = st.integers(2, 400)
# numbers of every kind, but no int between 41 and 2**62: a valid huge beam or sequence count
# would really run (slowly) on a machine with the memory for it
number = st.one_of(
    st.integers(-3, 40), st.integers(2**62, 2**80), st.integers(-(2**80), -1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.5, 1.0, 5.0, float("nan"), float("inf"), True, False, np.int64(3), np.float32(2.0),
                     np.uint64(2**63), np.bool_(True)]),
)
junk = st.sampled_from([None, "123", b"\x00\x01", {"a": 1}, [[]], [], object(), (), "beam", np.array([])])
row = st.lists(st.one_of(ids_ok, number), min_size=0, max_size=6)
id_lists = st.one_of(
    st.lists(ids_ok, min_size=1, max_size=6),                       # one flat input
    st.lists(st.lists(ids_ok, min_size=1, max_size=6), min_size=1, max_size=3),  # ragged batch
    st.lists(row, min_size=1, max_size=3),                          # anything in the rows
    row,
)


@st.composite
def arrays(draw):
    dtype = draw(st.sampled_from([np.int64, np.int32, np.uint8, np.uint64, np.float32, np.float64, np.bool_,
                                  np.float16, object, np.str_]))
    shape = draw(st.one_of(st.just(()), st.tuples(st.integers(0, 5)), st.tuples(st.integers(0, 3), st.integers(0, 5)),
                           st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 3))))
    values = draw(st.lists(st.one_of(ids_ok, st.integers(-2, 40), st.sampled_from([0.5, float("nan"), 1e30])),
                           min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    with np.errstate(all="ignore"):
        try:
            return np.array(values, dtype=np.float64).astype(dtype).reshape(shape)
        except (ValueError, OverflowError, TypeError):
            return np.array(values, dtype=object).reshape(shape)


input_ids = st.one_of(id_lists, arrays(), junk, st.text(max_size=5))
masks = st.one_of(st.none(), st.lists(st.lists(st.sampled_from([0, 1, 1, 1, 0.5, 2, True, float("nan"), -1]),
                                                max_size=6), min_size=1, max_size=3), arrays(), junk)
texts = st.one_of(
    st.text(alphabet=st.characters(codec=None, exclude_categories=()), min_size=0, max_size=12),
    st.lists(st.text(max_size=10), min_size=0, max_size=3),
    st.sampled_from(["hello world", "\udcff bytes", "a\x00b", "   ", "<extra_id_0> the dog", "</s>"]),
    junk,
)


def _nan(h, s, t):
    return np.full_like(s, np.nan)


def _inf(h, s, t):
    out = s.copy()
    out[:, 3] = np.inf
    return out


def _ban_all(h, s, t):
    return np.full_like(s, -np.inf)


def _shift(h, s, t):
    return s[:, ::-1].copy()


def _raise(h, s, t):
    raise RuntimeError("user hook failed")


processors = st.sampled_from([
    [], [_shift], [_nan], [_inf], [_ban_all], [_raise], [lambda h, s, t: s[:, :10]],
    [lambda h, s, t: s.astype(np.int32)], [lambda h, s, t: s.tolist()], [lambda h, s, t: None],
    [lambda h, s, t: s.astype(np.float64)], _shift, "x", [1], (_shift,),
])

# valid values of every option (kept cheap: few beams and tokens) ...
VALID = {
    "max_new_tokens": st.one_of(st.integers(1, 6), st.just(np.int64(3))),
    "min_new_tokens": st.integers(0, 2),
    "num_beams": st.integers(1, 3),
    "do_sample": st.booleans(),
    "temperature": st.floats(0.3, 2.0),
    "top_k": st.one_of(st.none(), st.integers(0, 60)),
    "top_p": st.floats(0.2, 1.0),
    "repetition_penalty": st.floats(0.7, 1.5),
    "no_repeat_ngram_size": st.integers(0, 3),
    "length_penalty": st.floats(-1.0, 2.0),
    "early_stopping": st.sampled_from([True, False, "never"]),
    "bad_words_ids": st.one_of(st.none(), st.lists(st.lists(st.integers(2, 400), min_size=1, max_size=2),
                                                   min_size=1, max_size=2)),
    "seed": st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    "output_scores": st.booleans(),
    "logits_processors": st.sampled_from([[], [_shift]]),
}
# ... and hostile ones: at most one per request, so that it gets past the others
HOSTILE = {
    "max_new_tokens": st.one_of(number, junk, st.integers(17, 10**6)),
    "min_new_tokens": st.one_of(number, junk),
    "num_beams": st.one_of(st.sampled_from([0, -1, 2.0, "4", np.int32(2), VOCAB // 2 + 1]), number, junk),
    "num_return_sequences": st.one_of(st.integers(1, 3), number, junk),
    "do_sample": st.one_of(st.sampled_from([np.bool_(True), 1, "yes", None]), number),
    "temperature": st.one_of(number, junk),
    "top_k": st.one_of(number, junk),
    "top_p": st.one_of(number, junk),
    "repetition_penalty": st.one_of(number, junk, st.sampled_from([1e-45, 3e38])),
    "no_repeat_ngram_size": st.one_of(number, junk),
    "length_penalty": st.one_of(number, junk),
    "early_stopping": st.one_of(st.sampled_from(["always", 1, None, np.array([1, 2])]), number),
    "bad_words_ids": st.one_of(st.lists(st.lists(st.one_of(st.integers(-2, 400), number), max_size=3), max_size=3),
                               junk),
    "seed": st.one_of(st.integers(2**64, 2**80), st.integers(-5, -1), number, junk),
    "output_scores": st.one_of(number, junk),
    "logits_processors": processors,
    "config": st.sampled_from([None, t5rt.GenerationConfig(), t5rt.GenerationConfig(num_beams=2), "beam", 5, {}]),
    "max_new_tokenz": st.integers(),  # an unknown option
}


@st.composite
def options(draw):
    opts = draw(st.fixed_dictionaries({}, optional=VALID))
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted(HOSTILE)))
        opts[key] = draw(HOSTILE[key])
    opts.setdefault("max_new_tokens", 4)
    return opts


def check_valid(out, beams: bool) -> None:
    assert isinstance(out, t5rt.GenerateOutput)
    assert isinstance(out.sequences, list) and out.sequences
    for s in out.sequences:
        # greedy and sampling make at least one token; beam search may return none, as Hugging
        # Face does, when an extreme finite length_penalty ranks every hypothesis below its -1e9
        # placeholder
        assert isinstance(s, list) and (beams or len(s) >= 1)
        assert all(type(t) is int and 0 <= t < VOCAB for t in s)
    assert len(out.scores) == len(out.sequences) and all(isinstance(x, float) for x in out.scores)
    assert out.texts is not None and len(out.texts) == len(out.sequences)


def run_one(rt, solo, call, opts) -> None:
    try:
        out = call()
    except t5rt.T5rtError as e:
        assert str(e)  # every refusal says something
    else:
        kw = {k: v for k, v in opts.items() if k != "config"}
        check_valid(out, t5rt.GenerationConfig.from_options(opts.get("config"), **kw).num_beams > 1)
    assert probe(rt) == solo


def fuzz(n: int):
    return settings(max_examples=n, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@fuzz(60)
@given(ids=input_ids, mask=masks, opts=options())
def test_fuzz_input_ids(rt, solo, ids, mask, opts):
    run_one(rt, solo, lambda: rt.generate(input_ids=ids, attention_mask=mask, **opts), opts)


def _batch(n: int) -> list[list[int]]:
    return [[5 + i, 6, 7, 1][: 4 - i % 2] for i in range(n)]


@fuzz(40)
@given(opts=options(), batch=st.integers(1, 3))
def test_fuzz_options(rt, solo, opts, batch):
    run_one(rt, solo, lambda: rt.generate(input_ids=_batch(batch), **opts), opts)


@pytest.mark.parametrize("key", sorted(HOSTILE))
def test_fuzz_each_option_hostile(rt, solo, key):
    """Every option in turn gets hostile values while the others are valid."""
    @fuzz(10)
    @given(opts=st.fixed_dictionaries({}, optional=VALID), value=HOSTILE[key], batch=st.integers(1, 2))
    def one(opts, value, batch):
        opts = dict(opts, **{key: value})
        opts.setdefault("max_new_tokens", 3)
        run_one(rt, solo, lambda: rt.generate(input_ids=_batch(batch), **opts), opts)

    one()


@fuzz(40)
@given(txt=texts, opts=options())
def test_fuzz_texts(rt, solo, txt, opts):
    run_one(rt, solo, lambda: rt.generate(txt, **opts), opts)


# -- the issue's cases, each a clear T5rtError -----------------------------------------------------

def _issue_cases():
    ids = [[5, 6, 7, 1]]
    return [
        ("length_penalty=nan", dict(input_ids=ids, num_beams=2, length_penalty=float("nan")), "length_penalty"),
        ("wrong-shape processor", dict(input_ids=ids, logits_processors=[lambda h, s, t: s[:, :3]]), "shape"),
        ("nan processor, sampling", dict(input_ids=ids, do_sample=True, logits_processors=[_nan]), "nan"),
        ("inf processor, sampling", dict(input_ids=ids, do_sample=True, logits_processors=[_inf]), "inf"),
        ("nan processor, beam", dict(input_ids=ids, num_beams=2, logits_processors=[_nan]), "nan"),
        ('input_ids="123"', dict(input_ids="123"), "input_ids"),
        ("lone surrogate", dict(texts="caf\udce9"), "surrogate"),
        ("seed=2**70", dict(input_ids=ids, seed=2**70), "seed"),
        ("nan id", dict(input_ids=[[5.0, float("nan"), 1.0]]), "nan"),
        ("inf id", dict(input_ids=np.array([[5.0, np.inf]])), "inf"),
        ("float id", dict(input_ids=[[5.7, 1]]), "5.7"),
        ("mask 0.5", dict(input_ids=ids, attention_mask=[[1, 0.5, 1, 1]]), "0 or 1"),
        ("mask shape", dict(input_ids=ids, attention_mask=[[1, 1]]), "shape"),
        ('config="beam"', dict(input_ids=ids, config="beam"), "config"),
        ("bare callable", dict(input_ids=ids, logits_processors=_shift), "logits_processors"),
        ("5000 beams x 64 inputs", dict(input_ids=ids * 64, num_beams=5000), "gib"),
    ]


@pytest.mark.parametrize("what, kw, words", _issue_cases(), ids=[c[0] for c in _issue_cases()])
def test_issue_case_is_a_clear_t5rt_error(rt, solo, what, kw, words):
    kw = dict(kw)
    txt = kw.pop("texts", None)
    t0 = time.perf_counter()
    with pytest.raises(t5rt.T5rtError) as e:
        rt.generate(txt, **kw)
    assert time.perf_counter() - t0 < 10, "a refused request must fail fast"
    assert words.lower() in str(e.value).lower()
    assert probe(rt) == solo


def test_numpy_scalars_and_integral_floats_are_accepted(rt):
    ref = rt.generate(input_ids=[[5, 6, 7, 1]], max_new_tokens=5, num_beams=2)
    out = rt.generate(input_ids=np.array([[5.0, 6.0, 7.0, 1.0]]), attention_mask=np.array([[True] * 4]),
                      max_new_tokens=np.int64(5), num_beams=np.int32(2), length_penalty=np.float32(1.0))
    assert out.sequences == ref.sequences


def test_memory_estimate_refuses_before_allocating(export_dir, solo):
    """A limit set in RuntimeOptions refuses what exceeds it (RequestTooLargeError, a MemoryError
    too); what fits still runs and matches the unlimited runtime."""
    from t5rt.runtime.memory import request_bytes

    small = t5rt.load(export_dir, backend="ort", device="cpu", max_request_bytes=64 << 20)
    cfg = t5rt.GenerationConfig(num_beams=8)
    need = request_bytes(small.manifest, cfg, 8, 4, 6)
    assert need > 64 << 20
    with pytest.raises(t5rt.RequestTooLargeError, match="max_request_bytes") as e:
        small.generate(input_ids=[[5, 6, 7, 1]] * 8, num_beams=8, max_new_tokens=6)
    assert isinstance(e.value, MemoryError)
    assert probe(small) == solo
    assert math.isfinite(need)
