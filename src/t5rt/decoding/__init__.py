"""Decoding strategies at Hugging Face `generate()` parity, on any array module (numpy/cupy).

    make_strategy(xp, config, batch=..., vocab_size=..., max_new_tokens=..., pad_token_id=...,
                  eos_token_id=..., decoder_start_token_id=...) -> Strategy

Modules: ops (array primitives, kernel seams), rng (counter-based RNG and samplers),
processors (HF logits processors/warpers), sampling (greedy + sampling), beam (beam search),
strategy (the factory and the Strategy protocol).
"""

from .beam import BeamSearchStrategy
from .processors import LogitsPipeline
from .sampling import SamplingStrategy
from .strategy import Strategy, make_strategy

__all__ = ["BeamSearchStrategy", "LogitsPipeline", "SamplingStrategy", "Strategy", "make_strategy"]
