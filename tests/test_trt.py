"""TensorRT backend: build/cache/profile logic on the CPU, engines where TensorRT + a GPU exist.

CPU tests (run everywhere): import without TensorRT, the backend="auto" rule, feature checks,
engine-file header (truncated / corrupt / foreign bytes), cache keys, profiles computed from a
real tiny export's manifest, CLI parsing.
`trt` tests (skip here): build tiny exports, cache hit/miss, corrupt file -> rebuild, engine I/O
vs the manifest, and run parity against ONNX Runtime CPU on the same graphs where engines run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import types

import numpy as np
import pytest

from t5rt.engines import trt_build, trt_compat
from t5rt.engines.trt_build import (BuildOptions, EngineFileError, Profile, compute_profiles, dims_of,
                                    engine_key, pack_engine, select_profile, unpack_engine)
from t5rt.errors import InvalidOptionError, MissingDependencyError


# -- a tiny real export (exporter pipeline, random-weight T5), both cache forms ----------------------
@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    from conftest import make_t5
    from t5rt.exporters.options import ExportOptions
    from t5rt.exporters.pipeline import export

    model = make_t5()
    out = {}
    for form in ("write", "inplace"):
        d = tmp_path_factory.mktemp(f"export-{form}")
        export(model, d, ExportOptions(cache_update=form, validate=False, max_input_len=64, max_output_len=32),
               log=lambda s: None)
        out[form] = d
    return out


def _manifest(d):
    from t5rt.manifest import load_manifest

    return load_manifest(d)


# -- import / availability --------------------------------------------------------------------------
def test_import_does_not_pull_tensorrt_or_torch():
    code = ("import sys, t5rt.engines.trt, t5rt.engines.trt_build, t5rt.engines.trt_compat;"
            "print(sorted(m for m in ('torch', 'tensorrt', 'tensorrt_rtx', 'cupy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.skipif(trt_compat.available(), reason="TensorRT is installed here")
def test_missing_tensorrt_gives_clear_error(exports):
    with pytest.raises(MissingDependencyError) as e:
        trt_compat.load()
    assert "t5rt[trt]" in str(e.value) and "TensorRT" in str(e.value)
    with pytest.raises(MissingDependencyError):
        trt_build.build_engines(exports["write"], BuildOptions(progress=False))
    from t5rt.engines.trt import open_sessions

    with pytest.raises(MissingDependencyError):
        open_sessions(exports["write"], device=None)


def test_stub_only_namespace_package_is_not_tensorrt():
    # tensorrt-stubs installs tensorrt/__init__.pyi only; importing it gives an empty namespace package.
    assert not trt_compat._is_real_module(types.ModuleType("tensorrt"))


def test_pick_backend_rules():
    name, why = trt_compat.pick_backend("cpu")
    assert name == "ort" and "cpu" in why
    name, why = trt_compat.pick_backend("auto")
    if not trt_compat.available():
        assert name == "ort" and "TensorRT" in why
    assert name in ("ort", "trt") and why


def test_parse_version():
    assert trt_compat.parse_version("10.13.0.35") == (10, 13, 0, 35)
    assert trt_compat.parse_version("10.15.1.post1") == (10, 15, 1)
    assert trt_compat.parse_version("1.7.1.0") >= (1, 7)


def _fake_module(version, *, kv_layer, strongly_typed=True, v2=True, monitor=True):
    """A namespace with the attribute *names* a TensorRT build has (feature checks are hasattr)."""
    ns = types.SimpleNamespace(__version__=version)
    ns.NetworkDefinitionCreationFlag = types.SimpleNamespace(**({"STRONGLY_TYPED": 1} if strongly_typed else {}))
    ns.BuilderFlag = types.SimpleNamespace(TF32=6)
    ns.IBuilderConfig = type("IBuilderConfig", (), {"create_timing_cache": 0, "set_timing_cache": 0,
                                                    "builder_optimization_level": 0,
                                                    **({"progress_monitor": 0} if monitor else {})})
    ns.ICudaEngine = type("ICudaEngine", (), {"device_memory_size_v2": 0} if v2 else {})
    ns.IExecutionContext = type("IExecutionContext", (), {"set_device_memory": 0})
    ns.ExecutionContextAllocationStrategy = types.SimpleNamespace(USER_MANAGED=2)
    if monitor:
        ns.IProgressMonitor = object
    if kv_layer:
        ns.IKVCacheUpdateLayer = object
    return ns


def test_feature_checks():
    old = trt_compat.features_of(_fake_module("10.13.0.35", kv_layer=False), "tensorrt")
    assert old.has_strongly_typed and not old.has_in_place_kv and not old.has_builder_precision_flags
    assert old.has_user_managed_memory and old.has_device_memory_v2 and old.has_progress_monitor
    new = trt_compat.features_of(_fake_module("10.15.1.29", kv_layer=True), "tensorrt")
    assert new.has_in_place_kv and not new.is_rtx
    # A layer class present in an older version string is not trusted for TensorRT proper.
    assert not trt_compat.features_of(_fake_module("10.14.0", kv_layer=True), "tensorrt").has_in_place_kv
    rtx = trt_compat.features_of(_fake_module("1.7.1.0", kv_layer=True, strongly_typed=False, v2=False,
                                              monitor=False), "tensorrt_rtx")
    assert rtx.is_rtx and rtx.has_in_place_kv and not rtx.has_strongly_typed
    assert not rtx.has_device_memory_v2 and not rtx.has_progress_monitor
    assert "tensorrt_rtx 1.7.1.0" in rtx.describe()
    # TensorRT-RTX 1.7 segfaulted serialising its timing cache on the H100: never used there
    assert not rtx.has_timing_cache and new.has_timing_cache


def test_inplace_graph_is_parsed_with_a_static_cache_length(exports):
    """TensorRT's TensorScatter import wants the cache's sequence dim static in the ONNX graph."""
    import onnx

    from t5rt.engines.trt_build import _static_cache_model

    path = exports["inplace"] / "decoder_step.onnx"
    before = onnx.load(str(path), load_external_data=False)
    dims = lambda m: [d for vi in list(m.graph.input) + list(m.graph.output)  # noqa: E731
                      for d in vi.type.tensor_type.shape.dim]
    assert any(d.dim_param == "cache_len" for d in dims(before))
    after = onnx.load_from_string(_static_cache_model(path, 32))
    assert not any(d.dim_param == "cache_len" for d in dims(after))
    names = {vi.name for vi in after.graph.input if vi.name.startswith("self_k")}
    for vi in after.graph.input:
        if vi.name in names:
            assert vi.type.tensor_type.shape.dim[2].dim_value == 32
    onnx.checker.check_model(after)


# -- engine file header -------------------------------------------------------------------------------
KEY = "ab" * 32


def test_engine_file_roundtrip_and_damage(tmp_path):
    plan = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    data = pack_engine(plan, KEY)
    assert unpack_engine(data, KEY) == plan
    assert unpack_engine(data, None) == plan
    with pytest.raises(EngineFileError, match="truncated"):
        unpack_engine(data[:-10], KEY)
    with pytest.raises(EngineFileError, match="truncated"):
        unpack_engine(data[:20], KEY)
    with pytest.raises(EngineFileError, match="padded|truncated"):
        unpack_engine(data + b"\0", KEY)
    bad = bytearray(data)
    bad[-100] ^= 0xFF
    with pytest.raises(EngineFileError, match="corrupt"):
        unpack_engine(bytes(bad), KEY)
    with pytest.raises(EngineFileError, match="not a t5rt engine"):
        unpack_engine(plan, KEY)  # a bare TensorRT plan / foreign file
    with pytest.raises(EngineFileError, match="other inputs"):
        unpack_engine(data, "cd" * 32)
    path = tmp_path / "engines" / "encoder-abababab.engine"
    trt_build.write_engine_file(path, plan, KEY, {"profiles": [Profile((("batch", (1, 1, 1)),)).to_json()]})
    assert trt_build.read_engine_file(path, KEY) == plan
    side = trt_build.read_sidecar(path)
    assert side["plan_bytes"] == len(plan) and side["profiles"][0].as_dict() == {"batch": (1, 1, 1)}
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(EngineFileError):
        trt_build.read_engine_file(path, KEY)
    with pytest.raises(EngineFileError, match="does not exist"):
        trt_build.read_engine_file(tmp_path / "nope.engine", KEY)


def test_engine_key_changes_with_every_input(exports):
    m = _manifest(exports["write"])
    opts = BuildOptions()
    profiles = compute_profiles(m, "encoder", opts)
    base = dict(trt_module="tensorrt", trt_version="10.13.0.35", gpu_name="NVIDIA H100", compute_capability=(9, 0))
    k0, fields = engine_key(m, "encoder", profiles, options=opts, **base)
    assert k0 == engine_key(m, "encoder", profiles, options=BuildOptions(), **base)[0]
    assert fields["graph_sha256"] == m.graphs["encoder"].sha256
    variants = [
        engine_key(m, "cross_kv", profiles, options=opts, **base)[0],
        engine_key(m, "encoder", profiles[:1], options=opts, **base)[0],
        engine_key(m, "encoder", profiles, options=opts, **dict(base, trt_version="10.15.1"))[0],
        engine_key(m, "encoder", profiles, options=opts, **dict(base, trt_module="tensorrt_rtx"))[0],
        engine_key(m, "encoder", profiles, options=opts, **dict(base, gpu_name="NVIDIA A100"))[0],
        engine_key(m, "encoder", profiles, options=opts, **dict(base, compute_capability=(8, 0)))[0],
        engine_key(m, "encoder", profiles, options=BuildOptions(workspace_mb=512), **base)[0],
    ]
    import dataclasses

    graphs = dict(m.graphs)
    graphs["encoder"] = dataclasses.replace(graphs["encoder"], sha256="0" * 64)
    variants.append(engine_key(dataclasses.replace(m, graphs=graphs), "encoder", profiles, options=opts, **base)[0])
    assert len(set(variants + [k0])) == len(variants) + 1


# -- profiles -----------------------------------------------------------------------------------------
def test_buckets_and_ranges():
    assert trt_build.pow2_buckets(8) == (1, 2, 4, 8)
    assert trt_build.pow2_buckets(6) == (1, 2, 4, 6)
    assert trt_build.ranges_from_buckets((1, 2, 4, 8), 8) == [(1, 1, 1), (2, 2, 2), (3, 4, 4), (5, 8, 8)]
    assert trt_build.ranges_from_buckets((4, 100), 16) == [(1, 4, 4), (5, 16, 16)]


@pytest.mark.parametrize("form", ["write", "inplace"])
def test_profiles_from_manifest_cover_every_runtime_shape(exports, form):
    m = _manifest(exports[form])
    opts = BuildOptions(max_batch=4, max_beams=3)
    for graph in ("encoder", "cross_kv", "decoder_step"):
        profiles = compute_profiles(m, graph, opts)
        spec = m.graphs[graph]
        used = {d for t in spec.inputs for d in t.shape if isinstance(d, str)}
        max_rows = 4 * (3 if graph == "decoder_step" else 1)
        for p in profiles:
            assert set(p.as_dict()) == used
            for name, (lo, opt, hi) in p.shapes(spec).items():
                rank = len(spec.input(name).shape)
                assert len(lo) == len(opt) == len(hi) == rank
                assert all(a <= b <= c for a, b, c in zip(lo, opt, hi))
        # every batch (and every batch*beams row count) has exactly one tightest profile
        for rows in range(1, max_rows + 1):
            values = {"batch": rows, "src_len": 17}
            if "cache_len" in used:
                values["cache_len"] = m.max_output_len
            i = select_profile(profiles, values)
            assert profiles[i].covers(values)
        with pytest.raises(InvalidOptionError, match="outside every optimization profile"):
            select_profile(profiles, {"batch": max_rows + 1, "src_len": 17, "cache_len": m.max_output_len})
    dec = compute_profiles(m, "decoder_step", opts)
    cache = {p.as_dict()["cache_len"] for p in dec}
    if form == "inplace":
        assert cache == {(m.max_output_len,) * 3}          # static cache for IKVCacheUpdateLayer
        assert trt_build.pinned_cache_len(m, opts) == m.max_output_len
    else:
        assert cache == {(1, m.max_output_len, m.max_output_len)}
        assert trt_build.pinned_cache_len(m, opts) is None


def test_src_buckets_multiply_profiles(exports):
    m = _manifest(exports["write"])
    p = compute_profiles(m, "encoder", BuildOptions(max_batch=2, src_buckets=(16, 32)))
    assert len(p) == 2 * 3  # batch {1},{2} x src {1..16},{17..32},{33..64}
    assert select_profile(p, {"batch": 2, "src_len": 20}) == [q.as_dict() for q in p].index(
        {"batch": (2, 2, 2), "src_len": (17, 32, 32)})


def test_dims_of_checks_consistency(exports):
    spec = _manifest(exports["write"]).graphs["encoder"]
    assert dims_of(spec, {"input_ids": (2, 16), "attention_mask": (2, 16)}) == {"batch": 2, "src_len": 16}
    with pytest.raises(InvalidOptionError, match="bind buffers of one bucket"):
        dims_of(spec, {"input_ids": (2, 16), "attention_mask": (2, 32)})


def test_aliases_from_manifest(exports):
    from t5rt.engines.trt import aliases_for

    assert aliases_for(_manifest(exports["write"])) == {}
    m = _manifest(exports["inplace"])
    al = aliases_for(m)
    r = m.roles["decoder_step"]
    assert al[r["present_self_k"][0]] == r["self_k"][0] and len(al) == 2 * m.dims.num_decoder_layers


def test_precision_mismatch_is_refused_before_tensorrt(exports):
    with pytest.raises(InvalidOptionError, match="re-export"):
        trt_build.build_engines(exports["write"], BuildOptions(precision="bf16", progress=False))


# -- CLI ----------------------------------------------------------------------------------------------
def _parser():
    p = argparse.ArgumentParser(prog="t5rt build")
    trt_build.add_cli_arguments(p)
    return p


def test_cli_arguments():
    a = _parser().parse_args(["out/t5", "--precision", "bf16", "--max-batch", "16", "--buckets", "1,4,16",
                              "--workspace", "2048", "--timing-cache", "/tmp/tc.cache", "--opt-level", "2",
                              "--no-progress"])
    o = trt_build.options_from_args(a)
    assert (a.dir, o.precision, o.max_batch, o.batch_buckets) == ("out/t5", "bf16", 16, (1, 4, 16))
    assert o.workspace_mb == 2048 and str(o.timing_cache) == "/tmp/tc.cache" and o.optimization_level == 2
    assert not o.progress and o.graphs == ("encoder", "cross_kv", "decoder_step")
    d = trt_build.options_from_args(_parser().parse_args(["x"]))
    assert d.batch_buckets is None and d.precision is None and d.progress
    for bad in (["x", "--buckets", "1,a"], ["x", "--buckets", "0,2"], ["x", "--precision", "int8"]):
        with pytest.raises(SystemExit):
            _parser().parse_args(bad)
    with pytest.raises(InvalidOptionError, match="unknown graphs"):
        trt_build.options_from_args(_parser().parse_args(["x", "--graphs", "encoder,bogus"])).validate()


# == TensorRT + GPU ====================================================================================
def _opts(**kw):
    return BuildOptions(max_batch=2, max_beams=2, progress=False, optimization_level=0, **kw)


def _can_run():
    i = trt_compat.info()
    if i.is_rtx and trt_compat.gpu_identity().compute_capability not in trt_compat.RTX_RUNS_ON:
        pytest.skip(f"{i.module} builds but cannot run engines on this GPU")


@pytest.mark.trt
@pytest.mark.gpu
def test_build_cache_hit_and_corrupt_rebuild(exports, tmp_path):
    d = exports["write"]
    first = trt_build.build_engines_report(d, _opts())
    assert [r.graph for r in first] == ["encoder", "cross_kv", "decoder_step"]
    assert all(r.path.is_file() and r.engine_bytes > 0 for r in first)
    again = trt_build.build_engines_report(d, _opts())
    assert all(r.cached for r in again) and [r.path for r in again] == [r.path for r in first]
    # corrupt one, truncate another, replace the third by foreign bytes: all rebuilt, none crash
    enc, kv, dec = (r.path for r in first)
    b = bytearray(enc.read_bytes())
    b[len(b) // 2] ^= 0xFF
    enc.write_bytes(bytes(b))
    kv.write_bytes(kv.read_bytes()[: len(kv.read_bytes()) // 3])
    dec.write_bytes(b"not an engine at all")
    rebuilt = trt_build.build_engines_report(d, _opts())
    assert not any(r.cached for r in rebuilt)
    for r in rebuilt:
        trt_build.read_engine_file(r.path, r.key)
    # different profiles -> a different key -> rebuilt; the stale engine is pruned
    other = trt_build.build_engines_report(d, _opts(graphs=("encoder",), batch_buckets=(2,)))
    assert not other[0].cached and other[0].path != enc and not enc.exists()
    tc = trt_build.default_timing_cache(d, trt_compat.gpu_identity())
    if trt_compat.info().has_timing_cache:
        assert tc.is_file() and tc.stat().st_size > 0


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize("form", ["write", "inplace"])
def test_engine_io_matches_manifest(exports, form):
    from t5rt.engines.trt import TrtSession, aliases_for
    from t5rt.runtime.device import Device

    m = _manifest(exports[form])
    if form == "inplace" and not trt_compat.info().has_in_place_kv:
        pytest.skip("this TensorRT has no IKVCacheUpdateLayer")
    paths = trt_build.build_engines(exports[form], _opts())
    for g, path in paths.items():
        s = TrtSession(path, m.graphs[g], Device("cuda"), aliases=aliases_for(m) if g == "decoder_step" else None)
        e = s.engine_obj
        names = {e.get_tensor_name(i) for i in range(e.num_io_tensors)}
        assert names == {t.name for t in m.graphs[g].inputs + m.graphs[g].outputs}
        assert e.num_optimization_profiles == len(compute_profiles(m, g, _opts()))


def _ort_run(path, feeds):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(names, feeds)))


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize("form", ["write", "inplace"])
def test_run_parity_with_onnxruntime(exports, form):
    """Each engine on random inputs == ONNX Runtime CPU on the same ONNX graph (fp32 export)."""
    import cupy

    from t5rt.engines.trt import open_sessions
    from t5rt.runtime.device import Device

    _can_run()
    m = _manifest(exports[form])
    if form == "inplace" and not trt_compat.info().has_in_place_kv:
        pytest.skip("this TensorRT has no IKVCacheUpdateLayer")
    dev = Device("cuda")
    sessions = open_sessions(exports[form], dev, _opts())
    rng = np.random.default_rng(0)
    B, S = 2, 16
    T = trt_build.pinned_cache_len(m, _opts()) or 16
    sizes = {"batch": B, "src_len": S, "cache_len": T}
    for g in ("encoder", "cross_kv", "decoder_step"):
        spec = m.graphs[g]
        feeds = {}
        for t in spec.inputs:
            shape = tuple(sizes[d] if isinstance(d, str) else d for d in t.shape)
            if t.dtype == "int64":
                hi = {"position": T - 1}.get(t.name, m.dims.vocab_size)
                a = rng.integers(0, hi, shape).astype(np.int64)
                if "mask" in t.name:
                    a = np.ones(shape, np.int64)
                    a[0, S // 2:] = 0
            else:
                a = rng.standard_normal(shape).astype(np.float32)
            feeds[t.name] = a
        want = _ort_run(m.graph_path(g), feeds)
        eng = sessions[g].engine()
        dev_in = {n: cupy.asarray(a) for n, a in feeds.items()}
        for n, a in dev_in.items():
            eng.bind(n, a)
        outs = {}
        for t in spec.outputs:
            if t.name in eng.aliased_outputs:
                outs[t.name] = dev_in[eng.aliased_outputs[t.name]]
            else:
                outs[t.name] = cupy.empty(want[t.name].shape, dtype=want[t.name].dtype)
            eng.bind(t.name, outs[t.name])
        eng.run()
        dev.synchronize()
        for name, ref in want.items():
            got = cupy.asnumpy(outs[name])
            np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4, err_msg=f"{g}:{name}")


@pytest.mark.skipif(trt_compat.available(), reason="TensorRT is installed here")
def test_runtime_entry_without_tensorrt(exports):
    from t5rt.engines.trt import open_trt_sessions

    with pytest.raises(MissingDependencyError):
        open_trt_sessions(_manifest(exports["write"]), device=None)


@pytest.mark.trt
@pytest.mark.gpu
def test_runtime_uses_engines_built_with_custom_buckets(exports):
    from t5rt.engines.trt import open_trt_sessions
    from t5rt.runtime.device import Device

    d = exports["write"]
    built = trt_build.build_engines(d, _opts(batch_buckets=(2,), src_buckets=(16, 64)))
    sessions = open_trt_sessions(_manifest(d), Device("cuda"))
    assert {g: s.path for g, s in sessions.items()} == built
