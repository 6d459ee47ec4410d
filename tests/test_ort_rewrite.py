"""ort_rewrite: residual Add + RMSNorm -> com.microsoft.SkipSimplifiedLayerNormalization.

Real exports of tiny T5 models (conftest families), rewritten in memory, run by ONNX Runtime's
CPU EP (which implements the contrib op) against the unrewritten graphs, and end to end through
t5rt.load(..., backend="ort") against Hugging Face generate().
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

import t5rt

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import FAMILIES, export_tiny as _export, make_t5, padded_inputs as _inputs  # noqa: E402
from conftest import hf_generate  # noqa: E402
from t5rt.engines.ort_rewrite import FUSED_OP, NORM_OP, fuse_skip_rmsnorm, rewrite_model_file  # noqa: E402
from t5rt.manifest import GRAPH_NAMES, load_manifest  # noqa: E402

# nodes of one residual Add + RMSNorm: Add, Pow, ReduceMean, Add(eps), Sqrt, Div(1, .), Mul(x), Mul(w)
NODES_PER_FUSION = 8


CASES = {
    # name: (seed, config overrides, export options)
    "v11": (21, FAMILIES["t5-v1_1"], {}),
    "odd": (22, FAMILIES["odd-dims"], {}),
    # opset 24: ReduceMean takes its axes as an input; in-place cache (TensorScatter)
    "v10-inplace": (23, dict(FAMILIES["t5-v1_0"], num_layers=3, num_decoder_layers=2),
                    dict(cache_update="inplace", opset=24)),
}


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    seed, cfg, opts = CASES[request.param]
    model = make_t5(seed, **cfg)
    return model, _export(model, tmp_path_factory, request.param, **opts)


def _expected_fusions(cfg, graph: str) -> int:
    """Every norm but the first of a stack reads a residual Add (the first reads the embedding)."""
    if graph == "encoder":
        return 2 * cfg.num_layers          # 2 sublayers per block; the final norm is the last one's
    if graph == "decoder_step":
        return 3 * cfg.num_decoder_layers
    return 0                               # cross_kv: projections of the encoder output only


def _op_counts(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def _feeds(spec, m, rng, batch=3, src_len=7):
    """Random inputs for one graph, named and shaped by the manifest."""
    cache_len = min(m.max_output_len, 11)
    sizes = {"batch": batch, "src_len": src_len, "cache_len": cache_len}
    feeds = {}
    for t in spec.inputs:
        shape = [sizes.get(d, d) if isinstance(d, str) else d for d in t.shape]
        assert all(isinstance(d, int) for d in shape), f"unknown dim in {t.name}: {t.shape}"
        if t.name in ("input_ids",):
            feeds[t.name] = rng.integers(2, m.config["vocab_size"], shape).astype(np.int64)
        elif "mask" in t.name:
            mask = np.ones(shape, np.int64)
            mask[0, shape[1] // 2:] = 0          # one padded row
            feeds[t.name] = mask
        elif t.name == "position":
            feeds[t.name] = rng.integers(0, cache_len, shape).astype(np.int64)
        else:
            feeds[t.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _session(model_or_path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    src = model_or_path if isinstance(model_or_path, (str, bytes)) else model_or_path.SerializeToString()
    return ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])


def test_node_counts_drop_by_the_fused_norms(exported):
    model, d = exported
    m = load_manifest(d)
    for g in GRAPH_NAMES:
        graph = onnx.load(str(m.graph_path(g)))
        before = _op_counts(graph)
        report = fuse_skip_rmsnorm(graph)
        after = _op_counts(graph)
        want = _expected_fusions(model.config, g)
        assert report.fused == want, (g, report.summary())
        assert after.get(FUSED_OP, 0) == want
        # each fusion: 8 real nodes -> 1 (Constant nodes for eps / 2 / 1 may go too)
        real = lambda c: sum(v for k, v in c.items() if k != "Constant")  # noqa: E731
        assert real(before) - real(after) == (NODES_PER_FUSION - 1) * want, g
        assert after.get("Pow", 0) == before.get("Pow", 0) - want
        if want:
            onnx.checker.check_model(graph)
            # the first norm of each stack stays, for ORT's own SimplifiedLayerNormFusion
            assert report.skipped == {"norm input comes from Gather, not a residual Add": 1}


def test_outputs_equal_unrewritten_graph(exported):
    _, d = exported
    m = load_manifest(d)
    rng = np.random.default_rng(0)
    for g in GRAPH_NAMES:
        path = str(m.graph_path(g))
        data, why = rewrite_model_file(path)
        if g == "cross_kv":
            assert data is None and "nothing to fuse" in why
            continue
        assert data is not None, why
        feeds = _feeds(m.graphs[g], m, rng)
        ref = _session(path).run(None, feeds)
        got = _session(data).run(None, feeds)
        names = [t.name for t in m.graphs[g].outputs]
        for name, r, o in zip(names, ref, got):
            assert o.shape == r.shape, name
            scale = max(float(np.abs(r).max()), 1e-30)
            err = float(np.abs(o.astype(np.float64) - r).max()) / scale
            assert err <= 1e-5, f"{g}:{name} differs by {err:.2e} (relative to max |x|)"


@pytest.mark.parametrize("how", [dict(num_beams=1), dict(num_beams=3, num_return_sequences=2, length_penalty=0.8)])
def test_generate_with_rewrite_matches_hf(exported, how):
    model, d = exported
    rt = t5rt.load(d, backend="ort", device="cpu")  # ort_rewrite defaults to on
    dec = rt.runner.sessions["decoder_step"]
    assert dec.rewrite_note.startswith(f"{3 * model.config.num_decoder_layers} fused"), dec.rewrite_note
    assert any(n.op_type == FUSED_OP for n in onnx.load_model_from_string(
        rewrite_model_file(load_manifest(d).graph_path("decoder_step"))[0]).graph.node)
    ids, mask = _inputs(3)
    ref = hf_generate(model, ids, mask, max_new_tokens=20, min_new_tokens=20, **how)[0]
    out = rt.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, min_new_tokens=20, **how)
    assert out.sequences == ref


def test_rewrite_can_be_switched_off(exported):
    _, d = exported
    rt = t5rt.load(d, backend="ort", device="cpu", ort_rewrite=False)
    assert all(s.rewrite_note == "off" for s in rt.runner.sessions.values())


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_low_precision_export_is_left_alone(tmp_path_factory, caplog, precision):
    """fp16 clips the residual sum between the Add and the norm (a fused kernel would normalise
    the unclipped fp32 sum) and bf16 is not exact either: nothing is rewritten, the reason is logged."""
    from t5rt.engines.ort_rewrite import LOW_PRECISION

    model = make_t5(24, **FAMILIES["t5-v1_1"])
    d = _export(model, tmp_path_factory, precision, precision=precision)
    m = load_manifest(d)
    for g in GRAPH_NAMES:
        data, why = rewrite_model_file(m.graph_path(g))
        assert data is None, (g, why)
        if g != "cross_kv":
            assert LOW_PRECISION in why
    if precision == "fp16":  # ORT's CPU EP has no bf16 kernels for these graphs
        with caplog.at_level(logging.INFO, logger="t5rt.ort"):
            rt = t5rt.load(d, backend="ort", device="cpu")
        assert all(s.rewrite_note.startswith("nothing to fuse") for s in rt.runner.sessions.values())
        assert "ort_rewrite decoder_step.onnx: nothing to fuse" in caplog.text


# nodes of one bf16 norm island: Cast, Pow, ReduceMean, Add(eps), Sqrt, Div(1, .), Mul(x), Cast, Mul(w)
NODES_PER_BF16_ISLAND = 9


@pytest.fixture(scope="module")
def bf16_export(tmp_path_factory):
    model = make_t5(25, **FAMILIES["t5-v1_1"])
    return model, _export(model, tmp_path_factory, "bf16-islands", precision="bf16")


def test_bf16_islands_become_one_norm_in_cuda_mode(bf16_export):
    """cuda=True: every bf16 norm island but the decoder's final one (fp32 logits) -> one node."""
    model, d = bf16_export
    m, cfg = load_manifest(d), model.config
    expected = {"encoder": 2 * cfg.num_layers + 1, "decoder_step": 3 * cfg.num_decoder_layers, "cross_kv": 0}
    for g in GRAPH_NAMES:
        before = onnx.load(str(m.graph_path(g)))
        data, why = rewrite_model_file(m.graph_path(g), cuda=True)
        if not expected[g]:
            assert data is None, why
            continue
        assert data is not None and why.startswith(f"{expected[g]} fused"), (g, why)
        after = onnx.load_from_string(data)
        ops_before, ops_after = _op_counts(before), _op_counts(after)
        assert ops_after.get(NORM_OP, 0) == expected[g]
        assert ops_after.get("Pow", 0) == ops_before["Pow"] - expected[g]
        assert len(before.graph.node) - len(after.graph.node) >= expected[g] * (NODES_PER_BF16_ISLAND - 1)
        assert [i.name for i in after.graph.input] == [i.name for i in before.graph.input]
        assert [o.name for o in after.graph.output] == [o.name for o in before.graph.output]
        inits = {t.name: t for t in after.graph.initializer}
        for n in after.graph.node:
            if n.op_type == NORM_OP:
                gamma = inits[n.input[1]]
                assert gamma.data_type == onnx.TensorProto.BFLOAT16 and len(gamma.dims) == 1
                assert n.domain == "" and {a.name for a in n.attribute} >= {"axis", "epsilon", "stash_type"}
        if g == "decoder_step":
            assert "final norm before fp32 logits" in why


