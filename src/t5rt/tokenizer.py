"""T5Tokenizer: text <-> token ids with T5's conventions, torch-free, offline (DESIGN.md §5).

Reads T5's sentencepiece model (`spiece.model`) with the `sentencepiece` package and gives
exactly what Hugging Face's `transformers.T5Tokenizer` gives for the same file:

- ids 0, 1, 2 are `<pad>`, `</s>` (eos), `<unk>`; `encode()` appends eos;
- `extra_ids` sentinels follow the sentencepiece vocabulary in reverse order:
  `<extra_id_N>` = sp_size + extra_ids - 1 - N (t5: `<extra_id_0>` = 32099, `<extra_id_99>` = 32000);
- special tokens written in the text (`<pad>`, `</s>`, `<unk>`, `<extra_id_N>`) are matched on the
  raw text and become their ids; the text between them is encoded separately (each piece
  gets sentencepiece's dummy "▁" prefix, as HF's Metaspace pre-tokenizer gives it);
- `decode()` maps ids to pieces, drops special tokens when asked and ids outside the vocabulary,
  and undoes the "▁" marks the way HF's Metaspace decoder does (no clean-up of spaces).

Where a model directory has no spiece.model but a `tokenizer.json`, the `tokenizers` package
(if installed) reads that instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import InvalidInputError, InvalidOptionError, MissingDependencyError, T5rtError

SPIECE_NAME = "spiece.model"
TOKENIZER_JSON_NAME = "tokenizer.json"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
META = "\u2581"  # "▁", sentencepiece's word-boundary mark

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


class NoTokenizerError(T5rtError, FileNotFoundError):
    """A model/export directory holds no tokenizer file t5rt can read."""


class _Codec(Protocol):
    """Text of one segment <-> ids, without eos; the part that differs per tokenizer file."""

    vocab_size: int
    pad_token_id: int
    eos_token_id: int
    unk_token_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str: ...


class _SentencePieceCodec:
    """spiece.model + T5's special tokens, reproducing HF's T5Tokenizer token for token."""

    def __init__(self, path: Path, extra_ids: int):
        try:
            import sentencepiece as spm
        except ImportError:
            raise MissingDependencyError("t5rt's tokenizer", "sentencepiece", "sentencepiece") from None
        if not isinstance(extra_ids, int) or extra_ids < 0:
            raise InvalidOptionError(f"extra_ids={extra_ids!r} is invalid: must be an integer >= 0")
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(str(path))
        except (OSError, RuntimeError) as e:
            raise NoTokenizerError(f"{path} is not a readable sentencepiece model ({e})") from None
        n = self._sp.get_piece_size()
        self._pieces = [self._sp.id_to_piece(i) for i in range(n)]
        # Special tokens: T5's spiece.model has <pad>=0, </s>=1, <unk>=2 as control/unk pieces.
        self.pad_token_id = self._piece_id(PAD, 0)
        self.eos_token_id = self._piece_id(EOS, 1)
        self.unk_token_id = self._sp.unk_id()
        self.vocab_size = n + extra_ids
        self.extra_ids = extra_ids
        # id -> text of every special token (HF: added tokens, all special=True).
        self._special: dict[int, str] = {self.pad_token_id: PAD, self.eos_token_id: EOS, self.unk_token_id: UNK}
        for k in range(extra_ids):
            self._special[n + extra_ids - 1 - k] = f"<extra_id_{k}>"
        by_text = {t: i for i, t in self._special.items()}
        # Longest first so that no token shadows a longer one starting at the same place.
        alternatives = sorted(by_text, key=len, reverse=True)
        self._special_re = re.compile("|".join(re.escape(t) for t in alternatives))
        self._special_by_text = by_text

    def _piece_id(self, piece: str, default: int) -> int:
        i = self._sp.piece_to_id(piece)
        return default if i == self._sp.unk_id() and piece != UNK else i

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        pos = 0
        for m in self._special_re.finditer(text):
            ids += self._encode_plain(text[pos:m.start()])
            ids.append(self._special_by_text[m.group()])
            pos = m.end()
        ids += self._encode_plain(text[pos:])
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        # sentencepiece normalizes (nmt_nfkc), drops extra whitespace and adds the dummy prefix,
        # which is what HF's Precompiled normalizer + WhitespaceSplit + Metaspace do per segment.
        # One difference: U+0085 (NEL) survives the normalizer and is whitespace to HF's
        # WhitespaceSplit (Rust's char::is_whitespace) but not to sentencepiece.
        text = text.replace("\x85", " ")
        return list(self._sp.encode(text, out_type=int)) if text else []

    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        n = len(self._pieces)
        parts: list[str] = []
        for i in ids:
            if i in self._special:
                if skip_special_tokens:
                    continue
                tok = self._special[i]
            elif 0 <= i < n:
                tok = self._pieces[i]
            else:
                continue  # outside the vocabulary (e.g. the model's padded vocab rows): HF drops it
            # HF's Metaspace decoder: "▁" -> " ", except that the first token loses its marks.
            parts.append(tok.replace(META, "") if not parts else tok.replace(META, " "))
        return "".join(parts)


class _TokenizersJsonCodec:
    """A tokenizer.json read by the `tokenizers` package (used when there is no spiece.model)."""

    def __init__(self, path: Path):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise MissingDependencyError(
                f"reading {path.name} (there is no {SPIECE_NAME})", "tokenizers", "tokenizers"
            ) from None
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - the Rust library raises plain Exception
            raise NoTokenizerError(f"{path} is not a readable tokenizer.json ({e})") from None
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

        def tid(tok: str, default: int) -> int:
            i = self._tok.token_to_id(tok)
            return default if i is None else int(i)

        self.pad_token_id, self.eos_token_id, self.unk_token_id = tid(PAD, 0), tid(EOS, 1), tid(UNK, 2)
        # Encode without the post-processor; T5Tokenizer appends eos itself.
        self._tok.no_truncation()
        self._tok.no_padding()

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


class T5Tokenizer:
    """T5 tokenizer: `encode`, batch `__call__` -> numpy (input_ids, attention_mask), `decode`.

        tok = T5Tokenizer("spiece.model")            # or T5Tokenizer.from_dir(export_dir)
        ids, mask = tok(["translate English to German: Hi."])   # [B, S] int64 each
        tok.batch_decode(sequences)                  # -> list[str]
    """

    def __init__(self, spiece_model: str | Path, extra_ids: int = 100):
        self._codec: _Codec = _SentencePieceCodec(Path(spiece_model), extra_ids)
        self.source = Path(spiece_model)

    @classmethod
    def _from_codec(cls, codec: _Codec, source: Path) -> "T5Tokenizer":
        self = cls.__new__(cls)
        self._codec = codec
        self.source = source
        return self

    @classmethod
    def from_dir(cls, directory: str | Path, extra_ids: int | None = None) -> "T5Tokenizer":
        """The tokenizer stored in a model or export directory.

        Uses DIR/spiece.model (extra_ids from DIR/tokenizer_config.json when it says, else 100),
        else DIR/tokenizer.json through the `tokenizers` package; NoTokenizerError if neither.
        """
        d = Path(directory)
        if not d.is_dir():
            raise NoTokenizerError(f"{d} is not a directory; pass a model or export directory")
        spiece = d / SPIECE_NAME
        if spiece.is_file():
            if extra_ids is None:
                extra_ids = _extra_ids_from_config(d / TOKENIZER_CONFIG_NAME)
            return cls(spiece, extra_ids=extra_ids)
        tj = d / TOKENIZER_JSON_NAME
        if tj.is_file():
            return cls._from_codec(_TokenizersJsonCodec(tj), tj)
        raise NoTokenizerError(
            f"{d} has no tokenizer ({SPIECE_NAME} or {TOKENIZER_JSON_NAME}); copy the model's "
            f"{SPIECE_NAME} into it, or pass token ids instead of text"
        )

    # -- special tokens -------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer knows (t5: 32000 pieces + 100 sentinels = 32100)."""
        return self._codec.vocab_size

    def __len__(self) -> int:
        return self._codec.vocab_size

    @property
    def pad_token_id(self) -> int:
        return self._codec.pad_token_id

    @property
    def eos_token_id(self) -> int:
        return self._codec.eos_token_id

    @property
    def unk_token_id(self) -> int:
        return self._codec.unk_token_id

    def sentinel_id(self, n: int) -> int:
        """Id of `<extra_id_n>`."""
        ids = self._codec.encode(f"<extra_id_{n}>")
        if len(ids) != 1:
            raise InvalidOptionError(f"<extra_id_{n}> is not a token of this tokenizer")
        return ids[0]

    # -- text -> ids ----------------------------------------------------------------------
    def encode(self, text: str, add_eos: bool = True) -> list[int]:
        """Token ids of one text, eos appended (as HF's `tokenizer(text).input_ids`)."""
        if not isinstance(text, str):
            raise InvalidInputError(f"expected a str to tokenize, got {type(text).__name__}")
        ids = self._codec.encode(text)
        return ids + [self.eos_token_id] if add_eos else ids

    def encode_batch(
        self, texts: str | Sequence[str], max_length: int | None = None, truncation: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids [B, S] int64, attention_mask [B, S] int64), right padded with pad to the longest.

        A sequence (eos included) longer than `max_length` is cut to its first max_length - 1
        tokens + eos when `truncation`, else InvalidInputError names it.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise InvalidInputError("no texts to tokenize (the batch is empty)")
        if max_length is not None and (not isinstance(max_length, int) or isinstance(max_length, bool)
                                       or max_length < 1):
            raise InvalidOptionError(f"max_length={max_length!r} is invalid: must be a positive integer")
        seqs = []
        for i, t in enumerate(texts):
            ids = self.encode(t)
            if max_length is not None and len(ids) > max_length:
                if not truncation:
                    raise InvalidInputError(
                        f"input {i} is {len(ids)} tokens long (eos included), more than max_length={max_length}; "
                        f"shorten it or pass truncation=True"
                    )
                ids = ids[: max_length - 1] + [self.eos_token_id]
            seqs.append(ids)
        return self.pad(seqs)

    __call__ = encode_batch

    def pad(self, seqs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Right-pad id lists to (input_ids [B, S] int64, attention_mask [B, S] int64)."""
        width = max((len(s) for s in seqs), default=0)
        input_ids = np.full((len(seqs), width), self.pad_token_id, dtype=np.int64)  # [B, S]
        attention_mask = np.zeros((len(seqs), width), dtype=np.int64)  # [B, S]
        for b, s in enumerate(seqs):
            input_ids[b, : len(s)] = s
            attention_mask[b, : len(s)] = 1
        return input_ids, attention_mask

    # -- ids -> text ----------------------------------------------------------------------
    def decode(self, ids: Iterable[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        """Text of one id sequence (list or 1-D array); ids outside the vocabulary are dropped."""
        seq = _as_id_list(ids)
        return self._codec.decode(seq, skip_special_tokens)

    def batch_decode(self, sequences: Iterable[Iterable[int]] | np.ndarray,
                     skip_special_tokens: bool = True) -> list[str]:
        """Texts of several id sequences (list of lists or a 2-D array)."""
        return [self.decode(s, skip_special_tokens) for s in sequences]

    def __repr__(self) -> str:
        return f"T5Tokenizer({str(self.source)!r}, vocab_size={self.vocab_size})"


def _as_id_list(ids: Any) -> list[int]:
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1:
            raise InvalidInputError(f"decode takes one sequence (a 1-D array), got shape {ids.shape}; "
                                    f"use batch_decode for a batch")
        ids = ids.tolist()
    out = []
    for i in ids:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise InvalidInputError(f"token ids must be integers, got {i!r} ({type(i).__name__})")
        if i < 0:
            raise InvalidInputError(f"token ids must be >= 0, got {int(i)}")
        out.append(int(i))
    return out


def _extra_ids_from_config(path: Path, default: int = 100) -> int:
    """extra_ids from tokenizer_config.json if it is there and says so; T5's default otherwise."""
    if not path.is_file():
        return default
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return default
    v = cfg.get("extra_ids") if isinstance(cfg, dict) else None
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else default
