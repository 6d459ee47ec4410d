"""What the load bench sends: a reproducible mix of requests and their Poisson arrival times.

Each request: random source ids (ending in eos) of 8-256 tokens, 16-128 new tokens (forced:
min_new_tokens = max_new_tokens, so every system generates exactly as much with random
weights), and a mode: greedy, sampling (seeded: top-k 50, top-p 0.95, temperature 0.8) or
beam search with 4 beams. `LoadRequest.payload()` is the generate() keyword set, the same body
an HTTP target would POST.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

MODES: dict[str, dict[str, Any]] = {
    "greedy": {},
    "sample": dict(do_sample=True, top_k=50, top_p=0.95, temperature=0.8),
    "beam4": dict(num_beams=4),
}
DEFAULT_MIX = (("greedy", 5), ("sample", 3), ("beam4", 2))


@dataclass(frozen=True)
class LoadRequest:
    id: int
    input_ids: tuple[int, ...]
    mode: str
    new_tokens: int
    seed: int

    def options(self) -> dict[str, Any]:
        """generate() options (besides the input)."""
        kw: dict[str, Any] = dict(MODES[self.mode], max_new_tokens=self.new_tokens, min_new_tokens=self.new_tokens)
        if kw.get("do_sample"):
            kw["seed"] = self.seed
        return kw

    def payload(self) -> dict[str, Any]:
        """The whole request as JSON-able generate() keywords (one input)."""
        return dict(self.options(), input_ids=[list(self.input_ids)])


def make_requests(n: int, *, src: tuple[int, int], new: tuple[int, int], mix: tuple[tuple[str, int], ...],
                  vocab_size: int, eos_token_id: int, seed: int, every_mode: bool = False) -> list[LoadRequest]:
    """n requests drawn from the mix (every_mode: cycle through the modes instead, e.g. to fit
    a solo latency per mode)."""
    rng = random.Random(seed)
    modes = [m for m, w in mix for _ in range(w)]
    out = []
    for i in range(n):
        s = rng.randint(*src)
        ids = [rng.randrange(2, vocab_size) for _ in range(s - 1)] + [eos_token_id]
        mode = mix[i % len(mix)][0] if every_mode else rng.choice(modes)
        out.append(LoadRequest(i, tuple(ids), mode, rng.randint(*new), rng.randrange(1 << 31)))
    return out


def poisson_arrivals(rate: float, duration: float, seed: int) -> list[float]:
    """Arrival times (s from the start) of a Poisson process of `rate` per second over `duration`."""
    rng = random.Random(seed)
    t, times = 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            return times
        times.append(t)


def parse_mix(text: str) -> tuple[tuple[str, int], ...]:
    """'greedy=5,sample=3,beam4=2' -> (("greedy", 5), ...)."""
    out = []
    for part in text.split(","):
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in MODES:
            raise ValueError(f"unknown mode {name!r}; use {', '.join(MODES)}")
        out.append((name, int(weight or 1)))
    return tuple(out)
