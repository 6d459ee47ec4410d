"""The exporter (issue 2): three ONNX graphs that compute what Hugging Face T5 computes.

Every check runs the written graphs in ONNX Runtime (CPU) and compares with the real
transformers model holding the same (random) weights: encoder output, HF's own cross-attention
K/V cache, decoder logits step by step, and a greedy loop against `model.generate()`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch

from conftest import FAMILIES, SPIECE, make_t5
from t5rt.exporters import io_spec, patches
from t5rt.exporters.errors import ExportError, ExportValidationError
from t5rt.exporters.options import ExportOptions, add_cli_arguments, options_from_args
from t5rt.exporters.pipeline import export
from t5rt.exporters.trace import trace_decoder_step
from t5rt.exporters.validate import validate_graph, validation_inputs
from t5rt.errors import InvalidOptionError
from t5rt.manifest import TensorSpec, load_manifest, sha256_file

ort = pytest.importorskip("onnxruntime")

STEPS = 48
OPTS = dict(max_input_len=32, max_output_len=STEPS + 2)
QUIET = lambda *a: None  # noqa: E731


def session(path, providers=("CPUExecutionProvider",)):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1  # tiny graphs; spinning ORT threads would starve torch on CI's 2 CPUs
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # the same optimizer opt-outs the runtime uses (bf16 RMSNorm fusion has no CUDA kernel)
    from t5rt.engines.ort import disabled_optimizers

    bf16 = any(i.type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16
               for i in onnx.load(str(path), load_external_data=False).graph.input)
    disabled = disabled_optimizers({"bfloat16"} if bf16 else set(), "CUDAExecutionProvider" in providers)
    return ort.InferenceSession(str(path), so, providers=list(providers), disabled_optimizers=disabled)


def rel_err(got, want) -> float:
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / max(np.max(np.abs(want)), 1e-12))


# -- shared exports (module scope: each (family, cache form) is exported once) ---------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cache = {}

    def get(family: str, cache_update: str = "write", seed: int = 0):
        key = (family, cache_update, seed)
        if key not in cache:
            model = make_t5(seed, **FAMILIES[family])
            src = tmp_path_factory.mktemp("src")
            model.save_pretrained(src)
            out = tmp_path_factory.mktemp("out")
            manifest = export(str(src), out, ExportOptions(cache_update=cache_update, **OPTS), log=QUIET)
            cache[key] = (model, manifest, out)
        return cache[key]

    return get


class OrtT5:
    """The three graphs of an export, driven through the manifest's roles (as a runtime would)."""

    def __init__(self, out_dir, providers=("CPUExecutionProvider",)):
        self.m = load_manifest(out_dir)
        self.s = {g: session(self.m.graph_path(g), providers) for g in ("encoder", "cross_kv", "decoder_step")}
        self.r = self.m.roles

    def encode(self, ids, mask):
        r = self.r["encoder"]
        (hidden,) = self.s["encoder"].run([r["hidden"]], {r["input_ids"]: ids, r["attention_mask"]: mask})
        r = self.r["cross_kv"]
        outs = self.s["cross_kv"].run(r["cross_k"] + r["cross_v"], {r["hidden"]: hidden})
        n = len(r["cross_k"])
        return hidden, outs[:n], outs[n:]

    def greedy(self, ids, mask, steps, forced=None, min_new_tokens=0):
        """Greedy decoding with numpy caches; `forced` [B, n] teacher-forces tokens instead of argmax."""
        r, d, st = self.r["decoder_step"], self.m.dims, self.m.special_tokens
        _, ck, cv = self.encode(ids, mask)
        B, T = ids.shape[0], steps + 1
        act = {"fp32": np.float32, "fp16": np.float16}[self.m.precision]
        sk = [np.zeros((B, d.num_heads, T, d.d_kv), act) for _ in range(d.num_decoder_layers)]
        sv = [np.zeros_like(x) for x in sk]
        tok = np.full((B, 1), st.decoder_start_token_id, np.int64)
        seq, all_logits = [tok], []
        write = self.m.cache_update == "write"
        outs_k = r["new_self_k"] if write else r["present_self_k"]
        outs_v = r["new_self_v"] if write else r["present_self_v"]
        for t in range(steps):
            feeds = {r["input_ids"]: tok, r["position"]: np.full(B, t, np.int64), r["encoder_attention_mask"]: mask}
            for names, arrays in ((r["cross_k"], ck), (r["cross_v"], cv), (r["self_k"], sk), (r["self_v"], sv)):
                feeds.update(zip(names, arrays))
            outs = self.s["decoder_step"].run([r["logits"]] + outs_k + outs_v, feeds)
            logits, L = outs[0], d.num_decoder_layers
            for l in range(L):
                if write:  # the runtime writes row t of every cache
                    sk[l][:, :, t:t + 1], sv[l][:, :, t:t + 1] = outs[1 + l], outs[1 + L + l]
                else:  # present aliases the cache input
                    sk[l], sv[l] = outs[1 + l], outs[1 + L + l]
            all_logits.append(logits)
            if forced is not None:
                tok = forced[:, t + 1:t + 2]
            else:
                if t < min_new_tokens:
                    logits = logits.copy()
                    logits[:, st.eos_token_id] = -np.inf
                tok = logits.argmax(-1)[:, None].astype(np.int64)
            seq.append(tok)
        return np.concatenate(seq, 1), np.stack(all_logits, 1), sk, sv


