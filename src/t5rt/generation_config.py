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


@dataclass
class GenerationConfig:
    max_new_tokens: int | None = None  # None: up to the export's max_output_len - 1
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
    def from_options(cls, base: "GenerationConfig | None" = None, **options: Any) -> "GenerationConfig":
        """A copy of `base` (or the defaults) with `options` applied; unknown names raise."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise InvalidOptionError(
                f"unknown generation option(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        if base is not None and not isinstance(base, GenerationConfig):
            raise InvalidOptionError(
                f"config={base!r:.60} is invalid: pass a t5rt.GenerationConfig, or the options as keywords "
                "(e.g. generate(texts, num_beams=4))")
        cfg = dataclasses.replace(base) if base is not None else cls()
        for k, v in options.items():
            setattr(cfg, k, v)
        cfg._plain_scalars()
        cfg.validate()
        return cfg

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
