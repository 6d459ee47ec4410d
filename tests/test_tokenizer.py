"""t5rt.tokenizer.T5Tokenizer against Hugging Face's T5Tokenizer on T5's real spiece.model.

HF reference: `transformers.T5Tokenizer.from_pretrained(dir with spiece.model)` (in transformers 5
`T5Tokenizer(vocab_file=...)` silently builds a 104-token placeholder vocabulary, so the
reference must be loaded from a directory).
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import unicodedata

import numpy as np
import pytest

from conftest import SPIECE

from t5rt.errors import InvalidInputError, InvalidOptionError, T5rtError
from t5rt.tokenizer import NoTokenizerError, T5Tokenizer

pytestmark = pytest.mark.skipif(not SPIECE.is_file(), reason=f"{SPIECE} is missing")

FIXED = [
    "", " ", "\t\n", "Hello world", "translate English to German: That is good.",
    "summarize: studies have shown that owning a dog is good for you",
    "  leading, trailing and   inner   runs of spaces  ", "tabs\tand\nnew\r\nlines\x0bvt",
    "Über naïve café — 日本語 😀 (unknown pieces)", "I'm ﬁne, ½ ① ＡＢＣ ㎏ ℃ ™ Ǆ",
    "x <extra_id_0> y<extra_id_99>z", "<extra_id_1><extra_id_10><extra_id_0>", "<extra_id_100> is not a sentinel",
    "<<extra_id_3>>", "<pad> </s> <unk>", "hello</s>world", "a</s>", "</s>",
    "nbsp\xa0ideographic\u3000em\u2003nel\x85zwsp\u200bline\u2028sep", "\ufeffbom", "soft\xadhyphen",
    "numbers 3.14159 and 1,000,000 and 2024-01-01", "emoji 🎉🎉 and CJK 中文字符 and Ελληνικά Русский",
    "▁ already marked ▁▁ pieces", "quotes \"double\" 'single' `back` «guillemets»",
    "a" * 300, "The quick brown fox jumps over the lazy dog. " * 8,
]


def _fuzz(n: int, seed: int = 0) -> list[str]:
    rnd = random.Random(seed)
    alphabet = list("abcdefgh XYZ.,!?'\"-:;()0123456789  \t\n") + [
        "<extra_id_7>", "<extra_id_42>", "</s>", "<pad>", "<unk>", "<", ">", "extra_id_", "é", "ß", "日", "😀",
        "\xa0", "\u3000", "ﬁ", "①", "\u200b", "\u2028", "\x85", "\x1f", "▁", "Ⅻ", "\ufeff", "\xad", "ü", "ø", "ı",
        " the", " translate", "ing", "tion", "Ω", "ﾃ", "ｽ", "\x00", "\x7f",
    ]
    return ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 24))) for _ in range(n)]


TEXTS = FIXED + _fuzz(400)


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("spm")
    shutil.copy(SPIECE, d / "spiece.model")
    return d


@pytest.fixture(scope="module")
def hf(spm_dir):
    transformers = pytest.importorskip("transformers")
    tok = transformers.T5Tokenizer.from_pretrained(str(spm_dir))
    assert len(tok) == 32100, "HF reference did not read spiece.model"
    return tok


@pytest.fixture(scope="module")
def tok(spm_dir):
    return T5Tokenizer(spm_dir / "spiece.model")


def test_special_ids_match_hf(tok, hf):
    assert tok.vocab_size == len(tok) == len(hf) == 32100
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (hf.pad_token_id, hf.eos_token_id,
                                                                      hf.unk_token_id) == (0, 1, 2)
    for n in (0, 1, 42, 99):
        assert tok.sentinel_id(n) == hf.convert_tokens_to_ids(f"<extra_id_{n}>") == 32099 - n
    with pytest.raises(InvalidOptionError):
        tok.sentinel_id(100)


def test_encode_matches_hf(tok, hf):
    bad = [(t, hf(t).input_ids, tok.encode(t)) for t in TEXTS if hf(t).input_ids != tok.encode(t)]
    assert not bad, f"{len(bad)} of {len(TEXTS)} texts differ, first: {bad[:3]}"
    assert tok.encode("Hello world", add_eos=False) == hf("Hello world").input_ids[:-1]


@pytest.mark.parametrize("skip", [True, False])
def test_decode_matches_hf(tok, hf, skip):
    seqs = [hf(t).input_ids for t in TEXTS]
    rnd = random.Random(1)
    specials = [0, 1, 2, 32000, 32099, 32050]
    for _ in range(200):  # arbitrary model output: any ids, specials anywhere, ids past the tokenizer (vocab 32128)
        seqs.append([rnd.choice([rnd.randrange(32128), rnd.choice(specials), rnd.randrange(3, 40)])
                     for _ in range(rnd.randint(0, 30))])
    seqs += [[3, 3, 3, 8774, 3, 3, 296, 3], [1, 0, 8774, 0], [0, 3, 8774], [32099, 3, 8774], []]
    got = [tok.decode(s, skip_special_tokens=skip) for s in seqs]
    want = [hf.decode(s, skip_special_tokens=skip) for s in seqs]
    bad = [(s, w, g) for s, w, g in zip(seqs, want, got) if w != g]
    assert not bad, f"{len(bad)} of {len(seqs)} decodes differ, first: {bad[:3]}"
    assert tok.batch_decode(seqs[:20], skip_special_tokens=skip) == \
        hf.batch_decode(seqs[:20], skip_special_tokens=skip)
    assert tok.decode(np.asarray(seqs[5], dtype=np.int64), skip) == want[5]


def test_batch_matches_hf(tok, hf):
    batch = ["Hello world", "translate English to German: That is good.", "", "x <extra_id_0> y"]
    ids, mask = tok(batch)
    ref = hf(batch, padding=True, return_tensors="np")
    assert ids.dtype == mask.dtype == np.int64
    np.testing.assert_array_equal(ids, ref["input_ids"])
    np.testing.assert_array_equal(mask, ref["attention_mask"])
    ids, mask = tok.encode_batch(batch, max_length=4, truncation=True)
    ref = hf(batch, padding=True, max_length=4, truncation=True, return_tensors="np")
    np.testing.assert_array_equal(ids, ref["input_ids"])
    np.testing.assert_array_equal(mask, ref["attention_mask"])
    ids, _ = tok("just one")  # a bare str is a batch of one
    assert ids.tolist() == [hf("just one").input_ids]


def test_batch_errors(tok):
    with pytest.raises(InvalidInputError, match="input 1 is .* tokens long"):
        tok.encode_batch(["short", "much longer than four tokens, surely"], max_length=4)
    with pytest.raises(InvalidInputError, match="empty"):
        tok.encode_batch([])
    with pytest.raises(InvalidOptionError, match="max_length"):
        tok.encode_batch(["a"], max_length=0)
    with pytest.raises(InvalidInputError, match="str"):
        tok.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match=">= 0"):
        tok.decode([5, -1])
    with pytest.raises(InvalidInputError, match="batch_decode"):
        tok.decode(np.zeros((2, 3), dtype=np.int64))


def test_from_dir(spm_dir, tmp_path, hf):
    tok = T5Tokenizer.from_dir(spm_dir)
    assert tok.encode("Hello world") == hf("Hello world").input_ids
    (tmp_path / "cfg").mkdir()
    shutil.copy(SPIECE, tmp_path / "cfg" / "spiece.model")
    (tmp_path / "cfg" / "tokenizer_config.json").write_text('{"extra_ids": 10}')
    assert T5Tokenizer.from_dir(tmp_path / "cfg").vocab_size == 32010
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoTokenizerError, match="no tokenizer") as e:
        T5Tokenizer.from_dir(tmp_path / "empty")
    assert isinstance(e.value, T5rtError)
    with pytest.raises(NoTokenizerError, match="not a directory"):
        T5Tokenizer.from_dir(tmp_path / "missing")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "spiece.model").write_bytes(b"not a model")
    with pytest.raises(NoTokenizerError, match="not a readable"):
        T5Tokenizer.from_dir(tmp_path / "broken")


def test_from_dir_tokenizer_json(tmp_path, hf):
    pytest.importorskip("tokenizers")
    d = tmp_path / "tj"
    hf.save_pretrained(str(d))
    (d / "spiece.model").unlink(missing_ok=True)
    assert (d / "tokenizer.json").is_file()
    tok = T5Tokenizer.from_dir(d)
    assert tok.vocab_size == len(hf)
    texts = FIXED + _fuzz(100, seed=3)
    assert [tok.encode(t) for t in texts] == [hf(t).input_ids for t in texts]
    seqs = [hf(t).input_ids for t in texts]
    assert tok.batch_decode(seqs) == hf.batch_decode(seqs, skip_special_tokens=True)


def _quirk_free(t: str) -> bool:
    return not any(unicodedata.category(c).startswith("M") for c in t)


def test_known_hf_fast_quirks_follow_sentencepiece(tok):
    """Where HF's Rust normalizer differs from sentencepiece, t5rt gives sentencepiece's answer.

    A combining mark after a character the normalizer rewrites ("①" + U+0301) is dropped by
    HF tokenizers' Precompiled normalizer (it maps the longest prefix of the grapheme) but kept
    by sentencepiece (and by T5's original preprocessing), which t5rt follows.
    """
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(SPIECE))
    for t in ["①\u0301", "\xa0\u0301x"]:
        assert not _quirk_free(t)
        assert tok.encode(t) == sp.encode(t) + [1]


def test_import_is_torch_free(tok):
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
            "from t5rt.tokenizer import T5Tokenizer\n"
            f"print(T5Tokenizer({str(SPIECE)!r}).encode('Hello world'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tok.encode("Hello world"))
