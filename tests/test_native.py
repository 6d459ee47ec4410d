"""backend="native": the decoder weights file, the NumPy reference of the native step, and (marked
gpu) the CUDA kernels against the reference, the ONNX Runtime step and Hugging Face generate().

CPU: the reference (t5rt.kernels.native_reference, the spec the kernels implement) reads the
export's decoder_weights.safetensors and must match ONNX Runtime's decoder_step logits and
Hugging Face's greedy tokens, so a wrong weight, bucket table or activation fails here first.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import FAMILIES, export_tiny, hf_generate, make_t5, padded_inputs

import t5rt
from t5rt import weights
from t5rt.errors import BackendError, NotAnExportError
from t5rt.kernels import native_reference as R

# shapes the parity tests cover: relu tied (v1.0), gated-gelu untied (v1.1), and
# num_heads * d_kv != d_model with asymmetric depth and non-default buckets (odd-dims)
SHAPES = {
    **FAMILIES,
    "wide-vec": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=True, d_model=64, d_kv=16, num_heads=4,
                     d_ff=128, num_layers=3, num_decoder_layers=2, relative_attention_num_buckets=16,
                     relative_attention_max_distance=40),
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """family -> (HF model, fp32 export dir); built once per module."""
    out = {}
    for i, (name, cfg) in enumerate(SHAPES.items()):
        model = make_t5(seed=10 + i, **cfg)
        out[name] = (model, export_tiny(model, tmp_path_factory, f"native-{name}"))
    return out


def _model(export_dir):
    from t5rt.engines.native import load_model
    from t5rt.manifest import load_manifest

    return load_model(load_manifest(export_dir))


def _reference_greedy(m, rt, ids, mask, steps):
    """Greedy decoding with the NumPy reference step on the export's encoder + cross K/V (ORT CPU)."""
    enc = rt.runner.encode(ids, mask)
    n, L = ids.shape[0], len(m.layers)
    T = steps + 1
    self_k = [np.zeros((n, m.heads, T, m.d_kv), enc.cross_k[0].dtype) for _ in range(L)]
    self_v = [np.zeros_like(c) for c in self_k]
    tok = np.full((n, 1), rt.manifest.special_tokens.decoder_start_token_id, np.int64)
    out, all_logits = [], []
    for t in range(steps):
        logits = R.decoder_step(m, tok, np.full(n, t, np.int64), enc.attention_mask, enc.cross_k, enc.cross_v,
                                self_k, self_v)
        all_logits.append(logits)
        tok = logits.argmax(-1)[:, None]
        out.append(tok[:, 0])
    return np.stack(out, 1), all_logits, enc


# ---- the weights file ----------------------------------------------------------------------


def test_weights_file_roundtrip_and_damage(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5)).astype(np.float32)
    tensors = {"a": (x, "float32"), "b": (weights.to_storage(x, "bfloat16"), "bfloat16"),
               "c": (x.astype(np.float16), "float16"), "d": (np.arange(4, dtype=np.int32), "int32")}
    path = tmp_path / "w.safetensors"
    weights.write(path, tensors)
    back = weights.read(path)
    assert np.array_equal(back["a"], x)
    assert np.array_equal(back["b"], tensors["b"][0]) and back["b"].dtype == np.uint16
    assert np.allclose(weights.from_storage(back["b"], "bfloat16"), x, rtol=1e-2)
    assert np.array_equal(back["c"], x.astype(np.float16)) and np.array_equal(back["d"], np.arange(4))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(NotAnExportError, match="not a readable weights file"):
        weights.read(path)


def test_export_lists_weights_and_load_verifies_them(exports):
    from t5rt.engines.native import unsupported_reason, weights_path
    from t5rt.manifest import load_manifest

    _, d = exports["t5-v1_0"]
    m = load_manifest(d)
    assert m.weights is not None and unsupported_reason(m) is None
    raw = json.loads((d / "manifest.json").read_text())["weights"]
    assert raw["file"] == weights.FILE_NAME and "decoder.relative_buckets" in raw["dtypes"]
    assert abs(m.weights.logit_scale - 32 ** -0.5) < 1e-7  # tied v1.0: d_model ** -0.5
    assert weights_path(m).is_file()
    bad = weights.WeightsSpec(file="../x.safetensors", sha256=m.weights.sha256, dtypes={})
    import dataclasses

    with pytest.raises(NotAnExportError, match="plain file name"):
        weights_path(dataclasses.replace(m, weights=bad))
    wrong = dataclasses.replace(m, weights=dataclasses.replace(m.weights, sha256="0" * 64))
    with pytest.raises(NotAnExportError, match="sha256"):
        weights_path(wrong)


def test_native_needs_cuda_and_weights(exports, tmp_path_factory):
    from t5rt.engines.native import unsupported_reason
    from t5rt.manifest import load_manifest

    _, d = exports["t5-v1_0"]
    with pytest.raises(BackendError, match="CUDA only"):
        t5rt.load(d, backend="native", device="cpu")
    bare = export_tiny(make_t5(seed=3), tmp_path_factory, "native-bare", native_weights=False)
    assert "no decoder_weights" in unsupported_reason(load_manifest(bare))


# ---- the NumPy reference against ONNX Runtime and Hugging Face ---------------------------


@pytest.mark.parametrize("shape", list(SHAPES))
def test_reference_matches_ort_step_and_hf_greedy(exports, shape):
    model, d = exports[shape]
    m = _model(d)
    rt = t5rt.load(d, backend="ort", device="cpu")
    ids, mask = padded_inputs(seed=5, lens=(7, 12, 3))
    steps = 10
    tokens, logits, enc = _reference_greedy(m, rt, ids, mask, steps)
    hf, _ = hf_generate(model, ids, mask, max_new_tokens=steps, num_beams=1)  # stops at eos: compare that prefix
    for b in range(len(hf)):
        assert tokens[b, :len(hf[b])].tolist() == hf[b], f"{shape} row {b}"
    # the ORT decoder step on the same tokens: logits within 1e-4 of the reference
    slot = rt.runner.decoder_slot(enc, 1, steps + 1)
    bufs = slot.bufs
    bufs.clear_caches()
    bufs.input_ids[:, 0] = rt.manifest.special_tokens.decoder_start_token_id
    for t in range(steps):
        bufs.position[...] = t
        bufs.engine.run()
        slot.cache.write(bufs.position)
        ref = logits[t]
        assert np.abs(bufs.logits - ref).max() <= 1e-4 * np.abs(ref).max(), f"{shape} step {t}"
        bufs.input_ids[:, 0] = tokens[:, t]