def source_batch(vocab, lengths=(9, 5), seed=1):
    g = torch.Generator().manual_seed(seed)
    S = max(lengths)
    ids = torch.randint(2, vocab, (len(lengths), S), generator=g)
    mask = torch.zeros(len(lengths), S, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        ids[b, n:] = 0
        ids[b, n - 1] = 1  # eos
    return ids, mask


# -- parity with Hugging Face ----------------------------------------------------------------------

@pytest.mark.parametrize("family", list(FAMILIES))
def test_graphs_match_hf(exported, family):
    model, manifest, out = exported(family)
    rt = OrtT5(out)
    ids, mask = source_batch(model.config.vocab_size)
    prefix = torch.randint(2, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(3))
    prefix[:, 0] = model.config.decoder_start_token_id
    with torch.no_grad():
        hf = model(input_ids=ids, attention_mask=mask, decoder_input_ids=prefix, use_cache=True)
    hidden, ck, cv = rt.encode(ids.numpy(), mask.numpy())
    valid = mask.numpy().astype(bool)  # padded query rows are not used by anything downstream
    assert rel_err(hidden[valid], hf.encoder_last_hidden_state.numpy()[valid]) < 1e-4
    cross = hf.past_key_values.cross_attention_cache
    self_cache = hf.past_key_values.self_attention_cache
    for l in range(model.config.num_decoder_layers):
        assert rel_err(ck[l], cross.layers[l].keys.numpy()) < 1e-4
        assert rel_err(cv[l], cross.layers[l].values.numpy()) < 1e-4
    n = prefix.shape[1]
    _, logits, sk, sv = rt.greedy(ids.numpy(), mask.numpy(), n, forced=prefix.numpy())
    for t in range(n):  # step t's logits vs HF's logits for the same prefix
        assert rel_err(logits[:, t], hf.logits[:, t].numpy()) < 1e-4, f"step {t}"
    for l in range(model.config.num_decoder_layers):
        assert rel_err(sk[l][:, :, :n], self_cache.layers[l].keys.numpy()) < 1e-4
        assert rel_err(sv[l][:, :, :n], self_cache.layers[l].values.numpy()) < 1e-4


@pytest.mark.parametrize("cache_update", ["write", "inplace"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_greedy_matches_generate(exported, family, cache_update):
    model, manifest, out = exported(family, cache_update)
    assert manifest.cache_update == cache_update
    rt = OrtT5(out)
    for lengths in ((7,), (9, 4)):  # one input; a padded batch of two
        ids, mask = source_batch(model.config.vocab_size, lengths)
        with torch.no_grad():
            want = model.generate(input_ids=ids, attention_mask=mask, num_beams=1, do_sample=False,
                                  max_new_tokens=STEPS, min_new_tokens=STEPS)
        got, _, _, _ = rt.greedy(ids.numpy(), mask.numpy(), STEPS, min_new_tokens=STEPS)
        np.testing.assert_array_equal(got, want.numpy(), err_msg=f"{family} {cache_update} batch {lengths}")


# -- manifest, files, options ----------------------------------------------------------------------

def test_manifest_round_trip_and_roles(exported):
    model, manifest, out = exported("odd-dims", "inplace")
    loaded = load_manifest(out)
    assert loaded == manifest
    assert loaded.dims.num_decoder_layers == 1 and loaded.dims.num_encoder_layers == 3
    assert loaded.opset >= 24 and loaded.cache_update == "inplace"
    for g, spec in loaded.graphs.items():
        proto = onnx.load(str(out / spec.file))
        assert [i.name for i in proto.graph.input] == [t.name for t in spec.inputs]
        assert [o.name for o in proto.graph.output] == [t.name for t in spec.outputs]
        io_names = {t.name for t in spec.inputs} | {t.name for t in spec.outputs}
        for role, names in loaded.roles[g].items():
            for name in names if isinstance(names, list) else [names]:
                assert name in io_names, f"{g} role {role} -> {name}"
        for t in spec.outputs + spec.inputs:
            dims = proto.graph.input if t in spec.inputs else proto.graph.output
            vi = next(v for v in dims if v.name == t.name)
            shape = [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
            assert shape == list(t.shape)
    step = loaded.graphs["decoder_step"]
    assert step.output("logits").dtype == "float32" and step.output("logits").shape == ("batch", 384)
    assert step.output("present_self_k.0").shape == ("batch", 3, "cache_len", 12)
    assert loaded.special_tokens.eos_token_id == 1


def test_checksums(exported, t5_factory, tmp_path):
    model, manifest, out = exported("t5-v1_0")
    for spec in manifest.graphs.values():
        assert spec.sha256 == sha256_file(out / spec.file)
    assert manifest.source_checksum.startswith("sha256:")
    # same weights -> same checksum; one changed weight -> another
    _, src = t5_factory(0, **FAMILIES["t5-v1_0"])
    again = export(str(src), tmp_path / "a", ExportOptions(validate=False, **OPTS), log=QUIET)
    assert again.source_checksum == manifest.source_checksum
    other, src2 = t5_factory(0, **FAMILIES["t5-v1_0"])
    with torch.no_grad():
        other.lm_head.weight[0, 0] += 1.0
    other.save_pretrained(src2)
    changed = export(str(src2), tmp_path / "b", ExportOptions(validate=False, **OPTS), log=QUIET)
    assert changed.source_checksum != manifest.source_checksum


def test_tokenizer_files_copied(t5_factory, tmp_path):
    _, src = t5_factory(0, **FAMILIES["t5-v1_1"])
    if SPIECE.is_file():
        (src / "spiece.model").write_bytes(SPIECE.read_bytes())
    (src / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 512}))
    m = export(str(src), tmp_path / "out", ExportOptions(validate=False, **OPTS), log=QUIET)
    want = {"tokenizer_config.json", "generation_config.json"} | ({"spiece.model"} if SPIECE.is_file() else set())
    assert set(m.tokenizer_files) == want
    for f in want:
        assert (tmp_path / "out" / f).read_bytes() == (src / f).read_bytes()
    assert not (tmp_path / "out" / "tokenizer.json").exists()


def test_cli_options_and_no_validate(t5_factory, tmp_path):
    p = argparse.ArgumentParser()
    add_cli_arguments(p)
    o = options_from_args(p.parse_args(["--no-validate", "--precision", "bf16", "--max-input-len", "64",
                                        "--max-output-len", "40", "--cache-update", "inplace", "--opset", "18"]))
    assert (o.validate, o.precision, o.max_input_len, o.max_output_len, o.cache_update, o.opset) == \
        (False, "bf16", 64, 40, "inplace", 18)
    assert o.graph_opset == 24 and options_from_args(p.parse_args([])) == ExportOptions()
    with pytest.raises(InvalidOptionError, match="max_output_len"):
        ExportOptions(max_output_len=0)
    _, src = t5_factory(0, **FAMILIES["t5-v1_0"])
    lines = []
    export(str(src), tmp_path / "out", ExportOptions(validate=False, **OPTS), log=lines.append)
    text = "\n".join(lines)
    assert "validate: skipped" in text and "max abs" not in text
    assert all(f"[{i}/5]" in text for i in range(1, 6))


def test_options_module_is_torch_free():
    code = "import sys, t5rt.exporters.options, t5rt; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_sources(tmp_path):
    with pytest.raises(ExportError, match="config.json"):
        export(str(tmp_path), tmp_path / "out", log=QUIET)
    with pytest.raises(ExportError, match="not a model directory"):
        export(str(tmp_path / "nope" / "x" / "y"), tmp_path / "out", log=QUIET)
    assert not (tmp_path / "out" / "manifest.json").exists()


# -- validation and external data ------------------------------------------------------------------

def test_validation_failure_names_graph_and_output(tmp_path):
    model = make_t5(0, **FAMILIES["t5-v1_1"])
    module, proto = trace_decoder_step(model, 16, 1.0, opset=17)
    path = tmp_path / "decoder_step.onnx"
    onnx.save(proto, str(path))
    names = [s.name for s in io_spec.decoder_step_io(model.config, "fp32", "write")[0]]
    inputs = validation_inputs("decoder_step", model.config, 16, 16)
    validate_graph("decoder_step", path, module, inputs, names, log=QUIET)  # as traced: passes
    with torch.no_grad():
        model.lm_head.weight[:5] += 0.5  # corrupt a weight after trace: only logits change
    with pytest.raises(ExportValidationError, match="decoder_step.onnx output 'logits'") as e:
        validate_graph("decoder_step", path, module, inputs, names, log=QUIET)
    assert e.value.graph == "decoder_step" and e.value.output == "logits"


def test_export_fails_loudly_and_writes_no_manifest(tmp_path, monkeypatch):
    """A graph that disagrees with torch stops the export before manifest.json is written."""
    model = make_t5(0, **FAMILIES["t5-v1_0"])
    real = patches.fuse_bias_lookup

    def broken(graph):  # corrupt the fused decoder bias table: wrong positions, wrong logits
        graph = real(graph)
        for t in graph.tensors().values():
            if isinstance(t, gs.Constant) and t.name.endswith("by_position") and "decoder" in t.name:
                t.values = np.ascontiguousarray(t.values[::-1])
        return graph

    monkeypatch.setattr(patches, "fuse_bias_lookup", broken)
    with pytest.raises(ExportValidationError) as e:
        export(model, tmp_path / "out", ExportOptions(**OPTS), log=QUIET)
    assert e.value.graph == "decoder_step"
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_external_data(tmp_path):
    model = make_t5(0, **FAMILIES["t5-v1_1"])
    m = export(model, tmp_path / "out", ExportOptions(external_data_threshold=0, **OPTS), log=QUIET)
    for name, spec in m.graphs.items():
        assert spec.external_data == f"{name}.onnx.data"
        assert (tmp_path / "out" / spec.external_data).stat().st_size > 0
    assert not list((tmp_path / "out").glob(".t5rt-export-*"))  # staging removed
    rt = OrtT5(tmp_path / "out")
    ids, mask = source_batch(model.config.vocab_size, (6,))
    with torch.no_grad():
        want = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8)
    got, _, _, _ = rt.greedy(ids.numpy(), mask.numpy(), 8, min_new_tokens=8)
    np.testing.assert_array_equal(got, want.numpy())


# -- precision ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_low_precision_exports_pass_checker(tmp_path, precision):
    model = make_t5(0, **FAMILIES["t5-v1_1"])
    m = export(model, tmp_path, ExportOptions(precision=precision, cache_update="inplace", **OPTS), log=QUIET)
    act = {"fp16": "float16", "bf16": "bfloat16"}[precision]
    for name, spec in m.graphs.items():
        path = tmp_path / spec.file
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes_path(str(path), str(tmp_path / f"{name}.inferred.onnx"), strict_mode=True)
        proto = onnx.load(str(path))
        for vi, t in zip(list(proto.graph.input) + list(proto.graph.output), spec.inputs + spec.outputs):
            assert onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name == t.dtype \
                or t.dtype == "bfloat16" and vi.type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16
        assert {t.dtype for t in spec.inputs + spec.outputs if t.name not in
                ("input_ids", "attention_mask", "position", "encoder_attention_mask", "logits")} == {act}
    assert m.graphs["decoder_step"].output("logits").dtype == "float32"


# -- one test per graphsurgeon pass: same values before/after, the promised structure after --------

@pytest.fixture(scope="module")
def traced_step():
    model = make_t5(0, **FAMILIES["odd-dims"])
    module, proto = trace_decoder_step(model, 16, 1.0, opset=17)
    inputs = validation_inputs("decoder_step", model.config, 16, 16, seed=2)
    names = [s.name for s in io_spec.decoder_step_io(model.config, "fp32", "write")[0]]
    feeds = {n: x.numpy() for n, x in zip(names, inputs)}
    return model, proto, feeds


def run_graph(graph: gs.Graph, feeds) -> dict[str, np.ndarray]:
    model = gs.export_onnx(graph.copy())
    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import), True)
    sess = session_bytes(model.SerializeToString())
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}})))


