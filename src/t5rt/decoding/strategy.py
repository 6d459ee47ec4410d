"""`make_strategy`: the decoding strategy a runtime drives, chosen from a GenerationConfig.

The runtime's loop (numpy on CPU, cupy on GPU; `step()` is CUDA-graph capturable)::

    s = make_strategy(xp, config, batch=B, vocab_size=V, max_new_tokens=T,
                      pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=start)
    while not s.done():                        # sync only every few steps on the GPU
        logits = decoder_step(s.tokens, position=s.step_counter)   # [s.rows, V] float32
        s.step(logits)
        if s.parent is not None:               # beam search: self-attention caches of
            reorder_caches(s.parent)           # row n become a copy of row parent[n]'s
    sequences, scores = s.result()

Every strategy exposes: rows, rows_per_input, tokens [N], parent [N] | None, step_counter
(0-d int64, t = position of `tokens`), history [N, T+1] (col 0 = decoder start),
step(logits [N, V]), done() -> 0-d bool, result() -> (list[list[int]], list[float]),
token_scores() -> per-token log-probs of each returned sequence (config.output_scores) | None,
capturable: False when user logits processors (host code) run inside step(): run eagerly.

step() is sync-free and static-shaped: state buffers are allocated in __init__ and updated in
place; the step counter lives on the device; on cupy no sort is used (ops.*_capture_safe), so
it can be captured in a CUDA graph (temporaries come from the capturing allocator). Once done()
is true, step() changes nothing (parent = identity), so checking done() every few steps is exact.

On cupy the per-step bookkeeping is one fused kernel per strategy (kernels/decoding_step.cu via
t5rt.kernels: sample_update, beam_update) and, given `kernels=` (the loaded t5rt.kernels
module), the token choice is t5rt.kernels too:

    greedy     argmax_logsumexp (argmax + row log-sum-exp, one pass) + update  2 launches
    sampling   sample_logprob (temperature/top-k/top-p/draw) + update         2 launches
    beam       beam_step (log_softmax + score + top-2nb) + beam_update           4 launches
    + one launch per configured processor group (min_new_tokens: 1 tiny in-place kernel;
      repetition_penalty, no_repeat_ngram_size, bad_words_ids: array code, only when set)

With step kernels, step() may overwrite `logits` in place (min_new_tokens): pass a buffer the
caller rewrites every step (the engine's output), as the runtime does.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..errors import InvalidOptionError
from ..generation_config import GenerationConfig
from .beam import BeamSearchStrategy
from .ops import Array
from .sampling import SamplingStrategy


class Strategy(Protocol):
    rows: int
    rows_per_input: int
    tokens: Array
    parent: Array | None
    step_counter: Array
    history: Array
    capturable: bool

    def step(self, logits: Array) -> None: ...

    def done(self) -> Array: ...

    def result(self) -> tuple[list[list[int]], list[float]]: ...

    def token_scores(self) -> list[list[float]] | None: ...


def make_strategy(xp: Any, config: GenerationConfig, *, batch: int, vocab_size: int,
                  max_new_tokens: int, pad_token_id: int, eos_token_id: int,
                  decoder_start_token_id: int, first_input: int = 0, kernels: Any = None,
                  fused: Any = None) -> Strategy:
    """Greedy / sampling / beam search / beam sampling for `config` on array module `xp`.

    first_input: the request-wide index of this batch's first input; the RNG (sampling only)
    is keyed on request-wide rows, so a request split into chunks samples exactly as one batch.
    kernels: the `t5rt.kernels` module (None = array code for the token choice): greedy
    argmax_logsumexp, sampling sample_logprob, beam search beam_step / beam_topk, run by the
    same launcher as the state update.
    fused: the per-step state update as one kernel (t5rt.kernels.sample_update / beam_update):
    None = on cupy ($T5RT_DECODING_FUSED=0 turns it off), False = array code (kernels then
    unused too), True = the CUDA kernels, or a t5rt.kernels Launcher (tests:
    t5rt.kernels.host.HostKernels runs the same kernels on numpy); see ops.kernel_launcher.
    """
    config.validate(vocab_size=vocab_size)
    if not isinstance(batch, int) or batch < 1:
        raise InvalidOptionError(f"batch={batch!r} is invalid: must be an integer >= 1")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InvalidOptionError(f"max_new_tokens={max_new_tokens!r} is invalid: must be an integer >= 1")
    if config.num_beams > 1 and 2 * config.num_beams > vocab_size:
        raise InvalidOptionError(f"num_beams={config.num_beams} is invalid: beam search keeps "
                                 f"2 * num_beams candidates, more than vocab_size={vocab_size}")
    kw = dict(batch=batch, vocab_size=vocab_size, max_new_tokens=max_new_tokens,
              pad_token_id=pad_token_id, eos_token_id=eos_token_id,
              decoder_start_token_id=decoder_start_token_id, first_input=first_input,
              kernels=kernels, fused=fused)
    if config.num_beams > 1:
        return BeamSearchStrategy(xp, config, **kw)
    return SamplingStrategy(xp, config, **kw)
