"""fp16 / bf16 precision passes (exporters/precision.py) on graphs traced from tiny HF T5 models.

The fp32 graphs are traced here from Hugging Face's own T5 stacks (encoder, decoder + lm_head,
cross-attention K/V), independent of the exporter pipeline; each pass is checked for the
structure it promises, then the converted graphs are run in ONNX Runtime (fp16 runs on the
CPU EP) against fp32 PyTorch, and on models whose weights are scaled to overflow fp16 the
passes are shown to be what keeps the outputs finite.
"""

from __future__ import annotations

import copy
import functools
import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
gs = pytest.importorskip("onnx_graphsurgeon")
ort = pytest.importorskip("onnxruntime")

from conftest import FAMILIES, make_t5  # noqa: E402
from t5rt.errors import InvalidOptionError  # noqa: E402
from t5rt.exporters.precision import (  # noqa: E402
    PrecisionOptions, PrecisionPassError, PrecisionPlan, apply_precision, clamp_residuals,
    convert_precision, find_residual_adds, find_rmsnorms, keep_ffn_output_fp32, keep_logits_fp32,
    keep_rmsnorm_fp32, prepare_graph)

FLOAT, FLOAT16, BFLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16
LOW = {"fp16": FLOAT16, "bf16": BFLOAT16}
B, S, T = 2, 7, 4   # batch, source length, decoder length of the traced dummies and the test inputs


# ---------------------------------------------------------------------------------------------
# fp32 graphs traced from HF modules
# ---------------------------------------------------------------------------------------------

class _Encoder(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids, attention_mask):
        return self.m.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, S, d]


class _Logits(torch.nn.Module):
    """Decoder over a whole prefix + lm_head (with T5 v1.0's tied d_model**-0.5 scale)."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids, hidden, encoder_attention_mask):
        h = self.m.decoder(input_ids=input_ids, encoder_hidden_states=hidden,
                           encoder_attention_mask=encoder_attention_mask, use_cache=False).last_hidden_state
        # transformers 5 always ties lm_head and says whether to scale in scale_decoder_outputs
        if getattr(self.m.config, "scale_decoder_outputs", self.m.config.tie_word_embeddings):
            h = h * (self.m.model_dim ** -0.5)
        return self.m.lm_head(h)  # [B, T, V]


class _CrossKV(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, hidden):
        H, Dk = self.m.config.num_heads, self.m.config.d_kv
        out = []
        for block in self.m.decoder.block:
            a = block.layer[1].EncDecAttention
            out += [a.k(hidden).unflatten(-1, (H, Dk)).transpose(1, 2), a.v(hidden).unflatten(-1, (H, Dk)).transpose(1, 2)]
        return tuple(out)  # [B, H, S, Dk] each


def _inputs(model, graph: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cfg = model.config
    mask = np.ones((B, S), np.int64)
    mask[1, S - 2:] = 0
    if graph == "encoder":
        return {"input_ids": rng.integers(2, cfg.vocab_size, (B, S)), "attention_mask": mask}
    if graph == "decoder":
        return {"input_ids": rng.integers(2, cfg.vocab_size, (B, T)),
                "hidden": rng.standard_normal((B, S, cfg.d_model)).astype(np.float32),
                "encoder_attention_mask": mask}
    return {"hidden": rng.standard_normal((B, S, cfg.d_model)).astype(np.float32)}


def _module(model, graph: str):
    return {"encoder": _Encoder, "decoder": _Logits, "cross_kv": _CrossKV}[graph](model).eval()


def _trace(model, graph: str, tmp_path) -> onnx.ModelProto:
    feeds = _inputs(model, graph)
    args = tuple(torch.from_numpy(v) for v in feeds.values())
    n_out = 2 * model.config.num_decoder_layers if graph == "cross_kv" else 1
    outs = ([f"cross_{kv}.{l}" for l in range(n_out // 2) for kv in "kv"] if graph == "cross_kv"
            else ["logits" if graph == "decoder" else "hidden"])
    tgt = {"input_ids", "logits"} if graph == "decoder" else set()
    dyn = {k: {0: "batch", 1: "tgt_len" if k in tgt else "src_len"} for k in [*feeds, *outs]}
    path = tmp_path / f"{graph}.onnx"
    with torch.no_grad():
        torch.onnx.export(_module(model, graph), args, str(path), dynamo=False, opset_version=17,
                          input_names=list(feeds), output_names=outs, dynamic_axes=dyn)
    return onnx.load(str(path))


@functools.lru_cache(maxsize=None)
def _model(family: str, wo_scale: float = 1.0, final_norm_scale: float = 1.0):
    """make_t5's model, optionally with FFN `wo` / decoder final-norm weights scaled up."""
    m = make_t5(0, **FAMILIES[family])
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("DenseReluDense.wo.weight"):
                p.mul_(wo_scale)
            if name == "decoder.final_layer_norm.weight":
                p.mul_(final_norm_scale)
    return m