def session_bytes(data: bytes):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def assert_same(a: dict, b: dict, names=None):
    for n in names or a:
        np.testing.assert_allclose(b[n], a[n], rtol=1e-5, atol=1e-5, err_msg=n)


def test_patch_fold_constants(traced_step):
    _, proto, feeds = traced_step
    g = gs.import_onnx(proto)
    g.nodes.append(gs.Node("Identity", inputs=[gs.Constant("dead_c", np.ones(3, np.float32))],
                           outputs=[gs.Variable("dead", dtype=np.float32)]))  # nobody reads it
    before = run_graph(g, feeds)
    n_before = len(g.nodes)
    g = patches.fold_constants(g)
    assert len(g.nodes) < n_before
    assert not any(n.op == "Identity" for n in g.nodes)
    assert all(any(isinstance(i, gs.Variable) for i in n.inputs) for n in g.nodes if n.inputs), \
        "a node with only constant inputs survived folding"
    assert_same(before, run_graph(g, feeds))


def test_patch_fuse_bias_lookup(traced_step):
    _, proto, feeds = traced_step
    g = patches.fold_constants(gs.import_onnx(proto))

    def double_gathers(graph):
        return [n for n in graph.nodes if n.op == "Gather" and isinstance(n.inputs[0], gs.Constant)
                and n.inputs[1].inputs and n.inputs[1].inputs[0].op == "Gather"
                and isinstance(n.inputs[1].inputs[0].inputs[0], gs.Constant)]

    assert len(double_gathers(g)) == 1  # bucket table -> relative_attention_bias
    before = run_graph(g, feeds)
    g = patches.fuse_bias_lookup(g)
    assert not double_gathers(g)
    fused = [t for t in g.tensors().values() if t.name.endswith(".by_position")]
    assert len(fused) == 1 and fused[0].values.shape == (16, 3)  # [max_output_len, H]
    assert_same(before, run_graph(g, feeds))