def test_missing_onnx_means_no_rewrite(exported, monkeypatch):
    import t5rt.engines.ort_rewrite as rw

    monkeypatch.setattr(rw, "_import_onnx", lambda: None)
    _, d = exported
    data, why = rw.rewrite_model_file(load_manifest(d).graph_path("decoder_step"))
    assert data is None and "onnx package is not installed" in why


# ---------------------------------------------------------------------------------------------
# GPU (H100): the CUDA EP's SkipSimplifiedLayerNormalization kernel
# ---------------------------------------------------------------------------------------------

def _cuda_ep_reason():
    return None if "CUDAExecutionProvider" in ort.get_available_providers() else \
        "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"


@pytest.mark.gpu
def test_cuda_outputs_equal_unrewritten_graph(exported):
    if why := _cuda_ep_reason():
        pytest.skip(why)
    _, d = exported
    m = load_manifest(d)
    rng = np.random.default_rng(1)
    cuda = [("CUDAExecutionProvider", {"use_tf32": "0"})]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    for g in ("encoder", "decoder_step"):
        path = str(m.graph_path(g))
        data, why = rewrite_model_file(path)
        assert data is not None, why
        fused = ort.InferenceSession(data, sess_options=so, providers=cuda)
        assert fused.get_providers()[0] == "CUDAExecutionProvider"
        feeds = _feeds(m.graphs[g], m, rng)
        ref = ort.InferenceSession(path, sess_options=so, providers=cuda).run(None, feeds)
        got = fused.run(None, feeds)
        for name, r, o in zip([t.name for t in m.graphs[g].outputs], ref, got):
            err = float(np.abs(o.astype(np.float64) - r).max()) / max(float(np.abs(r).max()), 1e-30)
            assert err <= 1e-5, f"{g}:{name} differs by {err:.2e} on CUDA"


