"""The systems the load bench drives, behind one small async protocol:

    class Target:
        name: str
        async def run(self, req: LoadRequest) -> Outcome     # times from time.perf_counter()
        def counters(self) -> dict | None                   # e.g. runtime stats (host s/step)
        def close(self) -> None

- `RuntimeTarget(inflight=True)`: t5rt with in-flight batching (`rt.astream`: the first chunk
  is the time to first token).
- `RuntimeTarget(inflight=False)`: the same runtime serving one request at a time.
- `HFSerialTarget`: Hugging Face `generate()` one request at a time in a worker thread (a
  streamer records the first generated token).
An HTTP target (`--url`, for `t5rt serve`) implements the same `run()` with a POST of
`req.payload()`; nothing else in the driver changes.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .workload import LoadRequest


@dataclass
class Outcome:
    req: LoadRequest
    start: float
    first: float | None = None   # first generated token seen by the client
    end: float | None = None
    tokens: int = 0
    sequence: list[int] | None = None
    error: str | None = None

    @property
    def latency(self) -> float | None:
        return None if self.end is None or self.error else self.end - self.start

    @property
    def ttft(self) -> float | None:
        return None if self.first is None or self.error else self.first - self.start


class RuntimeTarget:
    def __init__(self, export_dir: Path, *, inflight: bool, backend: str, device: str, warm_shapes: bool = True,
                 **runtime_options: Any):
        import t5rt

        self.name = "t5rt" if inflight else "t5rt-serial"
        self.rt = t5rt.load(str(export_dir), backend=backend, device=device, inflight=inflight,
                            max_queue=1 << 20, **runtime_options)
        # every bucket's shapes made before the clock starts (Runtime.warmup), as a service would
        self.warmed = self.rt.warmup() if warm_shapes else None

    async def run(self, req: LoadRequest) -> Outcome:
        import t5rt

        out = Outcome(req, time.perf_counter())
        seq: list[int] = []
        try:
            async for chunk in self.rt.astream(input_ids=[list(req.input_ids)], **req.options()):
                if chunk.tokens and out.first is None:
                    out.first = time.perf_counter()
                seq += chunk.tokens
        except t5rt.T5rtError as e:
            out.error = f"{type(e).__name__}: {e}"
        out.end = time.perf_counter()
        out.sequence, out.tokens = seq, len(seq)
        return out

    def counters(self) -> dict[str, Any] | None:
        return self.rt.stats()

    def close(self) -> None:
        self.rt.close()


class HFSerialTarget:
    """transformers generate(), one request at a time (a single worker thread queues the rest)."""

    def __init__(self, model_dir: Path, *, device: str, precision: str):
        import torch
        import transformers

        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.name = f"hf@{precision}"
        self.torch, self.device = torch, device
        self.model = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(model_dir), dtype=dtype).to(device).eval()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="hf-serial")

    def _generate(self, req: LoadRequest, out: Outcome) -> None:
        torch = self.torch

        class FirstToken:  # HF streamer protocol: put() gets the start token, then each new token
            calls = 0

            def put(self, value: Any) -> None:
                self.calls += 1
                if self.calls == 2 and out.first is None:
                    out.first = time.perf_counter()

            def end(self) -> None:
                pass

        kw = req.options()
        seed = kw.pop("seed", None)
        if seed is not None:
            torch.manual_seed(seed)
        ids = torch.tensor([list(req.input_ids)], device=self.device)
        streamer = FirstToken() if kw.get("num_beams", 1) == 1 else None  # HF streams no beams
        with torch.inference_mode():
            seq = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer, **kw)
        if self.device == "cuda":
            torch.cuda.synchronize()
        out.sequence = seq[0, 1:].tolist()
        out.tokens = len(out.sequence)

    async def run(self, req: LoadRequest) -> Outcome:
        out = Outcome(req, time.perf_counter())
        try:
            await asyncio.get_running_loop().run_in_executor(self.pool, self._generate, req, out)
        except Exception as e:  # noqa: BLE001 - reported per request
            out.error = f"{type(e).__name__}: {e}"
        out.end = time.perf_counter()
        if out.first is None:
            out.first = out.end  # beam search: the whole sequence arrives at the end
        return out

    def counters(self) -> dict[str, Any] | None:
        return None

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.model = None
