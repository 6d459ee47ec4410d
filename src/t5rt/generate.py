"""The public entry points: `t5rt.load(DIR)` and `Runtime.generate(...)`.

    rt = t5rt.load(DIR, backend="auto", device="cuda")
    out = rt.generate(["summarize: ..."], num_beams=4, max_new_tokens=64)
    out.sequences   # list[list[int]]: one per returned sequence, input order, r of each consecutive
    out.scores      # beam sequence scores, or summed log-probs of the chosen tokens
    out.texts       # decoded sequences when the export has a tokenizer

Every argument is checked before any device state is touched, so a request that raises leaves
the runtime ready for the next one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidExportError, InvalidOptionError, RequestTooLargeError, T5rtError
from .export_check import verify_export
from .generation_config import GenerationConfig
from .inputs import parse_inputs
from .manifest import Manifest, load_manifest
from .runtime.device import Device, resolve_device
from .runtime.memory import check_request_fits
from .runtime.runner import RuntimeOptions, T5Runner

log = logging.getLogger("t5rt")


@dataclass
class GenerateOutput:
    sequences: list[list[int]]
    scores: list[float] | None = None
    texts: list[str] | None = None
    token_scores: list[list[float]] | None = None  # output_scores=True: log-prob of each token
    timings: dict[str, float] = field(default_factory=dict)


class Runtime:
    """A loaded export on one device and backend; `generate()` may be called any number of times."""

    def __init__(self, manifest: Manifest, options: RuntimeOptions):
        options.validate()
        self.manifest = manifest
        self.options = options
        self.device = Device(resolve_device(options.device))
        # nothing of the export runs before its files passed (DESIGN.md §11); cost in .verification
        self.verification = verify_export(manifest, hashes=options.verify)
        from .engines import open_sessions

        self.backend, self.backend_reason, sessions = open_sessions(manifest, options.backend, self.device, options)
        log.info("t5rt: backend %s (%s) on %s", self.backend, self.backend_reason, self.device.name)
        kernels = None
        if self.device.is_cuda and options.kernels:
            kernels = _load_kernels()
        self.runner = T5Runner(manifest, self.device, sessions, options, kernels)
        self.tokenizer = _load_tokenizer(manifest)
        self.generation_config = _generation_defaults(manifest)
        self.last_timings: dict[str, float] = {}
        # strategies kept across requests (reset in place), so their captured CUDA graphs replay
        self._strategies: OrderedDict[tuple, Any] = OrderedDict()

    # -- inputs ----------------------------------------------------------------------------
    def _inputs(self, texts: Any, input_ids: Any, attention_mask: Any) -> tuple[np.ndarray, np.ndarray]:
        """-> (ids [B, s], mask [B, s]) int64 host arrays, right padded; every problem raises (inputs.py)."""
        return parse_inputs(texts, input_ids, attention_mask, manifest=self.manifest, tokenizer=self.tokenizer)

    # -- generate --------------------------------------------------------------------------
    def generate(self, texts: str | Sequence[str] | None = None, *, input_ids: Any = None,
                 attention_mask: Any = None, config: GenerationConfig | None = None,
                 **options: Any) -> GenerateOutput:
        cfg = GenerationConfig.from_options(self.generation_config if config is None else config, **options)
        m = self.manifest
        cfg.validate(max_output_len=m.max_output_len, vocab_size=m.dims.vocab_size)
        ids, mask = self._inputs(texts, input_ids, attention_mask)
        max_new = cfg.max_new_tokens_for(m.max_output_len)
        if cfg.min_new_tokens > max_new:
            raise InvalidOptionError(f"min_new_tokens={cfg.min_new_tokens} exceeds the {max_new} new tokens this "
                                     "request makes at most; raise max_new_tokens")
        check_request_fits(m, cfg, batch=min(ids.shape[0], self.options.max_batch), src_len=ids.shape[1],
                           max_new_tokens=max_new, device=self.device, options=self.options)
        from .decoding import make_strategy

        sequences: list[list[int]] = []
        scores: list[float] = []
        token_scores: list[list[float]] = []
        agg: dict[str, float] = {}
        step = self.options.max_batch
        for lo in range(0, ids.shape[0], step):
            chunk_ids, chunk_mask = ids[lo:lo + step], mask[lo:lo + step]
            # trim the chunk's padding to its own longest input
            s = int(np.nonzero(chunk_mask.any(axis=0))[0].max()) + 1
            chunk_ids, chunk_mask = chunk_ids[:, :s], chunk_mask[:, :s]
            try:
                seqs, scs, tok = self._generate_chunk(chunk_ids, chunk_mask, cfg, max_new, make_strategy, lo)
            except MemoryError as e:  # the estimate (runtime/memory.py) erred low: still a T5rtError
                if isinstance(e, RequestTooLargeError):
                    raise
                raise RequestTooLargeError(f"this request ran out of memory ({e or 'MemoryError'}); ask for "
                                           "fewer beams, new tokens or inputs per chunk") from e
            sequences += seqs
            scores += scs
            token_scores += tok or []
            for k, v in self.runner.timings.as_dict().items():
                if not k.endswith("step_s"):
                    agg[k] = agg.get(k, 0.0) + v
        steps = agg.get("steps", 0)
        agg["step_s"] = agg["decode_s"] / steps if steps else 0.0
        agg["host_step_s"] = agg["host_s"] / steps if steps else 0.0
        self.last_timings = agg
        texts_out = None
        if self.tokenizer is not None:
            texts_out = [self.tokenizer.decode(s, skip_special_tokens=True) for s in sequences]
        return GenerateOutput(sequences=sequences, scores=scores, texts=texts_out,
                              token_scores=token_scores if cfg.output_scores else None, timings=dict(agg))

    def _generate_chunk(self, ids: np.ndarray, mask: np.ndarray, cfg: GenerationConfig, max_new: int,
                        make_strategy: Any, first_input: int) -> tuple[list[list[int]], list[float], Any]:
        with self.device.use():  # state set up on the stream the engines and graphs run on
            strategy = self._strategy(cfg, ids.shape[0], max_new, first_input, make_strategy)
        enc = self.runner.encode(ids, mask)
        eager = not strategy.capturable  # user hooks run Python per step: no CUDA graph
        self.runner.decode(enc, strategy, max_new, eager=eager, profile=self.options.profile)
        seqs, scores = strategy.result()
        tok = strategy.token_scores() if cfg.output_scores else None
        return [list(map(int, s)) for s in seqs], [float(x) for x in scores], tok


    def _strategy(self, cfg: GenerationConfig, batch: int, max_new: int, first_input: int,
                  make_strategy: Any) -> Any:
        """A strategy for this chunk: the one an identical earlier request used, reset in place
        (its buffers keep their addresses, so with RuntimeOptions.reuse_step_graphs the runner's
        CUDA graph captured over its step replays again), else a new one. Strategies running user
        logits processors (host code) are never kept."""
        fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "logits_processors"}
        key = (repr(fields), batch, max_new, first_input)
        cached = None if cfg.logits_processors else self._strategies.get(key)
        if cached is not None:
            self._strategies.move_to_end(key)
            cached.reset()
            return cached
        st = self.manifest.special_tokens
        strategy = make_strategy(
            self.device.xp, cfg, batch=batch, vocab_size=self.manifest.dims.vocab_size,
            max_new_tokens=max_new, pad_token_id=st.pad_token_id, eos_token_id=st.eos_token_id,
            decoder_start_token_id=st.decoder_start_token_id,
            first_input=first_input,  # a chunked request samples exactly like one batch
            kernels=self.runner.kernels,  # fused token choice on the GPU (None: array code)
        )
        # CUDA: only with reuse_step_graphs (the GPU half of reuse has not run on a GPU yet)
        if strategy.capturable and (not self.device.is_cuda or self.options.reuse_step_graphs):
            self._strategies[key] = strategy
            while len(self._strategies) > self.options.max_cached_buckets:
                _, dropped = self._strategies.popitem(last=False)
                self.runner.forget(dropped)  # its captured graphs can never be hit again
        return strategy


def _generation_defaults(m: Manifest) -> GenerationConfig:
    """The export's generation_config.json (the model's own defaults, which HF generate() uses),
    else HF's defaults. A max_length beyond what the export holds is capped to it."""
    path = m.directory / "generation_config.json" if m.directory is not None else None
    if path is None or not path.is_file():
        return GenerationConfig()
    try:
        cfg = GenerationConfig.from_hf(json.loads(path.read_text()), strict=False)
    except (ValueError, T5rtError) as e:
        log.warning("t5rt: %s is unusable (%s); using Hugging Face's generation defaults", path, e)
        return GenerationConfig()
    cap = m.max_output_len
    if cfg.max_new_tokens is not None and cfg.max_new_tokens > cap:
        cfg.max_new_tokens = cap
    if cfg.max_length is not None and cfg.max_length - 1 > cap:
        log.info("t5rt: the model's max_length %d is capped to the export's %d new tokens", cfg.max_length, cap)
        cfg.max_length = cap + 1
    return cfg


