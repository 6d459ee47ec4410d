"""GenerationConfig: every option of `generate()` in one dataclass (named like Hugging Face's).

Semantics, names and defaults follow `transformers.GenerationConfig` (DESIGN.md §6):
greedy when num_beams == 1 and not do_sample; beam search when num_beams > 1; sampling
when do_sample. Validation raises InvalidOptionError naming the option, its value and the
allowed range, before any work is done.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from .errors import InvalidOptionError

FLOAT32_MAX = float(np.finfo(np.float32).max)  # float options are applied in float32

EarlyStopping = Union[bool, str]  # True | False | "never"

# A research hook: called every step with (token history [N, t+1] int64, logits [N, V] float32,
# step t) on the runtime's array module (numpy on CPU, cupy on GPU); returns logits [N, V].
LogitsProcessor = Callable[[Any, Any, int], Any]


# With neither max_new_tokens nor max_length given anywhere (call, config, the model's
# generation_config.json), HF generate() (transformers 5) makes 20 new tokens.
HF_DEFAULT_NEW_TOKENS = 20

# Fields of a transformers.GenerationConfig that carry no decoding choice t5rt must honour:
# bookkeeping, and the special token ids (the export fixes those; its manifest has them).
_HF_IGNORED = {
    "transformers_version", "_from_model_config", "_commit_hash", "_original_object_hash",
    "pad_token_id", "eos_token_id", "bos_token_id", "decoder_start_token_id", "use_cache",
    "output_attentions", "output_hidden_states", "return_dict_in_generate", "output_logits",
    "cache_implementation", "compile_config",
}


@dataclass
class GenerationConfig:
    max_new_tokens: int | None = None  # None: from max_length, as HF (see max_new_tokens_for)
    max_length: int | None = None  # HF's name: decoder tokens incl. the start token (new = max_length - 1)
    min_new_tokens: int = 0
    do_sample: bool = False
    num_beams: int = 1
    num_return_sequences: int = 1
    temperature: float = 1.0
    top_k: int | None = 50  # HF's default; 0 or None disables
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    length_penalty: float = 1.0
    early_stopping: EarlyStopping = False
    bad_words_ids: list[list[int]] | None = None
    seed: int | None = None
    output_scores: bool = False  # keep per-step processed log-probs/scores of the chosen tokens
    logits_processors: Sequence[LogitsProcessor] = field(default_factory=tuple)

    @classmethod
    def from_options(cls, base: Any = None, **options: Any) -> "GenerationConfig":
        """A copy of `base` (a t5rt or a transformers GenerationConfig, or None for the defaults)
        with `options` applied; unknown names raise."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise InvalidOptionError(
                f"unknown generation option(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        if base is not None and not isinstance(base, GenerationConfig):
            if not callable(getattr(base, "to_diff_dict", None)):
                raise InvalidOptionError(
                    f"config={base!r:.60} is invalid: pass a t5rt.GenerationConfig or a transformers.GenerationConfig, "
                    "or the options as keywords (e.g. generate(texts, num_beams=4))")
            base = cls.from_hf(base)
        cfg = dataclasses.replace(base) if base is not None else cls()
        for k, v in options.items():
            setattr(cfg, k, v)
        cfg._plain_scalars()
        cfg.validate()
        return cfg

    @classmethod
    def from_hf(cls, hf: Any, *, strict: bool = True) -> "GenerationConfig":
        """A transformers.GenerationConfig (or its JSON dict, e.g. an export's
        generation_config.json) as a t5rt GenerationConfig, read torch-free.

        Only the fields that differ from HF's defaults matter (`to_diff_dict()`); one that t5rt
        does not implement raises InvalidOptionError with strict=True, and is skipped with
        strict=False (a model's own defaults must not stop it from loading)."""
        if isinstance(hf, dict):
            fields = dict(hf)
        elif callable(getattr(hf, "to_diff_dict", None)):
            fields = hf.to_diff_dict()
        else:
            raise InvalidOptionError(
                f"config={hf!r} is invalid: pass a t5rt.GenerationConfig or a transformers.GenerationConfig "
                "(or the options themselves, e.g. generate(..., num_beams=4))")
        names = {f.name for f in dataclasses.fields(cls)} - {"logits_processors", "output_scores"}
        cfg = cls()
        unsupported = []
        for k, v in fields.items():
            if k in _HF_IGNORED or k.startswith("_"):
                continue
            if k == "min_length":  # decoder tokens incl. the start token, as max_length
                if v is None:
                    continue
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                    raise InvalidOptionError(f"min_length={v!r} is invalid: must be an integer >= 0")
                if v:
                    cfg.min_new_tokens = max(0, int(v) - 1)
            elif k in names:
                setattr(cfg, k, v)
            elif v not in (None, False, 1.0, 0, [], {}):
                unsupported.append(f"{k}={v!r}")
        if unsupported and strict:
            raise InvalidOptionError(
                f"this transformers.GenerationConfig sets option(s) t5rt does not implement: "
                f"{', '.join(sorted(unsupported))}; unset them, or pass t5rt options instead")
        cfg.validate()
        return cfg

    def rows_per_input(self) -> int:
        """Decoder rows one input takes: beams, sampled return sequences, or 1."""
        if self.num_beams > 1:
            return int(self.num_beams)
        return int(self.num_return_sequences) if self.do_sample else 1

    def max_new_tokens_for(self, export_max: int) -> int:
        """New tokens to make at most, as HF generate(): max_new_tokens, else max_length - 1 (it
        counts the decoder start token), else HF's default of 20; never more than the export holds."""
        if self.max_new_tokens is not None:
            return int(self.max_new_tokens)
        n = int(self.max_length) - 1 if self.max_length is not None else HF_DEFAULT_NEW_TOKENS
        return max(1, min(n, export_max))

    def _plain_scalars(self) -> None:
        """numpy scalars -> the Python int / float / bool they hold exactly (np.int64(5) is 5);
        everything else is left for validate() to judge."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.bool_):
                setattr(self, f.name, bool(v))
            elif isinstance(v, np.integer):
                setattr(self, f.name, int(v))
            elif isinstance(v, np.floating):
                setattr(self, f.name, float(v))
        if isinstance(self.bad_words_ids, (list, tuple)):
            self.bad_words_ids = [[int(t) if isinstance(t, np.integer) else t for t in w]
                                  if isinstance(w, (list, tuple)) else w for w in self.bad_words_ids]

    @property
    def mode(self) -> str:
        if self.num_beams > 1:
            return "beam_sample" if self.do_sample else "beam"
        return "sample" if self.do_sample else "greedy"

    def validate(self, max_output_len: int | None = None, vocab_size: int | None = None) -> None:
        def bad(name: str, why: str) -> InvalidOptionError:
            return InvalidOptionError(f"{name}={getattr(self, name)!r:.80} is invalid: {why}")

        def is_int(v: Any) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

        def is_number(v: Any) -> bool:  # a real number finite in float32 (NaN and inf are refused)
            if not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, (bool, np.bool_)):
                return False
            try:
                return math.isfinite(v) and abs(float(v)) <= FLOAT32_MAX
            except OverflowError:
                return False

        if self.max_new_tokens is not None:
            if not is_int(self.max_new_tokens) or self.max_new_tokens < 1:
                raise bad("max_new_tokens", "must be a positive integer")
            if max_output_len is not None and self.max_new_tokens > max_output_len:
                raise bad("max_new_tokens", f"this export was made for at most {max_output_len} new tokens "
                          f"(re-export with a larger --max-output-len)")
        if self.max_new_tokens is None and self.max_length is not None and max_output_len is not None \
                and is_int(self.max_length) and self.max_length - 1 > max_output_len:
            raise bad("max_length", f"this export was made for at most {max_output_len} new tokens, "
                      f"max_length {max_output_len + 1} (re-export with a larger --max-output-len)")
        if self.max_length is not None and (not is_int(self.max_length) or self.max_length < 2):
            raise bad("max_length", "must be an integer >= 2 (it counts the decoder start token; "
                      "max_new_tokens = max_length - 1)")
        if not is_int(self.min_new_tokens) or self.min_new_tokens < 0:
            raise bad("min_new_tokens", "must be an integer >= 0")
        if self.max_new_tokens is not None and self.min_new_tokens > self.max_new_tokens:
            raise bad("min_new_tokens", f"must not exceed max_new_tokens={self.max_new_tokens}")
        if not isinstance(self.do_sample, (bool, np.bool_)):
            raise bad("do_sample", "must be True or False")
        if not is_int(self.num_beams) or self.num_beams < 1:
            raise bad("num_beams", "must be an integer >= 1")
        if not is_int(self.num_return_sequences) or self.num_return_sequences < 1:
            raise bad("num_return_sequences", "must be an integer >= 1")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise bad("num_return_sequences", f"must not exceed num_beams={self.num_beams}")
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
            raise bad("num_return_sequences", "greedy search returns one sequence per input; "
                      "use num_beams >= num_return_sequences or do_sample=True")
        if not is_number(self.temperature) or not self.temperature > 0:
            raise bad("temperature", "must be a finite number > 0")
        if self.top_k is not None and (not is_int(self.top_k) or self.top_k < 0):
            raise bad("top_k", "must be an integer >= 0 (0 or None disables top-k)")
        if not is_number(self.top_p) or not (0.0 < self.top_p <= 1.0):
            raise bad("top_p", "must be in (0, 1]")
        if not is_number(self.repetition_penalty) or not self.repetition_penalty > 0:
            raise bad("repetition_penalty", "must be a finite number > 0 (1.0 disables it)")
        if not is_int(self.no_repeat_ngram_size) or self.no_repeat_ngram_size < 0:
            raise bad("no_repeat_ngram_size", "must be an integer >= 0 (0 disables it)")
        if not is_number(self.length_penalty):
            raise bad("length_penalty", "must be a finite number (NaN and inf rank every beam alike)")
        if not (isinstance(self.early_stopping, bool) or
                (isinstance(self.early_stopping, str) and self.early_stopping == "never")):
            raise bad("early_stopping", "must be True, False or 'never'")
        if self.bad_words_ids is not None:
            ok = isinstance(self.bad_words_ids, (list, tuple)) and all(
                isinstance(w, (list, tuple)) and len(w) > 0 and all(is_int(t) and t >= 0 for t in w)
                for w in self.bad_words_ids
            )
            if not ok:
                raise bad("bad_words_ids", "must be a list of non-empty lists of token ids >= 0")
            if vocab_size is not None and any(t >= vocab_size for w in self.bad_words_ids for t in w):
                raise bad("bad_words_ids", f"token ids must be < vocab_size={vocab_size}")
        if self.seed is not None and (not is_int(self.seed) or not 0 <= self.seed < 2**64):
            raise bad("seed", "must be an integer in [0, 2**64) or None")
        if not isinstance(self.output_scores, (bool, np.bool_)):
            raise bad("output_scores", "must be True or False")
        if callable(self.logits_processors):
            raise bad("logits_processors", "must be a list of callables; wrap the one you have: "
                                           "logits_processors=[fn]")
        if not isinstance(self.logits_processors, (list, tuple)) or \
                not all(callable(p) for p in self.logits_processors):
            raise bad("logits_processors", "must be a list of callables (history, logits, step) -> logits")
