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


@pytest.fixture(scope="session")
def host_kernels(tmp_path_factory):
    """kernels/*.cu compiled for the CPU once per session (t5rt.kernels.host.HostKernels, a
    launcher every t5rt.kernels wrapper takes); skips only where no C++ compiler exists."""
    from t5rt.kernels import host

    if host.compiler() is None:
        pytest.skip("no C++ compiler for the host build of kernels/*.cu")
    return host.HostKernels(tmp_path_factory.mktemp("host_kernels"))


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


# -- helpers shared by the runtime tests -------------------------------------------------------


def export_tiny(model, tmp_path_factory, name, extra_files=(), **opts):
    """Save `model` in save_pretrained layout (plus `extra_files`, e.g. SPIECE) and export it
    with t5rt's exporter; -> export dir."""
    import shutil

    from t5rt.exporters.options import ExportOptions
    from t5rt.exporters.pipeline import export

    src = tmp_path_factory.mktemp(f"{name}-src")
    model.save_pretrained(src)
    for f in extra_files:
        shutil.copy(f, src)
    out = tmp_path_factory.mktemp(f"{name}-export")
    kw = dict(max_input_len=64, max_output_len=48, validate=False)
    kw.update(opts)
    export(str(src), out, ExportOptions(**kw), log=lambda *a, **k: None)
    return out


def padded_inputs(seed=0, lens=(7, 12, 3), vocab=384):
    """Right-padded random token ids ending in eos, and their mask: ([B, S] int64, [B, S] int64)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lens), max(lens)), np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lens):
        ids[i, :n] = rng.integers(2, vocab, n)
        ids[i, n - 1] = 1  # eos, as the tokenizer appends it
        mask[i, :n] = 1
    return ids, mask


def hf_generate(model, ids, mask, **kw):
    """Hugging Face generate() on numpy inputs -> (sequences without start token and padding, raw output)."""
    import torch

    with torch.no_grad():
        out = model.generate(input_ids=torch.from_numpy(ids).to(model.device),
                             attention_mask=torch.from_numpy(mask).to(model.device),
                             do_sample=False, return_dict_in_generate=True, output_scores=True, **kw)
    pad = model.config.pad_token_id
    seqs = []
    for s in out.sequences[:, 1:].tolist():
        while s and s[-1] == pad:
            s = s[:-1]
        seqs.append(s)
    return seqs, out


def tiny_spiece(path):
    """Train a 40-piece sentencepiece model (T5 ids: pad 0, eos 1, unk 2) at `path`; with T5's
    100 extra ids its vocabulary (140) fits the TINY models' 384, so text round-trips."""
    import io
    import random

    import sentencepiece as spm

    words = "the quick brown fox jumps over a lazy dog summarize translate English to German hello world".split()
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(300)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=buf, vocab_size=40, pad_id=0,
                                   eos_id=1, unk_id=2, bos_id=-1, model_type="unigram", minloglevel=2)
    path = Path(path)
    path.write_bytes(buf.getvalue())
    return path