_TRACES: dict = {}


def fp32_graph(tmp_path_factory, family: str, graph: str, **scales) -> onnx.ModelProto:
    """The traced fp32 ModelProto (cached per session); import a fresh gs.Graph from it per test."""
    key = (family, graph, tuple(sorted(scales.items())))
    if key not in _TRACES:
        _TRACES[key] = _trace(_model(family, **scales), graph, tmp_path_factory.mktemp("trace"))
    return _TRACES[key]


def convert(proto: onnx.ModelProto, precision: str, **options) -> onnx.ModelProto:
    g = apply_precision(gs.import_onnx(proto), precision, PrecisionOptions(**options))
    model = gs.export_onnx(g)
    model.ir_version = proto.ir_version
    return model


def checked(model: onnx.ModelProto) -> onnx.ModelProto:
    """The checks of issue 2: full checker + strict shape inference; returns the inferred model."""
    assert model.ir_version <= 13
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(inferred, full_check=True)
    return inferred


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    g = checked(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    types.update({i.name: i.data_type for i in g.initializer})
    return types


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], faithful: bool = False) -> list[np.ndarray]:
    """Run in ORT CPU, or (faithful) in onnx's reference evaluator.

    ORT's CPU EP runs fp16 nodes that lack fp16 kernels through fp32 ones and drops the Casts
    between them, so an fp16 overflow may never happen there; the reference evaluator rounds
    every op's result to the graph's dtype, as a GPU engine does.
    """
    cast = {10: np.float16, 1: np.float32, 7: np.int64}
    if faithful:
        from onnx.reference import ReferenceEvaluator

        feeds = {i.name: feeds[i.name].astype(cast[i.type.tensor_type.elem_type]) for i in model.graph.input}
        return [np.asarray(o, np.float32) for o in ReferenceEvaluator(model).run(None, feeds)]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {i.name: feeds[i.name].astype(cast[i.type.tensor_type.elem_type]) for i in model.graph.input}
    return [np.asarray(o, np.float32) for o in sess.run(None, feeds)]