def test_patch_name_io(traced_step):
    model, proto, feeds = traced_step
    g = patches.fold_constants(gs.import_onnx(proto))
    ins, outs = io_spec.decoder_step_io(model.config, "fp32", "write")
    before = run_graph(g, feeds)
    g = patches.name_io(g, ins, outs, "decoder_step")
    assert [t.name for t in g.inputs] == [s.name for s in ins]
    assert [t.name for t in g.outputs] == [s.name for s in outs]
    assert g.outputs[0].shape == ["batch", model.config.vocab_size]
    assert g.inputs[-1].shape == ["batch", 3, "cache_len", 12]
    assert {n.name for n in g.nodes if n.op == "Where"} >= {"/decoder/block.0/cache_merge_k", "/decoder/block.0/cache_merge_v"}
    assert_same(before, run_graph(g, feeds))
    wrong = [*outs[:1], TensorSpec("k_new.0", outs[1].dtype, outs[1].shape), *outs[2:]]
    with pytest.raises(ExportError, match=r"missing \['k_new.0'\]"):
        patches.name_io(g, ins, wrong, "decoder_step")


def test_patch_upgrade_opset(traced_step):
    _, proto, feeds = traced_step
    g = patches.fold_constants(gs.import_onnx(proto))
    before = run_graph(g, feeds)
    assert g.opset == 17 and all(len(n.inputs) == 1 for n in g.nodes if n.op == "ReduceMean")
    g = patches.upgrade_opset(g, 24)
    assert g.opset == 24 and all(len(n.inputs) == 2 for n in g.nodes if n.op == "ReduceMean")  # axes input
    assert_same(before, run_graph(g, feeds))


