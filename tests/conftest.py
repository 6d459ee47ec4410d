"""Shared fixtures: tiny real T5 models (random weights, real architecture) and markers.

`gpu` tests need cupy + a CUDA device; `trt` tests need TensorRT (or TensorRT-RTX) and a GPU.
Both skip cleanly, with the reason, where that is absent.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
SPIECE = SHARED / "data" / "t5-spiece.model"

# Tiny shapes that still exercise every code path: 2 heads, relative buckets, tied/untied heads.
TINY = dict(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
            num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
            dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)

# Configurations named for the model families t5rt must cover (DESIGN.md §1, issue 2 item 4).
FAMILIES = {
    "t5-v1_0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "t5-v1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "odd-dims": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, d_kv=12, num_heads=3,
                     num_layers=3, num_decoder_layers=1, relative_attention_num_buckets=12,
                     relative_attention_max_distance=9),
}


def t5_config(**overrides):
    from transformers import T5Config

    kw = dict(TINY)
    kw.update(overrides)
    return T5Config(**kw)


def make_t5(seed: int = 0, **overrides):
    """A T5ForConditionalGeneration with random weights, in eval mode, fp32."""
    import torch
    from transformers import T5ForConditionalGeneration

    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(t5_config(**overrides)).eval()
    # Random init gives near-uniform logits; widen them so argmax decisions are well separated.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    return model


@pytest.fixture
def t5_factory(tmp_path):
    """make(seed=0, **config) -> (model, saved_dir): a tiny model saved in save_pretrained layout."""
    counter = iter(range(1000))

    def make(seed: int = 0, **overrides):
        model = make_t5(seed, **overrides)
        d = tmp_path / f"model{next(counter)}"
        model.save_pretrained(d)
        return model, d

    return make


@functools.lru_cache(maxsize=None)
def _gpu_reason() -> str | None:
    if importlib.util.find_spec("cupy") is None:
        return "cupy is not installed"
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA device"
    except Exception as e:  # noqa: BLE001 - any driver/runtime failure means no usable GPU
        return f"no usable CUDA device ({type(e).__name__}: {e})"
    return None


@functools.lru_cache(maxsize=None)
def _trt_reason() -> str | None:
    gpu = _gpu_reason()
    if gpu:
        return gpu
    from t5rt.engines import trt_compat  # a stub-only `tensorrt` folder does not count

    if trt_compat.pick_backend("cuda")[0] != "trt":
        return trt_compat.pick_backend("cuda")[1]
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "gpu" in item.keywords and (why := _gpu_reason()):
            item.add_marker(pytest.mark.skip(reason=f"gpu: {why}"))
        if "trt" in item.keywords and (why := _trt_reason()):
            item.add_marker(pytest.mark.skip(reason=f"trt: {why}"))