def _load_tokenizer(m: Manifest) -> Any:
    if m.directory is None or not {"spiece.model", "tokenizer.json"} & set(m.tokenizer_files):
        return None
    from .tokenizer import T5Tokenizer

    try:
        return T5Tokenizer.from_dir(m.directory)
    except Exception as e:  # noqa: BLE001 - a listed (and hashed) tokenizer that cannot be read: a bad export
        raise InvalidExportError(f"{m.directory}: its tokenizer_files ({', '.join(m.tokenizer_files)}) cannot be "
                                 f"read ({type(e).__name__}: {e}); re-export the model") from None


def _load_kernels() -> Any:
    """t5rt.kernels once its module (CMake fatbin or NVRTC) has loaded; else the array-code paths."""
    from . import kernels

    try:
        kernels.load()
    except Exception as e:  # noqa: BLE001 - say why, then run the generic (slower) paths
        log.warning("t5rt: CUDA kernels unavailable (%s); using array code for cache ops", e)
        return None
    log.info("t5rt: CUDA kernels from %s", kernels.source())
    return kernels


def load(directory: str | Path, backend: str | None = None, device: str | None = None,
         options: RuntimeOptions | None = None, **kwargs: Any) -> Runtime:
    """Load an export made by `t5rt export`.

    backend / device / kwargs override the fields of `options` (a RuntimeOptions, default: all
    defaults: backend "auto", device "auto"); the caller's `options` object is not modified.
    """
    known = RuntimeOptions.__dataclass_fields__
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise InvalidOptionError(f"unknown runtime option(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if backend is not None:
        kwargs["backend"] = backend
    if device is not None:
        kwargs["device"] = device
    opts = dataclasses.replace(options or RuntimeOptions(), **kwargs)
    return Runtime(load_manifest(directory), opts)