def test_patch_cache_update_inplace(traced_step):
    model, proto, feeds = traced_step
    ins, outs = io_spec.decoder_step_io(model.config, "fp32", "write")
    g = patches.name_io(patches.fold_constants(gs.import_onnx(proto)), ins, outs)
    with pytest.raises(ExportError, match="opset >= 24"):
        patches.cache_update_inplace(g.copy(), ["self_k.0"], ["self_v.0"])
    before = run_graph(g, feeds)
    g = patches.cache_update_inplace(patches.upgrade_opset(g, 24), ["self_k.0"], ["self_v.0"])
    scatters = [n for n in g.nodes if n.op == "TensorScatter"]
    assert len(scatters) == 2 and not any(n.name.endswith(("cache_merge_k", "cache_merge_v")) for n in g.nodes)
    assert all(n.attrs["axis"] == 2 and n.inputs[2].name == "position" for n in scatters)
    assert [t.name for t in g.outputs] == ["logits", "present_self_k.0", "present_self_v.0"]
    after = run_graph(g, feeds)
    assert_same(before, after, ["logits"])
    for kind in ("k", "v"):  # present = the cache with row `position` replaced by the new row
        want = feeds[f"self_{kind}.0"].copy()
        for b, t in enumerate(feeds["position"]):
            want[b, :, t] = before[f"new_self_{kind}.0"][b, :, 0]
        np.testing.assert_allclose(after[f"present_self_{kind}.0"], want, rtol=1e-5, atol=1e-6)


