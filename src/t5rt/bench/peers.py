"""The systems a user would pick instead of t5rt, run from their real packages.

- `HFEager`: transformers `generate()` in eager PyTorch (fp32, and the bench precision).
- `HFEager(compile=True)`: HF's own static-cache path, `generate(cache_implementation="static",
  compile_config=CompileConfig(...))`, which torch.compiles the forward; when it fails (it did
  on the H100, DESIGN.md §7) the table shows the exception's first line.
- `CTranslate2`: converted with `ctranslate2.converters.TransformersConverter`.
- `OptimumORT`: `optimum.onnxruntime.ORTModelForSeq2SeqLM`, run in a worker process
  (optimum_worker.py) because optimum-onnx pins transformers < 4.58; see `--optimum-python`.

torch, transformers, ctranslate2 are imported inside setup(), never at module import.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..runtime.device import usable_cpus
from .systems import RunOutput, System, Unavailable, Workload, one_line, strip_start
from .timing import timed

TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
CT2_COMPUTE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _require(module: str, why: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise Unavailable(f"{module} is not installed ({why}): {one_line(e)}") from None


# ---------------------------------------------------------------------------------------
# Hugging Face transformers (eager, and static cache + torch.compile)
# ---------------------------------------------------------------------------------------
@dataclass
class HFEager(System):
    model_dir: Path = Path(".")
    compile: bool = False
    _model: Any = field(default=None, repr=False)
    _torch: Any = field(default=None, repr=False)
    _start_id: int = 0
    _mem_base: int = 0  # torch bytes allocated before this model was loaded (other torch peers)

    def setup(self) -> None:
        torch = _require("torch", "Hugging Face peers")
        transformers = _require("transformers", "Hugging Face peers")
        self._torch = torch
        if self.device == "cpu" and self.threads:
            torch.set_num_threads(self.threads)  # process-wide: every torch peer gets the same
        if self.device == "cuda" and not torch.cuda.is_available():
            raise Unavailable("torch has no CUDA device (a CPU-only torch build?)")
        dtype = getattr(torch, TORCH_DTYPES[self.precision])
        if self.device == "cuda":
            self._mem_base = int(torch.cuda.memory_allocated())
            torch.cuda.reset_peak_memory_stats()
        model = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(self.model_dir), dtype=dtype)
        self._model = model.to(self.device).eval()
        self._start_id = int(model.config.decoder_start_token_id or 0)
        self.extra = {"transformers": transformers.__version__, "torch": torch.__version__}

    def _generate_kwargs(self, w: Workload) -> dict[str, Any]:
        kw: dict[str, Any] = dict(max_new_tokens=w.new_tokens, min_new_tokens=w.new_tokens,
                                  num_beams=w.beams, do_sample=False, num_return_sequences=1)
        if self.compile:
            from transformers import CompileConfig

            # HF compiles only on accelerators unless told; on CPU ask for it, without CUDA graphs.
            cc = CompileConfig() if self.device == "cuda" else CompileConfig(mode="default")
            if self.device != "cuda":
                cc._compile_all_devices = True  # type: ignore[assignment]
            kw.update(cache_implementation="static", compile_config=cc)
        return kw

    def run(self, w: Workload) -> RunOutput:
        torch = self._torch
        ids = torch.from_numpy(w.input_ids).to(self.device)  # [B, S]
        mask = torch.from_numpy(w.attention_mask).to(self.device)  # [B, S]
        kw = self._generate_kwargs(w)
        with torch.inference_mode():
            enc_s, _ = timed(lambda: self._model.get_encoder()(input_ids=ids, attention_mask=mask),
                             self.sync)
            seconds, out = timed(lambda: self._model.generate(input_ids=ids, attention_mask=mask, **kw),
                                 self.sync)
        seqs = strip_start(out.tolist(), w.new_tokens, self._start_id)
        # HF does not split its timings: the step time is derived, (generate - encoder) / steps.
        return RunOutput(seconds, seqs, encode_s=enc_s,
                         step_s=max(seconds - enc_s, 0.0) / max(w.new_tokens, 1))

    def sync(self) -> None:
        if self.device == "cuda" and self._torch is not None:
            self._torch.cuda.synchronize()

    def torch_peak_bytes(self) -> int | None:
        """Peak torch allocation since setup, less what other torch peers held before it."""
        if self.device != "cuda" or self._torch is None:
            return None
        return max(int(self._torch.cuda.max_memory_allocated()) - self._mem_base, 0)

    def release_caches(self) -> None:
        if self.device == "cuda" and self._torch is not None:
            self._torch.cuda.empty_cache()

    def close(self) -> None:
        self._model = None
        self.release_caches()


# ---------------------------------------------------------------------------------------
# CTranslate2
# ---------------------------------------------------------------------------------------
def make_vocabulary_injective(model_dir: Path) -> None:
    """Rename repeated entries of a converted model's vocabulary so ids round-trip exactly.

    CTranslate2 speaks token strings. Its T5 converter appends "<extra_id_i>" up to
    vocab_size, repeating names the tokenizer already has (t5-small: 32100 pieces, 32128
    rows), and a model saved without a tokenizer gets a default one: several ids then share
    one string. The bench feeds random ids, so each id needs its own string; the weights and
    the id order are untouched.
    """
    path = model_dir / "shared_vocabulary.json"
    if path.is_file():
        tokens = json.loads(path.read_text())
        writer = lambda toks: path.write_text(json.dumps(toks))  # noqa: E731
    else:
        path = model_dir / "shared_vocabulary.txt"
        tokens = path.read_text(encoding="utf-8").split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        writer = lambda toks: path.write_text("\n".join(toks) + "\n", encoding="utf-8")  # noqa: E731
    seen: set[str] = set()
    fixed = []
    for i, t in enumerate(tokens):
        if t in seen:
            t = f"<t5rt_id_{i}>"
        seen.add(t)
        fixed.append(t)
    if fixed != tokens:
        writer(fixed)


def ct2_vocabulary(model_dir: Path) -> list[str]:
    path = model_dir / "shared_vocabulary.json"
    if path.is_file():
        return json.loads(path.read_text())
    return [t for t in (model_dir / "shared_vocabulary.txt").read_text(encoding="utf-8").split("\n") if t]


@dataclass
class CTranslate2(System):
    model_dir: Path = Path(".")
    convert_dir: Path = Path(".")
    _translator: Any = field(default=None, repr=False)
    _vocab: list[str] = field(default_factory=list, repr=False)
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def setup(self) -> None:
        ct2 = _require("ctranslate2", "pip install ctranslate2")
        dev = self.device
        if dev == "cuda" and ct2.get_cuda_device_count() < 1:
            raise Unavailable("ctranslate2 sees no CUDA device (its wheel wants CUDA 12 cuBLAS)")
        compute = CT2_COMPUTE[self.precision]
        supported = ct2.get_supported_compute_types(dev)
        if compute not in supported:
            raise Unavailable(f"ctranslate2 {ct2.__version__} on {dev} has no {compute} "
                              f"(supported: {', '.join(sorted(supported))})")
        if not (self.convert_dir / "model.bin").is_file():
            from ctranslate2.converters import TransformersConverter

            tmp = self.convert_dir.with_name(self.convert_dir.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            TransformersConverter(str(self.model_dir)).convert(str(tmp), force=True)
            make_vocabulary_injective(tmp)
            tmp.rename(self.convert_dir)
        self._vocab = ct2_vocabulary(self.convert_dir)
        self._index = {t: i for i, t in enumerate(self._vocab)}
        threads = (self.threads or usable_cpus()) if dev == "cpu" else 0
        self._translator = ct2.Translator(str(self.convert_dir), device=dev, compute_type=compute,
                                          intra_threads=threads)
        self.extra = {"ctranslate2": ct2.__version__, "compute_type": compute}

    def run(self, w: Workload) -> RunOutput:
        src = [[self._vocab[i] for i in row] for row in w.input_ids.tolist()]
        seconds, res = timed(lambda: self._translator.translate_batch(
            src, beam_size=w.beams, num_hypotheses=1, max_decoding_length=w.new_tokens,
            min_decoding_length=w.new_tokens, return_end_token=True), self.sync)
        seqs = [[self._index[t] for t in r.hypotheses[0]] for r in res]
        return RunOutput(seconds, seqs)

    def close(self) -> None:
        self._translator = None


# ---------------------------------------------------------------------------------------
# Optimum ONNX Runtime (worker process)
# ---------------------------------------------------------------------------------------
WORKER = Path(__file__).with_name("optimum_worker.py")
OPTIMUM_PYTHON_ENV = "T5RT_BENCH_OPTIMUM_PYTHON"


@dataclass
class OptimumORT(System):
    model_dir: Path = Path(".")
    convert_dir: Path = Path(".")
    python: str = ""  # interpreter that has optimum-onnx; "" = this one
    log_path: Path | None = None
    _proc: Any = field(default=None, repr=False)
    _log: Any = field(default=None, repr=False)
    _start_id: int = 0

    def _call(self, msg: dict[str, Any]) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdin and self._proc.stdout
        self._proc.stdin.write(json.dumps(msg) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise Unavailable(f"optimum worker exited (code {self._proc.poll()}); see {self.log_path}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise Unavailable(reply.get("error", "optimum worker failed"))
        return reply

    def setup(self) -> None:
        python = self.python or os.environ.get(OPTIMUM_PYTHON_ENV) or sys.executable
        self._log = open(self.log_path, "a") if self.log_path else None  # noqa: SIM115
        try:
            self._proc = subprocess.Popen([python, str(WORKER)], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, text=True,
                                          stderr=self._log or subprocess.DEVNULL)
        except OSError as e:
            self.close()
            raise Unavailable(f"cannot start optimum worker with {python}: {one_line(e)}") from None
        self._start_id = int(json.loads((self.model_dir / "config.json").read_text())
                             .get("decoder_start_token_id") or 0)
        try:
            reply = self._call({"op": "setup", "model_dir": str(self.model_dir),
                                "onnx_dir": str(self.convert_dir), "device": self.device,
                                "precision": self.precision})
        except Unavailable as e:
            hint = "" if self.python or os.environ.get(OPTIMUM_PYTHON_ENV) else \
                " (optimum-onnx needs transformers<4.58: give its venv with --optimum-python)"
            self.close()
            raise Unavailable(f"{e}{hint}") from None
        self.extra = reply.get("versions", {})
        self.extra["python"] = python

    def run(self, w: Workload) -> RunOutput:
        reply = self._call({"op": "run", "input_ids": w.input_ids.tolist(),
                            "attention_mask": w.attention_mask.tolist(),
                            "new_tokens": w.new_tokens, "beams": w.beams})
        return RunOutput(float(reply["seconds"]),
                         strip_start(reply["sequences"], w.new_tokens, self._start_id))

    def close(self) -> None:
        if self._proc is not None:
            try:
                if self._proc.poll() is None and self._proc.stdin:
                    self._proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                    self._proc.stdin.flush()
                self._proc.wait(timeout=30)
            except Exception:  # noqa: BLE001 - a stuck worker is killed below
                self._proc.kill()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
