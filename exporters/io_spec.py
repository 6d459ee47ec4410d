"""I/O names, dtypes and symbolic shapes of the three graphs, and their manifest roles.

The single place graph tensor names are made (t5rt.manifest documents the contract); the
tracer, the I/O naming patch, validation and the manifest all read them from here. Input and
output order matches the wrapper modules of exporters/wrap.py.
"""

from __future__ import annotations

from typing import Any

from t5rt.manifest import PRECISION_DTYPE, TensorSpec, canonical_roles

B, S, T = "batch", "src_len", "cache_len"


def _layers(cfg) -> range:
    return range(cfg.num_decoder_layers)


def encoder_io(cfg, precision: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    act = PRECISION_DTYPE[precision]
    return ([TensorSpec("input_ids", "int64", (B, S)), TensorSpec("attention_mask", "int64", (B, S))],
            [TensorSpec("hidden", act, (B, S, cfg.d_model))])


def cross_kv_io(cfg, precision: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    act = PRECISION_DTYPE[precision]
    kv = (B, cfg.num_heads, S, cfg.d_kv)
    outs = []
    for l in _layers(cfg):
        outs += [TensorSpec(f"cross_k.{l}", act, kv), TensorSpec(f"cross_v.{l}", act, kv)]
    return [TensorSpec("hidden", act, (B, S, cfg.d_model))], outs


def decoder_step_io(cfg, precision: str, cache_update: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    act = PRECISION_DTYPE[precision]
    H, Dk = cfg.num_heads, cfg.d_kv
    ins = [TensorSpec("input_ids", "int64", (B, 1)), TensorSpec("position", "int64", (B,)),
           TensorSpec("encoder_attention_mask", "int64", (B, S))]
    for kind, shape in (("cross_k", (B, H, S, Dk)), ("cross_v", (B, H, S, Dk)),
                        ("self_k", (B, H, T, Dk)), ("self_v", (B, H, T, Dk))):
        ins += [TensorSpec(f"{kind}.{l}", act, shape) for l in _layers(cfg)]
    outs = [TensorSpec("logits", "float32", (B, cfg.vocab_size))]
    for l in _layers(cfg):
        if cache_update == "write":
            outs += [TensorSpec(f"new_self_k.{l}", act, (B, H, 1, Dk)), TensorSpec(f"new_self_v.{l}", act, (B, H, 1, Dk))]
        else:
            outs += [TensorSpec(f"present_self_k.{l}", act, (B, H, T, Dk)),
                     TensorSpec(f"present_self_v.{l}", act, (B, H, T, Dk))]
    return ins, outs


def graph_io(graph: str, cfg, precision: str, cache_update: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    if graph == "encoder":
        return encoder_io(cfg, precision)
    if graph == "cross_kv":
        return cross_kv_io(cfg, precision)
    if graph == "decoder_step":
        return decoder_step_io(cfg, precision, cache_update)
    raise KeyError(f"unknown graph {graph!r}")


def roles(cfg, cache_update: str) -> dict[str, dict[str, Any]]:
    """What each tensor is -> its name, per graph (lists are per decoder layer): t5rt.manifest's
    canonical_roles, which load() requires."""
    return canonical_roles(cfg.num_decoder_layers, cache_update)