def test_special_tokens_follow_generate():
    """decoder_start falls back like HF generate(): generation_config, then config, then pad."""
    from transformers import T5Config, T5ForConditionalGeneration

    from conftest import TINY
    from t5rt.exporters.pipeline import special_tokens

    kw = {k: v for k, v in TINY.items() if k != "decoder_start_token_id"}
    model = T5ForConditionalGeneration(T5Config(**kw))
    pad, eos, start = special_tokens(model)
    assert (pad, eos) == (0, 1) and start == (model.generation_config.decoder_start_token_id or 0)
    model.generation_config.decoder_start_token_id = 5
    assert special_tokens(model)[2] == 5


@pytest.mark.gpu
@pytest.mark.parametrize("cache_update", ["write", "inplace"])
def test_fp16_export_on_cuda_follows_fp32(tmp_path, cache_update):
    """On the GPU (ORT CUDA EP): the fp16 export's logits stay close to the fp32 export's, step by step."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    model = make_t5(0, **FAMILIES["t5-v1_1"])
    for precision in ("fp32", "fp16"):
        export(model, tmp_path / precision, ExportOptions(precision=precision, cache_update=cache_update, **OPTS),
               log=QUIET)
    ids, mask = source_batch(model.config.vocab_size, (9, 4))
    ref = OrtT5(tmp_path / "fp32")
    lo = OrtT5(tmp_path / "fp16", providers=("CUDAExecutionProvider",))
    assert lo.s["decoder_step"].get_providers()[0] == "CUDAExecutionProvider"
    tokens, ref_logits, _, _ = ref.greedy(ids.numpy(), mask.numpy(), 16, min_new_tokens=16)
    _, lo_logits, _, _ = lo.greedy(ids.numpy(), mask.numpy(), 16, forced=tokens)
    assert lo_logits.dtype == np.float32
    assert rel_err(lo_logits, ref_logits) < 2e-2


@pytest.mark.gpu
def test_bf16_export_loads_on_cuda(tmp_path):
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    model = make_t5(0, **FAMILIES["t5-v1_1"])
    export(model, tmp_path, ExportOptions(precision="bf16", cache_update="inplace", **OPTS), log=QUIET)
    rt = OrtT5(tmp_path, providers=("CUDAExecutionProvider",))
    for s in rt.s.values():
        assert s.get_providers()[0] == "CUDAExecutionProvider"