@pytest.mark.gpu
@pytest.mark.parametrize("how", [dict(num_beams=1), dict(num_beams=3, num_return_sequences=2, length_penalty=0.8)])
def test_cuda_generate_with_rewrite_matches_hf(exported, how):
    if why := _cuda_ep_reason():
        pytest.skip(why)
    model, d = exported
    rt = t5rt.load(d, backend="ort", device="cuda")  # the rewrite is on by default
    assert rt.runner.sessions["decoder_step"].rewrite_note.startswith(
        f"{3 * model.config.num_decoder_layers} fused")
    ids, mask = _inputs(4)
    ref = hf_generate(model, ids, mask, max_new_tokens=20, min_new_tokens=20, **how)[0]
    out = rt.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, min_new_tokens=20, **how)
    assert out.sequences == ref


@pytest.mark.gpu
def test_cuda_bf16_rewrite_loads_and_follows_the_unrewritten_graphs(bf16_export):
    """On the CUDA EP the all-bf16 norm loads (no fallback) and greedy tokens follow the export."""
    if why := _cuda_ep_reason():
        pytest.skip(why)
    model, d = bf16_export
    fused = t5rt.load(d, backend="ort", device="cuda", ort_rewrite=True)
    plain = t5rt.load(d, backend="ort", device="cuda", ort_rewrite=False)
    notes = {g: s.rewrite_note for g, s in fused.runner.sessions.items()}
    assert notes["encoder"].startswith(f"{2 * model.config.num_layers + 1} fused"), notes
    assert notes["decoder_step"].startswith(f"{3 * model.config.num_decoder_layers} fused"), notes
    ids, mask = _inputs(6)
    kw = dict(max_new_tokens=24, min_new_tokens=24, output_scores=True)
    a = fused.generate(input_ids=ids, attention_mask=mask, **kw)
    b = plain.generate(input_ids=ids, attention_mask=mask, **kw)
    ref = hf_generate(model, ids, mask, max_new_tokens=24, min_new_tokens=24)[0]  # HF fp32

    def agreement(x, y):
        pairs = [(p, q) for s, t in zip(x, y) for p, q in zip(s, t)]
        return sum(p == q for p, q in pairs) / len(pairs)

    rate, rate_hf, rate_plain_hf = agreement(a.sequences, b.sequences), \
        agreement(a.sequences, ref), agreement(b.sequences, ref)
    # first-token log-probs (same prefix in both): the rounding the fused norm changes
    lp = max(abs(x[0] - y[0]) for x, y in zip(a.token_scores, b.token_scores))
    print(f"bf16 rewrite: token agreement {rate:.3f} with the unrewritten graphs; vs HF fp32 "
          f"{rate_hf:.3f} (unrewritten {rate_plain_hf:.3f}); first-token log-prob diff {lp:.3g}")
    assert rate >= 0.9
    assert rate_hf >= rate_plain_hf - 0.1
    assert lp < 0.1
