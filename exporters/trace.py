"""Trace the wrapper modules of exporters/wrap.py to ONNX (TorchScript exporter, dynamo=False).

Each `trace_*` function knows its graph's I/O names (from exporters/io_spec.py) and dynamic
axes, builds small dummy inputs whose sizes differ from every model dim (so the tracer cannot
confuse a dynamic dim with a constant) and returns an in-memory `onnx.ModelProto`. Export goes
through a file in `workdir` so models over 2 GB (external data) trace too.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import onnx
import torch

from . import io_spec
from .wrap import CrossKVGraph, DecoderStepGraph, EncoderGraph

# Dummy sizes: batch, source length, cache length; chosen to differ from each other and from tiny dims.
_B, _S, _T = 2, 5, 7
# The TorchScript exporter's highest opset; higher opsets are reached by onnx.version_converter.
TRACE_MAX_OPSET = 20


def _export(module: torch.nn.Module, args: tuple, input_names: list[str], output_names: list[str],
            dynamic_axes: dict[str, dict[int, str]], opset: int, workdir: Path | None) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / "graph.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            torch.onnx.export(
                module, args, str(path), dynamo=False, opset_version=min(opset, TRACE_MAX_OPSET),
                input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
                do_constant_folding=True)
        return onnx.load(str(path), load_external_data=True)


def _dyn(specs) -> dict[str, dict[int, str]]:
    return {s.name: {i: d for i, d in enumerate(s.shape) if isinstance(d, str)} for s in specs}


def trace_encoder(model: torch.nn.Module, max_input_len: int, opset: int,
                  workdir: Path | None = None) -> tuple[EncoderGraph, onnx.ModelProto]:
    module = EncoderGraph(model, max_input_len).eval()
    ins, outs = io_spec.encoder_io(model.config, "fp32")
    ids = torch.randint(0, model.config.vocab_size, (_B, _S))
    mask = torch.ones(_B, _S, dtype=torch.long)
    return module, _export(module, (ids, mask), [s.name for s in ins], [s.name for s in outs],
                           _dyn(ins + outs), opset, workdir)


def trace_cross_kv(model: torch.nn.Module, opset: int,
                   workdir: Path | None = None) -> tuple[CrossKVGraph, onnx.ModelProto]:
    module = CrossKVGraph(model).eval()
    ins, outs = io_spec.cross_kv_io(model.config, "fp32")
    hidden = torch.randn(_B, _S, model.config.d_model)
    return module, _export(module, (hidden,), [s.name for s in ins], [s.name for s in outs],
                           _dyn(ins + outs), opset, workdir)


def trace_decoder_step(model: torch.nn.Module, max_output_len: int, logit_scale: float, opset: int,
                       workdir: Path | None = None) -> tuple[DecoderStepGraph, onnx.ModelProto]:
    """Traces the "write" cache form; patches.cache_update_inplace derives the other."""
    module = DecoderStepGraph(model, max_output_len, logit_scale).eval()
    cfg = model.config
    ins, outs = io_spec.decoder_step_io(cfg, "fp32", "write")
    args = decoder_step_dummy_inputs(cfg, _B, _S, _T)
    return module, _export(module, args, [s.name for s in ins], [s.name for s in outs],
                           _dyn(ins + outs), opset, workdir)


def decoder_step_dummy_inputs(cfg, B: int, S: int, T: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random decoder_step inputs in graph input order (positions in [0, T), some source rows masked)."""
    g = torch.Generator().manual_seed(seed)
    L, H, Dk = cfg.num_decoder_layers, cfg.num_heads, cfg.d_kv
    ids = torch.randint(0, cfg.vocab_size, (B, 1), generator=g)
    position = torch.randint(0, T, (B,), generator=g)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[0, S - S // 3:] = 0  # a padded source row
    cross = [torch.randn(B, H, S, Dk, generator=g) for _ in range(2 * L)]
    selfs = [torch.randn(B, H, T, Dk, generator=g) for _ in range(2 * L)]
    return (ids, position, mask, *cross, *selfs)
