"""What every benchmarked system offers the runner, and the work they all do.

A `System` is one way of generating with the same weights: t5rt, or a peer a user would pick
instead (Hugging Face eager, HF static cache + torch.compile, Optimum ONNX Runtime,
CTranslate2). `setup()` raises `Unavailable` with a one-line reason when the system cannot
run here (package missing, unsupported precision, conversion failed); the runner prints that
reason in the table instead of numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class Unavailable(Exception):
    """The system cannot run in this bench; str(e) is the one-line reason for the table."""


def one_line(e: BaseException, limit: int = 160) -> str:
    """An exception as '<Type>: <first line of its message>', short enough for a table cell."""
    msg = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__
    if isinstance(e, Unavailable):
        text = msg[0] if msg else "unavailable"
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Workload:
    """One measured case; every system gets exactly these inputs."""

    batch: int
    beams: int
    src_len: int
    new_tokens: int  # forced: min_new_tokens = max_new_tokens
    input_ids: np.ndarray  # [B, S] int64, random ids in [2, vocab) (no pad, no eos)
    attention_mask: np.ndarray  # [B, S] int64, all ones

    @property
    def key(self) -> tuple[int, int, int, int]:
        return (self.batch, self.beams, self.src_len, self.new_tokens)


def make_workload(batch: int, beams: int, src_len: int, new_tokens: int, vocab_size: int,
                  seed: int = 0) -> Workload:
    rng = np.random.default_rng([seed, batch, src_len])
    ids = rng.integers(2, vocab_size, size=(batch, src_len), dtype=np.int64)  # [B, S]
    return Workload(batch, beams, src_len, new_tokens, ids, np.ones_like(ids))


@dataclass
class RunOutput:
    seconds: float  # whole generate() call, device synchronised
    sequences: list[list[int]]  # [B][new_tokens] generated ids (decoder start token removed)
    encode_s: float | None = None  # encoder (and cross K/V) time, where the system reports it
    step_s: float | None = None  # mean decoder-step time, where the system reports it
    host_step_s: float | None = None  # t5rt: host time issuing one step (launch cost)


@dataclass
class System:
    """Base: subclasses implement setup/run; sync/close/torch_peak_bytes where they apply."""

    name: str
    precision: str  # the precision its weights run in
    device: str  # "cpu" | "cuda"
    note: str = ""  # shown in the table's note column
    extra: dict = field(default_factory=dict)  # system-specific facts for the JSON
    threads: int | None = None  # CPU threads it may use (None: the cores this process may use)

    def setup(self) -> None:
        raise NotImplementedError

    def run(self, w: Workload) -> RunOutput:
        raise NotImplementedError

    def sync(self) -> None:
        """Wait for the device work this system queued (no-op on CPU)."""

    def torch_peak_bytes(self) -> int | None:
        """Peak torch.cuda allocation of this system since its setup (torch peers only)."""
        return None

    def release_caches(self) -> None:
        """Return cached, unused device memory (torch's allocator cache) after a memory window."""

    def close(self) -> None:
        """Free the model and any worker process."""


def strip_start(seqs: list[list[int]], new_tokens: int, start_id: int) -> list[list[int]]:
    """Generated tokens only: drop a leading decoder-start token where a system returns it."""
    return [s[1:] if len(s) == new_tokens + 1 and s[0] == start_id else list(s) for s in seqs]


def agreement(ref: list[list[int]], got: list[list[int]]) -> float:
    """Fraction of reference tokens that `got` reproduces at the same position (missing = wrong)."""
    total = sum(len(r) for r in ref)
    if total == 0 or len(ref) != len(got):
        return 0.0
    same = sum(sum(1 for a, b in zip(r, g) if a == b) for r, g in zip(ref, got))
    return same / total