def torch_ref(family: str, graph: str, half: bool = False, **scales) -> list[np.ndarray]:
    """HF PyTorch outputs on `_inputs` (half: HF's own fp16 run, float inputs halved)."""
    m = _model(family, **scales)
    feeds = _inputs(m, graph)
    args = [torch.from_numpy(v) for v in feeds.values()]
    module = _module(m, graph)
    if half:
        module = copy.deepcopy(module).half()      # the cached fp32 model stays fp32
        args = [a.half() if a.is_floating_point() else a for a in args]
    with torch.no_grad():
        out = module(*args)
    return [o.float().numpy() for o in (out if isinstance(out, tuple) else (out,))]


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def nodes_by_name(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {n.name: n for n in model.graph.node}


# ---------------------------------------------------------------------------------------------
# structure detection
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", list(FAMILIES))
def test_find_rmsnorms_and_residual_adds_match_hf_modules(family, tmp_path_factory):
    """One RMSNorm per T5LayerNorm module, one residual Add per sublayer (T5 is pre-norm)."""
    cfg = _model(family).config
    enc = prepare_graph(gs.import_onnx(fp32_graph(tmp_path_factory, family, "encoder")))
    dec = prepare_graph(gs.import_onnx(fp32_graph(tmp_path_factory, family, "decoder")))
    assert len(find_rmsnorms(enc)) == 2 * cfg.num_layers + 1
    assert len(find_rmsnorms(dec)) == 3 * cfg.num_decoder_layers + 1
    assert len(find_residual_adds(enc)) == 2 * cfg.num_layers
    assert len(find_residual_adds(dec)) == 3 * cfg.num_decoder_layers
    # the pattern found exactly HF's layer_norm modules (names as an independent oracle)
    assert all("layer_norm" in n.body[-1].name for n in find_rmsnorms(dec))
    assert not find_rmsnorms(prepare_graph(gs.import_onnx(fp32_graph(tmp_path_factory, family, "cross_kv"))))


# ---------------------------------------------------------------------------------------------
# each pass
# ---------------------------------------------------------------------------------------------

def test_clamp_residuals_clips_every_residual_add_and_is_exact_in_fp32(tmp_path_factory):
    proto = fp32_graph(tmp_path_factory, "t5-v1_1", "decoder")
    g = prepare_graph(gs.import_onnx(proto))
    adds = [a.name for a in find_residual_adds(g)]
    clamp_residuals(g, 64000.0)
    clamp_residuals(g, 64000.0)            # idempotent
    model = gs.export_onnx(g)
    checked(model)
    by_out = {}
    for n in model.graph.node:
        for i in n.input:
            by_out.setdefault(i, []).append(n)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes = nodes_by_name(model)
    assert len(adds) == 3 * _model("t5-v1_1").config.num_decoder_layers
    for name in adds:
        consumers = by_out[nodes[name].output[0]]
        assert [c.op_type for c in consumers] == ["Clip"], name
        lo, hi = (float(inits[x]) for x in consumers[0].input[1:])
        assert (lo, hi) == (-64000.0, 64000.0)
    feeds = _inputs(_model("t5-v1_1"), "decoder")
    np.testing.assert_array_equal(run(model, feeds)[0], run(proto, feeds)[0])
    # bf16 has fp32's range: no clamp by default; fp16 clamps by default
    assert not any(n.op_type == "Clip" and "residual_clamp" in n.name
                   for n in convert(proto, "bf16").graph.node)
    assert sum("residual_clamp" in n.name for n in convert(proto, "fp16").graph.node) == len(adds)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_keep_rmsnorm_fp32_runs_norm_statistics_in_fp32(precision, tmp_path_factory):
    proto = fp32_graph(tmp_path_factory, "t5-v1_1", "encoder")
    norms = find_rmsnorms(prepare_graph(gs.import_onnx(proto)))
    on = convert(proto, precision)
    off = convert(proto, precision, rmsnorm_fp32=False)
    t_on, t_off, n_on = elem_types(on), elem_types(off), nodes_by_name(on)
    for norm in norms:
        for node in norm.body:                            # Cast, Pow, ReduceMean, Add, Sqrt, Div, Mul(x)
            assert t_on[n_on[node.name].output[0]] == FLOAT, node.name
        # HF casts to the weight dtype before the weight multiply
        assert t_on[n_on[norm.weight_mul.name].output[0]] == LOW[precision]
        assert t_off[nodes_by_name(off)[norm.body[1].name].output[0]] == LOW[precision]   # Pow


def test_keep_logits_fp32_keeps_lm_head_and_scale_in_fp32(tmp_path_factory):
    for family in ("t5-v1_0", "t5-v1_1"):            # tied (d_model**-0.5 scale) and untied
        proto = fp32_graph(tmp_path_factory, family, "decoder")
        for precision in ("fp16", "bf16"):
            model = convert(proto, precision)
            types, nodes = elem_types(model), nodes_by_name(model)
            head = nodes["/m/lm_head/MatMul"] if "/m/lm_head/MatMul" in nodes else nodes["/lm_head/MatMul"]
            assert types[head.input[1]] == FLOAT and types[head.output[0]] == FLOAT
            assert types[head.input[0]] == FLOAT                 # scale and final norm weight too
            assert [o.type.tensor_type.elem_type for o in model.graph.output] == [FLOAT]
            off = convert(proto, precision, logits_fp32=False)
            off_types, off_nodes = elem_types(off), nodes_by_name(off)
            assert off_types[off_nodes[head.name].input[1]] == LOW[precision]
            assert [o.type.tensor_type.elem_type for o in off.graph.output] == [FLOAT]   # still fp32 out
    g = prepare_graph(gs.import_onnx(fp32_graph(tmp_path_factory, "t5-v1_1", "cross_kv")))
    g.outputs[0].name = "logits"                     # no final RMSNorm behind it: a clear error
    with pytest.raises(PrecisionPassError, match="final RMSNorm"):
        keep_logits_fp32(g, PrecisionPlan())


def test_keep_ffn_output_fp32_keeps_wo_and_residual_stream_in_fp32(tmp_path_factory):
    proto = fp32_graph(tmp_path_factory, "t5-v1_1", "decoder")
    adds = [a.name for a in find_residual_adds(prepare_graph(gs.import_onnx(proto)))]
    for ffn, want in ((True, FLOAT), (False, FLOAT16)):
        model = convert(proto, "fp16", ffn_output_fp32=ffn)
        types = elem_types(model)
        wo = [n for n in model.graph.node if n.op_type == "MatMul" and "/wo/" in n.name]
        attn_o = [n for n in model.graph.node if n.op_type == "MatMul" and n.name.endswith("/o/MatMul")]
        assert len(wo) == 2 and len(attn_o) == 4
        assert all(types[n.input[1]] == want and types[n.output[0]] == want for n in wo)
        assert all(types[n.input[1]] == FLOAT16 for n in attn_o)            # attention stays low
        nodes = nodes_by_name(model)
        assert all(types[nodes[a].output[0]] == want for a in adds)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("graph", ["encoder", "decoder", "cross_kv"])
def test_convert_precision_io_initializers_and_index_math(precision, graph, tmp_path_factory):
    proto = fp32_graph(tmp_path_factory, "t5-v1_0", graph)
    model = convert(proto, precision)
    low = LOW[precision]
    types = elem_types(model)           # also: checker full_check + strict shape inference
    io = {t.name: t.type.tensor_type.elem_type for t in [*model.graph.input, *model.graph.output]}
    for t in [*proto.graph.input, *proto.graph.output]:
        was = t.type.tensor_type.elem_type
        want = FLOAT if t.name == "logits" else (low if was == FLOAT else was)
        assert io[t.name] == want, t.name
    # a float32 initializer is read only by nodes that compute in fp32 (islands, index math)
    f32_inits = {i.name for i in model.graph.initializer if i.data_type == FLOAT}
    for n in model.graph.node:
        if set(n.input) & f32_inits and n.op_type != "Cast":
            assert all(types.get(o) != low for o in n.output), n.name
    assert any(i.data_type == low for i in model.graph.initializer)
    # relative-position buckets (int -> float -> Log -> int) stay fp32 as HF computes them
    for n in model.graph.node:
        if n.op_type == "Log":
            assert types[n.output[0]] == FLOAT
    if graph == "cross_kv":      # nothing to keep: no float32 left at all
        assert not f32_inits and all(v != FLOAT for k, v in types.items())


def test_bf16_initializers_round_like_torch(tmp_path_factory):
    proto = fp32_graph(tmp_path_factory, "t5-v1_1", "decoder")
    fp32 = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    model = convert(proto, "bf16")
    seen = 0
    for init in model.graph.initializer:
        if init.data_type == BFLOAT16 and init.name.removesuffix("_bf16") in fp32 and init.raw_data:
            src = torch.from_numpy(np.ascontiguousarray(fp32[init.name.removesuffix("_bf16")], np.float32))
            want = src.clamp(-3.3895313892515355e38, 3.3895313892515355e38).to(torch.bfloat16)
            got = np.frombuffer(init.raw_data, np.uint16).reshape(src.shape)
            np.testing.assert_array_equal(got, want.view(torch.int16).numpy().view(np.uint16))
            seen += 1
    assert seen >= 10


def test_apply_precision_options_and_errors(tmp_path_factory):
    proto = fp32_graph(tmp_path_factory, "t5-v1_0", "encoder")
    g = gs.import_onnx(proto)
    assert apply_precision(g, "fp32") is g
    with pytest.raises(InvalidOptionError, match="fp8"):
        apply_precision(gs.import_onnx(proto), "fp8")
    with pytest.raises(InvalidOptionError):
        convert_precision(gs.import_onnx(proto), "fp32")
    once = apply_precision(gs.import_onnx(proto), "fp16")
    with pytest.raises(PrecisionPassError, match="already"):
        apply_precision(once, "fp16")
    # passes compose by hand in the documented order too
    g = prepare_graph(gs.import_onnx(proto))
    plan = PrecisionPlan()
    clamp_residuals(g)
    keep_rmsnorm_fp32(g, plan)
    keep_ffn_output_fp32(g, plan)
    checked(gs.export_onnx(convert_precision(g, "fp16", plan)))


# ---------------------------------------------------------------------------------------------
# numerics
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("graph", ["encoder", "decoder", "cross_kv"])
def test_fp16_graphs_match_fp32_torch(family, graph, tmp_path_factory):
    """Within fp16's own error: a few times what HF's fp16 model is off by on the same inputs.

    (make_t5's doubled random weights give attention logits ~40, so fp16 q/k alone cost a few
    percent; a wrong mask, bias or dtype island costs O(1).)
    """
    model = convert(fp32_graph(tmp_path_factory, family, graph), "fp16")
    refs = torch_ref(family, graph)
    hf_fp16 = torch_ref(family, graph, half=True)
    outs = run(model, _inputs(_model(family), graph))
    assert len(outs) == len(refs)
    for got, ref, hf in zip(outs, refs, hf_fp16):
        assert np.isfinite(got).all()
        tol = max(2e-2, 8 * rel_err(hf, ref))
        assert rel_err(got, ref) < tol, (family, graph, rel_err(got, ref), rel_err(hf, ref))
    if graph == "decoder":      # greedy choices of well-separated logits survive fp16
        agree = (outs[0].argmax(-1) == refs[0].argmax(-1)).mean()
        assert agree >= 0.85, agree


def test_fp16_overflow_needs_the_safety_passes(tmp_path_factory):
    """A v1.1 model whose FFN output exceeds 65504: NaN/inf without the passes, finite with them."""
    fam, scale = "t5-v1_1", dict(wo_scale=3e3)
    m = _model(fam, **scale)
    feeds = _inputs(m, "encoder")
    with torch.no_grad():        # the premise: the residual stream really leaves fp16's range
        enc = m.encoder(input_ids=torch.from_numpy(feeds["input_ids"]),
                        attention_mask=torch.from_numpy(feeds["attention_mask"]), output_hidden_states=True)
    assert max(float(h.abs().max()) for h in enc.hidden_states[1:-1]) > 65504 * 2
    proto = fp32_graph(tmp_path_factory, fam, "encoder", **scale)
    ref = torch_ref(fam, "encoder", **scale)[0]

    def fp16(**options):
        return run(convert(proto, "fp16", **options), feeds, faithful=True)[0]

    assert not np.isfinite(fp16(rmsnorm_fp32=False, logits_fp32=False, residual_clamp=False)).all()
    assert not np.isfinite(fp16(residual_clamp=False)).all()   # fp32 norm alone cannot undo an inf residual
    assert np.isfinite(fp16()).all()                 # defaults: fp32 norm + residual clamp (finite, like HF fp16)
    wo32 = fp16(ffn_output_fp32=True, residual_clamp=False)
    assert np.isfinite(wo32).all()
    assert rel_err(wo32, ref) < 2e-2                 # fp32 wo + residual: as accurate as no overflow


def test_fp16_logits_overflow_needs_fp32_logits(tmp_path_factory):
    """Final-norm output times lm_head beyond 65504: inf in fp16, exact with the fp32 logits island."""
    fam, scale = "t5-v1_1", dict(final_norm_scale=3e4)
    ref = torch_ref(fam, "decoder", **scale)[0]
    assert np.abs(ref).max() > 65504 * 2
    proto = fp32_graph(tmp_path_factory, fam, "decoder", **scale)
    feeds = _inputs(_model(fam, **scale), "decoder")
    assert not np.isfinite(run(convert(proto, "fp16", logits_fp32=False), feeds, faithful=True)[0]).all()
    got = run(convert(proto, "fp16"), feeds, faithful=True)[0]
    assert np.isfinite(got).all() and rel_err(got, ref) < 2e-2


# ---------------------------------------------------------------------------------------------
# on the GPU machine: bf16 numerics (ORT CPU has no bf16 kernels) and TensorRT strong typing
# ---------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("graph", ["encoder", "decoder"])
def test_low_precision_graphs_on_ort_cuda_match_fp32_torch(precision, graph, tmp_path_factory):
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu (CUDAExecutionProvider) is not installed")
    fam = "t5-v1_1"
    model = convert(fp32_graph(tmp_path_factory, fam, graph), precision)
    # as the runtime does: no fused bf16 RMSNorm on CUDA
    from t5rt.engines.ort import disabled_optimizers

    disabled = disabled_optimizers({"bfloat16"} if precision == "bf16" else set(), cuda=True)
    sess = ort.InferenceSession(_fp32_io(model).SerializeToString(), providers=["CUDAExecutionProvider"],
                                disabled_optimizers=disabled)
    got = sess.run(None, _inputs(_model(fam), graph))[0]
    ref = torch_ref(fam, graph)[0]
    assert rel_err(got, ref) < (8e-2 if precision == "bf16" else 2e-2)  # bf16 encoder: 0.056 on the H100


def _fp32_io(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with float32 I/O (Casts at the borders), so bf16 needs no numpy type."""
    g = gs.import_onnx(model)
    for k, t in enumerate(list(g.inputs)):
        if t.dtype not in (np.float32, np.int64, np.bool_) and t.dtype is not None:
            outer = gs.Variable(t.name, np.float32, t.shape)
            t.name = f"{t.name}/low"
            g.nodes.append(gs.Node("Cast", f"{t.name}/cast", attrs={"to": _elem_of(t)}, inputs=[outer], outputs=[t]))
            g.inputs[k] = outer
    for k, t in enumerate(list(g.outputs)):
        if t.dtype not in (np.float32, np.int64, np.bool_) and t.dtype is not None:
            outer = gs.Variable(t.name, np.float32, t.shape)
            t.name = f"{t.name}/low"
            g.nodes.append(gs.Node("Cast", f"{t.name}/cast", attrs={"to": FLOAT}, inputs=[t], outputs=[outer]))
            g.outputs[k] = outer
    out = gs.export_onnx(g.toposort())
    out.ir_version = model.ir_version
    return out


def _elem_of(t) -> int:
    return t.dtype if isinstance(t.dtype, int) else onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype))


def test_fp32_io_wrapper_is_exact(tmp_path_factory):
    """The helper the GPU test relies on: the fp16 graph's outputs up to fp16 rounding (ORT CPU
    may fuse the border Casts away and finish the last ops in fp32)."""
    model = convert(fp32_graph(tmp_path_factory, "t5-v1_1", "encoder"), "fp16")
    feeds = _inputs(_model("t5-v1_1"), "encoder")
    wrapped = _fp32_io(model)
    checked(wrapped)
    assert [i.type.tensor_type.elem_type for i in wrapped.graph.output] == [FLOAT]
    assert rel_err(run(wrapped, feeds)[0], run(model, feeds)[0]) < 2e-3
    checked(_fp32_io(convert(fp32_graph(tmp_path_factory, "t5-v1_1", "decoder"), "bf16")))


def _tensorrt():
    for name in ("tensorrt", "tensorrt_rtx"):
        if importlib.util.find_spec(name) is not None:
            return importlib.import_module(name)
    pytest.skip("TensorRT is not installed")


@pytest.mark.trt
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_tensorrt_builds_strongly_typed_engine_from_converted_encoder(precision, tmp_path_factory):
    """TensorRT 11 takes precision only from the graph: the converted ONNX must parse and build."""
    trt = _tensorrt()
    model = convert(fp32_graph(tmp_path_factory, "t5-v1_1", "encoder"), precision)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(model.SerializeToString()), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    out_dtype = network.get_output(0).dtype
    assert out_dtype == (trt.float16 if precision == "fp16" else trt.bfloat16)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        profile.set_shape(network.get_input(i).name, (1, 1), (B, S), (4, 32))
    config.add_optimization_profile(profile)
    assert builder.build_serialized_network(network, config) is not None


# ---------------------------------------------------------------------------------------------
# through the exporter pipeline (t5rt export --precision fp16|bf16)
# ---------------------------------------------------------------------------------------------

def _export(tmp_path, precision: str, cache_update: str):
    pipeline = pytest.importorskip("t5rt.exporters.pipeline")
    from t5rt.exporters.options import ExportOptions

    model = _model("t5-v1_1")
    out = tmp_path / f"{precision}-{cache_update}"
    opts = ExportOptions(precision=precision, cache_update=cache_update, max_input_len=16, max_output_len=8,
                         validate=False)
    return model, out, pipeline.export(model, out, opts, log=lambda *a: None)


@pytest.mark.parametrize("precision,cache_update", [("fp16", "write"), ("bf16", "inplace")])
def test_pipeline_export_low_precision_graphs_pass_checker_and_match_manifest(precision, cache_update, tmp_path):
    _, out, manifest = _export(tmp_path, precision, cache_update)
    assert manifest.precision == precision
    names = {1: "float32", 10: "float16", 16: "bfloat16", 7: "int64", 9: "bool"}
    for name, spec in manifest.graphs.items():
        model = onnx.load(str(out / spec.file))
        checked(model)
        got = {t.name: names[t.type.tensor_type.elem_type] for t in [*model.graph.input, *model.graph.output]}
        want = {t.name: t.dtype for t in [*spec.inputs, *spec.outputs]}
        assert got == want, name
        assert all(v in ("int64", "bool", manifest.act_dtype) or k == "logits" for k, v in got.items())
    assert manifest.graphs["decoder_step"].output("logits").dtype == "float32"


def test_pipeline_fp16_decoder_steps_match_hf(tmp_path):
    """encoder -> cross_kv -> 3 decoder steps of the fp16 export vs HF fp32, teacher-forced on HF's greedy tokens."""
    model, out, man = _export(tmp_path, "fp16", "write")
    feeds = _inputs(model, "encoder")
    with torch.no_grad():
        hf = model.generate(input_ids=torch.from_numpy(feeds["input_ids"]),
                            attention_mask=torch.from_numpy(feeds["attention_mask"]),
                            max_new_tokens=3, min_new_tokens=3, do_sample=False, num_beams=1,
                            output_logits=True, return_dict_in_generate=True)
    sess = {g: ort.InferenceSession(str(out / man.graphs[g].file), providers=["CPUExecutionProvider"])
            for g in man.graphs}
    hidden = sess["encoder"].run(None, feeds)[0]
    assert hidden.dtype == np.float16
    cross = dict(zip([o.name for o in sess["cross_kv"].get_outputs()], sess["cross_kv"].run(None, {"hidden": hidden})))
    r = man.roles["decoder_step"]
    cfg = model.config
    caches = {n: np.zeros((B, cfg.num_heads, 8, cfg.d_kv), np.float16) for n in [*r["self_k"], *r["self_v"]]}
    tokens = hf.sequences.numpy()          # [B, 1 + 3]: start token, then HF's greedy choices
    for t in range(3):
        step_feeds = {r["input_ids"]: tokens[:, t:t + 1], r["position"]: np.full((B,), t, np.int64),
                      r["encoder_attention_mask"]: feeds["attention_mask"], **cross, **caches}
        outs = dict(zip([o.name for o in sess["decoder_step"].get_outputs()],
                        sess["decoder_step"].run(None, step_feeds)))
        logits = outs[r["logits"]]
        assert logits.dtype == np.float32
        assert rel_err(logits, hf.logits[t].numpy()) < 5e-2, (t, rel_err(logits, hf.logits[t].numpy()))
        assert (logits.argmax(-1) == tokens[:, t + 1]).all()
        for new, cache in zip([*r["new_self_k"], *r["new_self_v"]], [*r["self_k"], *r["self_v"]]):
            caches[cache][:, :, t] = outs[new][:, :, 0]
