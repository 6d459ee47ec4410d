"""Optimum ONNX Runtime peer, run as its own process: `python optimum_worker.py`.

optimum-onnx (ORTModelForSeq2SeqLM) pins transformers < 4.58, while t5rt's exporter uses
transformers 5, so the bench starts this file with an interpreter that has optimum-onnx
(--optimum-python) and talks to it in JSON lines on stdin/stdout. It imports nothing from
t5rt. Timing happens here, around generate() only, so the pipe does not count.

    -> {"op": "setup", "model_dir", "onnx_dir", "device", "precision"}
    <- {"ok": true, "versions": {...}}
    -> {"op": "run", "input_ids": [[...]], "attention_mask": [[...]], "new_tokens", "beams"}
    <- {"ok": true, "seconds": float, "sequences": [[...]]}
    -> {"op": "quit"}
    any failure <- {"ok": false, "error": "<Type>: <first line>"}
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

STATE: dict = {}


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__
    return text[:157] + "..." if len(text) > 160 else text


def setup(model_dir: str, onnx_dir: str, device: str, precision: str) -> dict:
    import onnxruntime
    import optimum
    import torch
    import transformers
    from optimum.onnxruntime import ORTModelForSeq2SeqLM

    if precision != "fp32":
        raise ValueError(f"this peer exports fp32 ONNX only (asked for {precision})")
    if device == "cuda":
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise RuntimeError("onnxruntime here has no CUDAExecutionProvider (install onnxruntime-gpu)")
        provider, kw = "CUDAExecutionProvider", {"use_io_binding": True}
    else:
        provider, kw = "CPUExecutionProvider", {}
    if os.path.isfile(os.path.join(onnx_dir, "config.json")):
        model = ORTModelForSeq2SeqLM.from_pretrained(onnx_dir, provider=provider, **kw)
    else:
        tmp = onnx_dir + ".tmp"
        model = ORTModelForSeq2SeqLM.from_pretrained(model_dir, export=True, provider=provider, **kw)
        model.save_pretrained(tmp)
        os.replace(tmp, onnx_dir)
    STATE.update(model=model, torch=torch, device=device)
    versions = {"optimum": getattr(optimum, "__version__", "?"), "transformers": transformers.__version__,
                "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "provider": provider}
    try:
        from importlib.metadata import version

        versions["optimum-onnx"] = version("optimum-onnx")
        versions["optimum"] = version("optimum")
    except Exception:  # noqa: BLE001
        pass
    return {"versions": versions}


def run(input_ids, attention_mask, new_tokens: int, beams: int) -> dict:
    torch, model, device = STATE["torch"], STATE["model"], STATE["device"]
    ids = torch.tensor(input_ids, dtype=torch.int64, device=device)  # [B, S]
    mask = torch.tensor(attention_mask, dtype=torch.int64, device=device)  # [B, S]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, num_beams=beams, do_sample=False)
    sync()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "sequences": out.tolist()}


HANDLERS: dict[str, Callable[..., dict]] = {"setup": setup, "run": run}


def main() -> None:
    # Replies go to the original stdout; anything the libraries print goes to stderr.
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        msg = json.loads(line)
        op = msg.pop("op")
        if op == "quit":
            break
        try:
            result = HANDLERS[op](**msg)
            result["ok"] = True
        except Exception as e:  # noqa: BLE001 - every failure goes back as a one-line reason
            result = {"ok": False, "error": _one_line(e)}
        reply.write(json.dumps(result) + "\n")
        reply.flush()


if __name__ == "__main__":
    main()
