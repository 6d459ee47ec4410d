"""exporters/fusion.py: the speed passes keep every graph's outputs (ORT CPU, fp32) and cut nodes.

Each test exports a tiny real T5 twice from the same weights, once with the passes off and once
with them on, and compares both ONNX graphs run by ONNX Runtime on the same inputs; the
end-to-end check compares greedy generate() of the fused export with Hugging Face.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import FAMILIES, make_t5

ort = pytest.importorskip("onnxruntime")
gs = pytest.importorskip("onnx_graphsurgeon")

from t5rt.exporters import fusion  # noqa: E402
from t5rt.exporters.options import ExportOptions  # noqa: E402
from t5rt.exporters.pipeline import export  # noqa: E402
from t5rt.manifest import Manifest  # noqa: E402

RTOL = 1e-5
OFF = fusion.FusionOptions.from_spec("none")
ON = fusion.FusionOptions()


def _export(model, out: Path, fusion_options, **kw) -> Manifest:
    opts = ExportOptions(max_input_len=16, max_output_len=12, validate=False, **kw)
    return export(model, out, opts, log=lambda *_: None, fusion_options=fusion_options)


def _inputs(m: Manifest, graph: str, B: int = 2, S: int = 6, T: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in m.graphs[graph].inputs:
        shape = [{"batch": B, "src_len": S, "cache_len": T}.get(d, d) for d in spec.shape]
        if spec.name in ("input_ids",):
            feeds[spec.name] = rng.integers(2, m.dims.vocab_size, shape).astype(np.int64)
        elif spec.name == "position":
            feeds[spec.name] = np.array([3, T - 1][:B] + [0] * max(0, B - 2), np.int64)
        elif "mask" in spec.name:
            mask = np.ones(shape, np.int64)
            mask[0, -2:] = 0
            feeds[spec.name] = mask
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _run(m: Manifest, graph: str, feeds) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(m.directory / m.graphs[graph].file), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        scale = max(float(np.abs(a[k]).max()), 1e-6)
        err = float(np.abs(a[k] - b[k]).max()) / scale
        assert err <= RTOL, f"{k}: max |fused - plain| / max |plain| = {err:.2e} > {RTOL}"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """family -> (plain export, fused export) of one tiny model per family."""
    out = {}
    for i, (family, cfg) in enumerate(FAMILIES.items()):
        model = make_t5(seed=i, **cfg)
        base = tmp_path_factory.mktemp(family)
        out[family] = (_export(model, base / "plain", OFF), _export(model, base / "fused", ON))
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("graph", ["encoder", "cross_kv", "decoder_step"])
def test_fused_graph_matches_plain(pairs, family, graph):
    plain, fused = pairs[family]
    feeds = _inputs(plain, graph)
    _assert_same(_run(plain, graph, feeds), _run(fused, graph, feeds))
    assert plain.graphs[graph].inputs == fused.graphs[graph].inputs
    assert plain.graphs[graph].outputs == fused.graphs[graph].outputs


def _ops(m: Manifest, graph: str) -> dict[str, int]:
    import onnx

    return fusion.count_ops(onnx.load(str(m.directory / m.graphs[graph].file), load_external_data=False))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_passes_cut_nodes(pairs, family):
    plain, fused = pairs[family]
    L = plain.dims.num_decoder_layers
    enc, xkv, dec = (_ops(fused, g) for g in ("encoder", "cross_kv", "decoder_step"))
    # encoder: no run-time shape plumbing left; q/k/v is one MatMul per layer
    assert not {"Slice", "Concat"} & enc.keys(), enc
    assert enc["MatMul"] < _ops(plain, "encoder")["MatMul"]
    # cross_kv: one GEMM, one Transpose, one Split for all 2L outputs
    assert xkv.get("MatMul") == 1 and xkv.get("Split") == 1 and xkv.get("Transpose") == 1, xkv
    # decoder step: self-attention q/k/v fused (and gated wi_0/wi_1 where present)
    gated = FAMILIES[family]["feed_forward_proj"].startswith("gated")
    assert dec["MatMul"] == _ops(plain, "decoder_step")["MatMul"] - L * (2 + int(gated)), dec
    assert dec["Split"] == L * (1 + int(gated))


def test_fused_graphs_fold_under_ort(pairs):
    """After ORT's own optimizations the fused graphs still have fewer nodes (the number that costs kernels)."""
    plain, fused = pairs["t5-v1_1"]

    def after_ort(m: Manifest, graph: str) -> int:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        path = m.directory / f"{graph}.opt.onnx"
        so.optimized_model_filepath = str(path)
        ort.InferenceSession(str(m.directory / m.graphs[graph].file), so, providers=["CPUExecutionProvider"])
        import onnx

        return len(onnx.load(str(path), load_external_data=False).graph.node)

    for graph in ("encoder", "cross_kv", "decoder_step"):
        assert after_ort(fused, graph) < after_ort(plain, graph), graph


def test_inplace_form_fuses_too(tmp_path):
    model = make_t5(seed=3, **FAMILIES["t5-v1_0"])
    plain = _export(model, tmp_path / "plain", OFF, cache_update="inplace")
    fused = _export(model, tmp_path / "fused", ON, cache_update="inplace")
    feeds = _inputs(plain, "decoder_step")
    _assert_same(_run(plain, "decoder_step", feeds), _run(fused, "decoder_step", feeds))
    assert _ops(fused, "decoder_step")["TensorScatter"] == 2 * plain.dims.num_decoder_layers


def test_fused_export_generates_like_hf(tmp_path):
    """Greedy and beam generate() of the fused export are token-identical to transformers (fp32, ORT CPU)."""
    import torch

    import t5rt

    model = make_t5(seed=5, **FAMILIES["t5-v1_1"])
    _export(model, tmp_path / "fused", ON)
    rt = t5rt.load(tmp_path / "fused", backend="ort", device="cpu")
    ids = np.array([[5, 17, 42, 9, 1, 0], [7, 8, 9, 10, 11, 1]], np.int64)
    mask = (ids != 0).astype(np.int64)
    for beams in (1, 3):
        with torch.no_grad():
            ref = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                 max_new_tokens=10, do_sample=False, num_beams=beams)[:, 1:].tolist()
        ref = [s[:len(s) - next((i for i, t in enumerate(reversed(s)) if t != 0), len(s))] for s in ref]
        got = rt.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, num_beams=beams).sequences
        assert got == ref, f"num_beams={beams}"


def test_options_from_spec():
    assert fusion.FusionOptions.from_spec(None).enabled == fusion.PASSES
    assert fusion.FusionOptions.from_spec("none").enabled == ()
    assert fusion.FusionOptions.from_spec("static_reshapes").enabled == ("static_reshapes",)
    assert fusion.FusionOptions.from_spec("-fuse_head_transposes").enabled == fusion.PASSES[:-1]
    with pytest.raises(ValueError, match="unknown fusion pass 'qkv'"):
        fusion.FusionOptions.from_spec("qkv")
    os.environ.pop(fusion.ENV, None)
    assert fusion.FusionOptions.from_env() == ON
