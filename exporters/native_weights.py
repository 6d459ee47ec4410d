"""The decoder weights file of the native engine (t5rt.weights; DESIGN.md §9), written at export.

Holds Hugging Face's decoder tensors under their state_dict names, in the dtypes the ONNX export
computes with (so `backend="native"` rounds exactly as decoder_step.onnx does):

    decoder.embed_tokens.weight                 [V, d]      act dtype
    decoder.block.{l}.layer.0.layer_norm.weight [d]         act dtype (HF: weight * x.to(dtype))
    decoder.block.{l}.layer.0.SelfAttention.{q,k,v,o}.weight, ...layer.1.EncDecAttention.{q,o}.weight,
    decoder.block.{l}.layer.2.DenseReluDense.{wi | wi_0, wi_1, wo}.weight     act dtype, [out, in]
    decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight [buckets, H] act dtype
    decoder.final_layer_norm.weight             [d]         float32 (the logits island is fp32)
    lm_head.weight                              [V, d]      float32 (absent: fp32 tied export, use
                                                            decoder.embed_tokens.weight)
    decoder.relative_buckets                    [R + 1]     int32: HF's bucket of distance 0..R
                                                            (R = max(max_output_len - 1, max_distance))

Cross-attention k/v are not here: the cross_kv graph computes them once per request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from t5rt import weights
from t5rt.manifest import PRECISION_DTYPE, sha256_file

from .precision import PrecisionOptions
from .wrap import bucket_table


def write_decoder_weights(model: Any, out_dir: Path, precision: str, max_output_len: int,
                          logit_scale: float) -> weights.WeightsSpec:
    """Write out_dir/decoder_weights.safetensors from an fp32 HF T5 model -> its manifest entry."""
    act = PRECISION_DTYPE[precision]
    state = {k: v.detach().to(torch.float32).cpu().numpy() for k, v in model.state_dict().items()}
    tensors: dict[str, tuple[np.ndarray, str]] = {}

    def put(name: str, dtype: str, values: np.ndarray | None = None) -> None:
        v = state[name] if values is None else values
        tensors[name] = (weights.to_storage(v, dtype) if dtype != "int32" else v, dtype)

    put("decoder.embed_tokens.weight", act, model.get_input_embeddings().weight.detach().float().cpu().numpy())
    for name in state:
        if not name.startswith("decoder.block."):
            continue
        if ".EncDecAttention.k." in name or ".EncDecAttention.v." in name:
            continue  # the cross_kv graph's
        put(name, act)
    put("decoder.final_layer_norm.weight", "float32")
    tied = bool(getattr(model.config, "tie_word_embeddings", True))
    if not (tied and act == "float32"):
        put("lm_head.weight", "float32", model.lm_head.weight.detach().float().cpu().numpy())
    attn0 = model.decoder.block[0].layer[0].SelfAttention
    radius = max(max_output_len - 1, attn0.relative_attention_max_distance)
    buckets = bucket_table(attn0, radius, bidirectional=False).numpy().astype(np.int32)  # [R + 1]
    put("decoder.relative_buckets", "int32", buckets)
    path = Path(out_dir) / weights.FILE_NAME
    dtypes = weights.write(path, tensors)
    popts = PrecisionOptions()  # what exporters/precision.py applied to the graphs
    clamp = popts.clamp_value if precision != "fp32" and popts.clamp_for(precision) else 0.0
    return weights.WeightsSpec(file=path.name, sha256=sha256_file(path), dtypes=dtypes,
                               logit_scale=float(logit_scale), residual_clamp=float(clamp))
