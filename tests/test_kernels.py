"""kernels/: CUDA kernels vs NumPy references (gpu), references vs loops and HF (cpu), the build.

GPU tests run once per kernel source ('nvrtc' always, 'fatbin' when the CMake build exists):
    cmake -S . -B build/kernels && cmake --build build/kernels && python -m pytest -q -m gpu tests/test_kernels.py
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import t5rt.kernels as K
from t5rt.errors import InvalidInputError, InvalidOptionError, MissingDependencyError
from t5rt.kernels import reference as R

ROOT = Path(__file__).resolve().parents[1]
HAVE_NVCC = shutil.which("nvcc") is not None
HAVE_CMAKE = shutil.which("cmake") is not None

# (temperature, top_k, top_p) combinations the sampler is checked on
SAMPLE_CASES = [(1.0, 0, 1.0), (0.7, 50, 1.0), (1.0, 0, 0.9), (1.3, 20, 0.8), (1.0, 1, 1.0),
                (0.5, 0, 0.0), (2.0, 7, 0.5)]


# ==============================================================================================
# CPU: contract of the sources, the build, the references
# ==============================================================================================


def _header_enum(name: str) -> dict[str, int]:
    text = (K.KERNELS_DIR / K.HEADER).read_text()
    body = re.search(r"enum\s+" + name + r"\s*\{(.*?)\};", text, re.S)
    assert body, f"enum {name} not found in {K.HEADER}"
    return {m[0]: int(m[1]) for m in re.findall(r"(T5RT_\w+)\s*=\s*(\d+)", body.group(1))}


def test_python_enums_mirror_header():
    geo = _header_enum("T5rtGeometry")
    assert {k.removeprefix("T5RT_"): v for k, v in geo.items()} == {name: int(g) for name, g in K.Geometry.__members__.items()}
    unit = _header_enum("T5rtCopyUnit")
    assert {k.removeprefix("T5RT_COPY_"): v for k, v in unit.items()} == {name: int(u) for name, u in K.CopyUnit.__members__.items()}
    text = (K.KERNELS_DIR / K.HEADER).read_text()
    assert re.search(r"#define\s+T5RT_KERNELS_ABI\s+(\d+)", text)[1] == str(K.ABI)
    assert f"t5rt_abi_{K.ABI}()" in text


def test_nvrtc_source_is_complete():
    src = K.nvrtc_source()
    assert not re.search(r'^\s*#\s*include\s+"', src, re.M), "a local #include survived inlining"
    assert not re.search(r"^\s*#\s*include\s+<", src, re.M), "NVRTC has no standard headers"
    for name in K.KERNEL_NAMES:
        if name.startswith("t5rt_abi_"):
            continue
        # macro-instantiated names appear as t5rt_<op>_##SUFFIX + the suffix list
        op, _, suffix = name.rpartition("_")
        assert (f"{name}(" in src) or (f"{op}_##SUFFIX" in src and f"INSTANTIATE({suffix}," in src), name
    assert all(p.name in src for p in K.kernel_sources())


@pytest.mark.skipif(not HAVE_NVCC, reason="nvcc not installed")
def test_nvrtc_source_compiles_alone(tmp_path):
    """The exact text NVRTC gets compiles with no include path (nvcc stands in for NVRTC here)."""
    cu = tmp_path / "unit.cu"
    cu.write_text(K.nvrtc_source())
    out = tmp_path / "unit.cubin"
    r = subprocess.run(["nvcc", "-cubin", "-arch=sm_90", "-std=c++17", "-Werror", "all-warnings",
                        "-o", str(out), str(cu)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    for name in K.KERNEL_NAMES:
        assert name.encode() in data, f"{name} missing from the compiled unit"


@pytest.mark.skipif(not (HAVE_NVCC and HAVE_CMAKE), reason="nvcc or cmake not installed")
def test_cmake_builds_fatbin_with_every_kernel(tmp_path):
    build = tmp_path / "build"
    # Two archs keep this fast; CI's own build covers the full list.
    cfg = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), "-DT5RT_CUDA_ARCHS=80;90"],
                         capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    bld = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True)
    assert bld.returncode == 0, bld.stdout + bld.stderr
    fatbin = build / "t5rt_kernels.fatbin"
    data = fatbin.read_bytes()
    for name in K.KERNEL_NAMES:
        assert name.encode() in data, f"{name} missing from the fatbin"


def test_stale_fatbin_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv(K.FATBIN_ENV, raising=False)
    fake = tmp_path / "t5rt_kernels.fatbin"
    assert "does not exist" in K._stale_reason(fake)
    fake.write_bytes(b"x")
    os.utime(fake, (0, 0))
    assert "older than" in K._stale_reason(fake)
    os.utime(fake, None)
    assert K._stale_reason(fake) is None


def test_loader_rejects_unknown_source():
    with pytest.raises(InvalidOptionError):
        K.load("cubin")


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None,
                    reason="cupy installed: the no-cupy error path cannot be seen")
def test_without_cupy_loading_fails_loudly():
    with pytest.raises(MissingDependencyError, match="cuda"):
        K.source()


def test_sample_options_are_validated():
    for bad in (dict(temperature=0.0), dict(top_k=-1), dict(top_p=1.5), dict(top_k=2.5)):
        with pytest.raises(InvalidOptionError):
            K.SampleOptions(**bad)


def test_reference_rng_matches_decoding_rng():
    rng = pytest.importorskip("t5rt.decoding.rng")
    for seed, step in [(0, 0), (12345, 7), (2**63 - 1, 1000)]:
        rows = np.arange(5)
        theirs = rng.uniform(np, np.array([seed], dtype=np.uint64), np.array(step), rows)
        ours = [R.uniform(seed, step, int(r)) for r in rows]
        np.testing.assert_array_equal(theirs, ours)


def test_reference_kv_write_matches_loops():
    g = np.random.default_rng(0)
    n, h, t, dk = 3, 2, 5, 4
    caches = [g.standard_normal((n, h, t, dk)).astype(np.float16) for _ in range(4)]
    rows = [g.standard_normal((n, h, 1, dk)).astype(np.float16) for _ in range(4)]
    pos = np.array([0, 4, 5], dtype=np.int64)  # the last is out of range: nothing written
    got = R.kv_write(caches, rows, pos)
    for c, r, o in zip(caches, rows, got):
        want = c.copy()
        for i in range(n):
            if 0 <= pos[i] < t:
                for j in range(h):
                    want[i, j, pos[i], :] = r[i, j, 0, :]
        np.testing.assert_array_equal(o, want)


def test_reference_beam_reorder_matches_loops():
    g = np.random.default_rng(1)
    n, h, t, dk = 4, 2, 6, 3
    caches = [g.standard_normal((n, h, t, dk)).astype(np.float32) for _ in range(2)]
    parent = np.array([1, 1, 0, 3], dtype=np.int64)
    got = R.beam_reorder(caches, parent, 4)
    for c, o in zip(caches, got):
        for i in range(n):
            for s in range(t):
                want = c[parent[i], :, s, :] if s < 4 else c[i, :, s, :]
                np.testing.assert_array_equal(o[i, :, s, :], want)


def test_reference_beam_topk_matches_sort_and_ties():
    g = np.random.default_rng(2)
    scores = np.round(g.standard_normal((3, 200)), 1).astype(np.float32)  # many ties
    vals, idx = R.beam_topk(scores, 9)
    for b in range(3):
        want = sorted(range(200), key=lambda j: (-scores[b, j], j))[:9]
        assert idx[b].tolist() == want
        np.testing.assert_array_equal(vals[b], scores[b, want])


def test_reference_filters_match_hugging_face():
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)

    g = np.random.default_rng(3)
    logits = (g.standard_normal((16, 384)) * 3).astype(np.float32)
    for temperature, top_k, top_p in SAMPLE_CASES:
        s = torch.from_numpy(logits.copy())
        if temperature != 1.0:
            s = TemperatureLogitsWarper(temperature)(None, s)
        if top_k:
            s = TopKLogitsWarper(top_k)(None, s)
        if top_p < 1.0:
            s = TopPLogitsWarper(top_p)(None, s)
        x, keep = R.sample_filter(logits, temperature, top_k, top_p)
        np.testing.assert_array_equal(keep, torch.isfinite(s).numpy(), err_msg=str((temperature, top_k, top_p)))
        np.testing.assert_array_equal(x[keep], s.numpy()[keep])
        probs = R.sample_probs(logits, temperature, top_k, top_p)
        np.testing.assert_allclose(probs, torch.softmax(s.double(), -1).numpy(), atol=1e-9)


def test_reference_beam_step_matches_torch():
    torch = pytest.importorskip("torch")
    g = np.random.default_rng(4)
    nb, v = 3, 97
    logits = (g.standard_normal((2 * nb, v)) * 4).astype(np.float32)
    beam = g.standard_normal(2 * nb).astype(np.float32)
    vals, idx = R.beam_step(logits, beam, nb, 6)
    t = torch.log_softmax(torch.from_numpy(logits), -1) + torch.from_numpy(beam)[:, None]
    tv, ti = torch.topk(t.reshape(2, nb * v), 6)
    np.testing.assert_array_equal(idx, ti.numpy())
    np.testing.assert_allclose(vals, tv.numpy(), rtol=0, atol=1e-6)


def _chi2_critical(dof: int, z: float = 3.719) -> float:
    """Wilson-Hilferty chi-square quantile (z = 3.719: p = 1e-4)."""
    a = 2.0 / (9.0 * dof)
    return dof * (1.0 - a + z * math.sqrt(a)) ** 3


def _chi2(counts: np.ndarray, probs: np.ndarray, draws: int) -> tuple[float, int]:
    keep = probs > 0
    exp = probs[keep] * draws
    return float(((counts[keep] - exp) ** 2 / exp).sum()), int(keep.sum()) - 1


def test_reference_sampler_follows_its_distribution():
    g = np.random.default_rng(5)
    logits = np.tile((g.standard_normal((1, 12)) * 1.5).astype(np.float32), (3000, 1))  # 3000 rows
    probs = R.sample_probs(logits[:1], 0.9, 8, 0.95)[0]
    tokens = R.topk_topp_sample(logits, seed=11, step=3, temperature=0.9, top_k=8, top_p=0.95)
    counts = np.bincount(tokens, minlength=12)
    assert counts[probs == 0].sum() == 0
    stat, dof = _chi2(counts, probs, len(tokens))
    assert stat < _chi2_critical(dof), (stat, dof)


# ==============================================================================================
# Kernels vs references: on the GPU (NVRTC and the CMake fatbin) and on the CPU (the host build of
# the same sources, t5rt.kernels.host), through the same typed wrappers
# ==============================================================================================

# The host build runs 1024-thread blocks as fibers: rows are capped there (CPU time), still wider
# than 4 * 1024 elements, so every thread strides over several and a top-k spans chunks.
HOST_MAX_WIDTH = 9000


class Dev:
    """Where a test's kernels run: the CUDA module from one source (cupy) or the host build (numpy)."""

    def __init__(self, name: str, launcher):
        self.name, self.launcher, self.xp = name, launcher, launcher.xp
        self.host = name == "host"

    def put(self, a, dtype=None):
        """A copy on the device (numpy too: the kernels write in place, the references must not see it)."""
        return self.xp.array(a, dtype=dtype, copy=True)

    def get(self, a) -> np.ndarray:
        return a if isinstance(a, np.ndarray) else a.get()

    def cap(self, width: int) -> int:
        return min(width, HOST_MAX_WIDTH) if self.host else width


@pytest.fixture(params=[pytest.param("nvrtc", marks=pytest.mark.gpu),
                        pytest.param("fatbin", marks=pytest.mark.gpu), "host"])
def dev(request, monkeypatch):
    if request.param == "host":
        return Dev("host", request.getfixturevalue("host_kernels"))
    if request.param == "fatbin" and (why := K._stale_reason(K.fatbin_path())):
        pytest.skip(f"no usable CMake build: {why}")
    launcher = K.CudaLauncher(request.param)
    assert launcher.loaded.how.startswith(request.param)
    return Dev(request.param, launcher)


@pytest.fixture(params=["nvrtc", "fatbin"])
def kernel_source(request, monkeypatch):
    """GPU-only tests: the default launcher with the kernels from NVRTC and from the CMake build."""
    if request.param == "fatbin" and (why := K._stale_reason(K.fatbin_path())):
        pytest.skip(f"no usable CMake build: {why}")
    monkeypatch.setenv(K.SOURCE_ENV, request.param)
    assert K.source().startswith(request.param)
    return request.param


def _cp():
    import cupy

    return cupy


_CACHE_DTYPES = {"fp32": np.float32, "fp16": np.float16, "bf16": np.uint16}  # bf16 stored as uint16


def _random_cache(g, shape, dtype):
    if dtype is np.uint16:  # arbitrary bit patterns: the kernels copy bytes
        return g.integers(0, 2**16, size=shape, dtype=np.uint16)
    return g.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("n,h,t,dk,layers,dtype", [
    (1, 1, 5, 8, 1, "fp32"), (3, 4, 7, 64, 2, "fp16"), (2, 3, 9, 12, 3, "bf16"),
    (5, 2, 16, 6, 2, "fp16"), (4, 8, 33, 64, 6, "bf16"), (2, 2, 4, 3, 1, "fp32"), (3, 2, 5, 3, 1, "fp16"),
])
def test_kv_write_matches_reference(dev, n, h, t, dk, layers, dtype):
    g = np.random.default_rng(n * 100 + t)
    dt = _CACHE_DTYPES[dtype]
    caches = [_random_cache(g, (n, h, t, dk), dt) for _ in range(2 * layers)]
    rows = [_random_cache(g, (n, h, 1, dk), dt) for _ in range(2 * layers)]
    pos = g.integers(0, t, size=n).astype(np.int64)
    pos[-1] = t if n > 2 else pos[-1]  # out of range: must write nothing
    d_caches = [dev.put(c) for c in caches]
    d_rows = [dev.put(r) for r in rows]
    K.kv_write(K.PointerTable(d_caches, dev.launcher), K.PointerTable(d_rows, dev.launcher), dev.put(pos))
    for got, want in zip(d_caches, R.kv_write(caches, rows, pos)):
        np.testing.assert_array_equal(dev.get(got), want)


@pytest.mark.parametrize("m,n,h,s,dk,layers,dtype", [
    (3, 8, 2, 5, 8, 1, "fp32"), (4, 16, 4, 16, 64, 3, "bf16"), (2, 5, 3, 7, 3, 2, "fp16"),
    (2, 4, 1, 3, 2, 1, "fp16"), (2, 4, 1, 3, 2, 1, "fp32")])  # rows of 128x, 2, 12 and 24 bytes: every copy unit
def test_rows_copy_matches_reference(dev, m, n, h, s, dk, layers, dtype):
    """A slot pool taking its joining requests' cross K/V: whole rows of every tensor in one launch
    (a source row may go to several destinations: a beam request's input once per beam)."""
    g = np.random.default_rng(m * 10 + n)
    dt = _CACHE_DTYPES[dtype]
    dst = [_random_cache(g, (n, h, s, dk), dt) for _ in range(2 * layers)]
    src = [_random_cache(g, (m, h, s, dk), dt) for _ in range(2 * layers)]
    dst_rows = g.permutation(n)[:m + 1].astype(np.int64)
    src_rows = np.append(np.arange(m), m - 1).astype(np.int64)
    d_dst = [dev.put(c) for c in dst]
    K.rows_copy(K.PointerTable(d_dst, dev.launcher), K.PointerTable([dev.put(c) for c in src], dev.launcher),
                dev.put(dst_rows), dev.put(src_rows))
    for got, want in zip(d_dst, R.rows_copy(dst, src, dst_rows, src_rows)):
        np.testing.assert_array_equal(dev.get(got), want)


@pytest.mark.parametrize("n,h,t,dk,layers,dtype,length,slots", [
    (1, 2, 5, 8, 1, "fp32", 3, None), (4, 4, 10, 64, 2, "fp16", 10, None),
    (8, 3, 17, 12, 3, "bf16", 9, 1), (6, 2, 8, 6, 2, "fp16", 1, 3), (4, 8, 40, 64, 6, "bf16", 25, 5),
    (3, 2, 6, 3, 1, "fp16", 4, None), (3, 2, 6, 2, 1, "fp16", 7, 1),
])
def test_beam_reorder_matches_reference(dev, n, h, t, dk, layers, dtype, length, slots):
    g = np.random.default_rng(n * 7 + t)
    dt = _CACHE_DTYPES[dtype]
    caches = [_random_cache(g, (n, h, t, dk), dt) for _ in range(2 * layers)]
    parent = g.integers(0, n, size=n).astype(np.int64)
    parent[0] = 0  # own parent: skipped by the kernel, must still be right
    d_caches = [dev.put(c) for c in caches]
    table = K.PointerTable(d_caches, dev.launcher)
    K.beam_reorder(table, dev.put(parent), dev.put([length], dtype=np.int64), K.reorder_scratch(table, slots))
    for got, want in zip(d_caches, R.beam_reorder(caches, parent, length)):
        np.testing.assert_array_equal(dev.get(got), want)


@pytest.mark.parametrize("n,v", [(1, 32128), (3, 384), (7, 1), (2, 1000), (16, 32128)])
def test_argmax_rows_matches_reference(dev, n, v):
    g = np.random.default_rng(v + n)
    v = dev.cap(v)
    x = np.round(g.standard_normal((n, v + 3)), 1).astype(np.float32)  # ties: first index wins
    rows = dev.put(x)[:, :v]  # row stride V + 3
    np.testing.assert_array_equal(dev.get(K.argmax_rows(rows, launcher=dev.launcher)), R.argmax_rows(x[:, :v]))


@pytest.mark.parametrize("b,m,k,ties", [
    (1, 4 * 32128, 8, False), (3, 4 * 32128, 64, True), (2, 5000, 1, False), (4, 100, 17, True),
    (1, 64, 64, False), (5, 8193, 12, True),
])
def test_beam_topk_matches_reference(dev, b, m, k, ties):
    g = np.random.default_rng(m + k)
    m = dev.cap(m)
    s = g.standard_normal((b, m)).astype(np.float32)
    if ties:
        s = np.round(s, 1).astype(np.float32)
    ws = K.TopKWorkspace(b, m, k, launcher=dev.launcher)
    vals, idx = K.beam_topk(dev.put(s), k, ws)
    want_v, want_i = R.beam_topk(s, k)
    np.testing.assert_array_equal(dev.get(idx), want_i)
    np.testing.assert_array_equal(dev.get(vals), want_v)


@pytest.mark.parametrize("b,nb,v,k", [(1, 4, 32128, 8), (3, 2, 384, 4), (2, 5, 1001, 10)])
def test_beam_step_matches_reference(dev, b, nb, v, k):
    g = np.random.default_rng(v)
    v = dev.cap(v)
    logits = (g.standard_normal((b * nb, v)) * 4).astype(np.float32)
    beam = (g.standard_normal(b * nb) * 3).astype(np.float32)
    vals, idx = K.beam_step(dev.put(logits), dev.put(beam), nb, k, launcher=dev.launcher)
    want_v, want_i = R.beam_step(logits, beam, nb, k)
    np.testing.assert_array_equal(dev.get(idx), want_i)
    np.testing.assert_allclose(dev.get(vals), want_v, rtol=0, atol=2e-5)


def _assert_tokens_match(tokens, logits, seed, step, case):
    """Kernel tokens == reference tokens, except where u lies within float error of a CDF edge."""
    probs = R.sample_probs(logits, *case)
    want = R.topk_topp_sample(logits, seed, step, *case)
    for i, (tok, ref) in enumerate(zip(tokens, want)):
        if tok == ref:
            continue
        cdf = np.cumsum(probs[i])
        u = R.uniform(seed, step, i)
        edge = cdf[min(tok, ref)]
        assert probs[i, tok] > 0 and abs(edge - u) < 1e-5, (case, i, tok, ref, u, edge)


@pytest.mark.parametrize("n,v", [(1, 32128), (5, 384), (3, 1001), (8, 32128)])
def test_sample_matches_reference(dev, n, v):
    g = np.random.default_rng(v + n)
    if dev.host:  # 7 cases x 2 draws of 1024-thread blocks: fewer, narrower rows
        n, v = min(n, 3), min(v, 4099)
    logits = (g.standard_normal((n, v)) * 3).astype(np.float32)
    d_logits = dev.put(logits)
    seed, step = 1234, 5
    d_seed, d_step = dev.put([seed], dtype=np.uint64), dev.put([step], dtype=np.int64)
    for case in SAMPLE_CASES:
        opts = K.SampleOptions(*case)
        tokens = dev.get(K.topk_topp_sample(d_logits, d_seed, d_step, opts, launcher=dev.launcher))
        _assert_tokens_match(tokens, logits, seed, step, case)
        again = dev.get(K.topk_topp_sample(d_logits, d_seed, d_step, opts, launcher=dev.launcher))
        np.testing.assert_array_equal(tokens, again)  # fixed seed and step: reproducible


@pytest.mark.gpu
def test_sample_top_k1_is_argmax_and_steps_differ(kernel_source):
    cp = _cp()
    g = np.random.default_rng(9)
    d_logits = cp.asarray((g.standard_normal((64, 32128)) * 0.5).astype(np.float32))
    seed = cp.asarray([7], dtype=np.uint64)
    t1 = K.topk_topp_sample(d_logits, seed, cp.asarray([0], dtype=np.int64), K.SampleOptions(top_k=1))
    np.testing.assert_array_equal(t1.get(), K.argmax_rows(d_logits).get())
    a = K.topk_topp_sample(d_logits, seed, cp.asarray([0], dtype=np.int64), K.SampleOptions()).get()
    b = K.topk_topp_sample(d_logits, seed, cp.asarray([1], dtype=np.int64), K.SampleOptions()).get()
    assert (a != b).mean() > 0.5  # a new step draws new numbers


@pytest.mark.gpu
@pytest.mark.parametrize("case", [(1.0, 0, 1.0), (0.8, 10, 1.0), (1.0, 0, 0.7), (1.2, 12, 0.9)])
def test_sample_distribution_chi_square(kernel_source, case):
    cp = _cp()
    g = np.random.default_rng(17)
    v, draws = 40, 200_000
    row = (g.standard_normal((1, v)) * 1.5).astype(np.float32)
    probs = R.sample_probs(row, *case)[0]
    logits = cp.asarray(np.tile(row, (draws, 1)))  # one draw per row: rows use independent numbers
    tokens = K.topk_topp_sample(logits, cp.asarray([3], dtype=np.uint64), cp.asarray([2], dtype=np.int64),
                                K.SampleOptions(*case)).get()
    counts = np.bincount(tokens, minlength=v)
    assert counts[probs == 0].sum() == 0, "drew a filtered token"
    stat, dof = _chi2(counts, probs, draws)
    assert stat < _chi2_critical(dof), (case, stat, dof)


@pytest.mark.gpu
def test_graph_replay_writes_cache_and_draws_fresh_numbers(kernel_source):
    """kv_write + sample + step += 1 captured once; each replay equals the reference for its step."""
    cp = _cp()
    g = np.random.default_rng(21)
    n, h, t, dk, v = 2, 2, 6, 8, 500
    caches = [cp.zeros((n, h, t, dk), dtype=np.float16) for _ in range(2)]
    rows = [cp.asarray(g.standard_normal((n, h, 1, dk)).astype(np.float16)) for _ in range(2)]
    cache_t, rows_t = K.PointerTable(caches), K.PointerTable(rows)
    logits_h = (g.standard_normal((n, v)) * 2).astype(np.float32)
    logits = cp.asarray(logits_h)
    position = cp.zeros((n,), dtype=np.int64)
    seed, step = cp.asarray([99], dtype=np.uint64), cp.zeros((1,), dtype=np.int64)
    opts = K.SampleOptions(temperature=0.9, top_k=40, top_p=0.9)
    out = cp.empty((n,), dtype=np.int64)
    K.topk_topp_sample(logits, seed, step, opts, out=out)  # load + warm up outside the capture
    K.kv_write(cache_t, rows_t, position)
    step += 1  # compile the elementwise kernels before capturing
    position += 1
    step -= 1
    position -= 1
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        K.kv_write(cache_t, rows_t, position)
        K.topk_topp_sample(logits, seed, step, opts, out=out)
        step += 1
        position += 1
        graph = stream.end_capture()
    for s in range(t):
        graph.launch(stream)
        stream.synchronize()
        _assert_tokens_match(out.get(), logits_h, 99, s, (0.9, 40, 0.9))
    for c, r in zip(caches, rows):
        np.testing.assert_array_equal(c.get(), np.repeat(r.get(), t, axis=2))


def test_wrappers_reject_bad_arguments(dev):
    xp, launcher = dev.xp, dev.launcher
    with pytest.raises(InvalidInputError):
        K.argmax_rows(xp.zeros((2, 3), dtype=np.float16), launcher=launcher)
    with pytest.raises(InvalidInputError):
        K.TopKWorkspace(1, 100, 65, launcher=launcher)
    c = [xp.zeros((2, 2, 4, 8), dtype=np.float16)]
    with pytest.raises(InvalidInputError):
        K.kv_write(K.PointerTable(c, launcher), K.PointerTable([xp.zeros((2, 2, 1, 8), dtype=np.float32)], launcher),
                   xp.zeros(2, dtype=np.int64))
    foreign = [[0.0, 1.0]] if dev.host else np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(InvalidInputError, match=f"must be a {xp.__name__} array"):
        K.argmax_rows(foreign, launcher=launcher)  # only the launcher's own arrays


# ==============================================================================================
# sample_logprob / row_logsumexp (used by t5rt.decoding on cupy)
# ==============================================================================================


def test_reference_sample_logprob_is_the_sampler_with_row_offset():
    g = np.random.default_rng(21)
    logits = (g.standard_normal((6, 50)) * 2).astype(np.float32)
    for case in SAMPLE_CASES:
        tok, lp = R.sample_logprob(logits, 3, 4, *case)
        np.testing.assert_array_equal(tok, R.topk_topp_sample(logits, 3, 4, *case))
        probs = R.sample_probs(logits, *case)
        np.testing.assert_allclose(np.exp(lp), probs[np.arange(6), tok], rtol=1e-12)
        tail, _ = R.sample_logprob(logits[2:], 3, 4, *case, row_offset=2)
        np.testing.assert_array_equal(tail, tok[2:])  # rows keep their RNG stream


@pytest.mark.parametrize("n,v", [(1, 32128), (5, 384), (8, 32128)])
def test_sample_logprob_matches_reference(dev, n, v):
    g = np.random.default_rng(v + 7 * n)
    if dev.host:
        n, v = min(n, 3), min(v, 4099)
    logits = (g.standard_normal((n, v)) * 3).astype(np.float32)
    d_logits = dev.put(logits)
    seed, step, offset = 99, 6, 3
    d_seed, d_step = dev.put([seed], dtype=np.uint64), dev.put([step], dtype=np.int64)
    run = dict(launcher=dev.launcher)
    for case in SAMPLE_CASES:
        tok, lp = K.sample_logprob(d_logits, d_seed, d_step, K.SampleOptions(*case), row_offset=offset, **run)
        tok, lp = dev.get(tok), dev.get(lp)
        want_tok, _ = R.sample_logprob(logits, seed, step, *case, row_offset=offset)
        probs = R.sample_probs(logits, *case)
        for i in range(n):
            if tok[i] != want_tok[i]:  # only where u sits within float error of a CDF edge
                cdf = np.cumsum(probs[i])
                u = R.uniform(seed, step, offset + i)
                assert probs[i, tok[i]] > 0 and abs(cdf[min(tok[i], want_tok[i])] - u) < 1e-5, (case, i)
        want_lp = np.log(probs[np.arange(n), tok])
        np.testing.assert_allclose(lp, want_lp, rtol=0, atol=2e-4)
        tok0, _ = K.sample_logprob(d_logits, d_seed, d_step, K.SampleOptions(*case), **run)
        same = K.topk_topp_sample(d_logits, d_seed, d_step, K.SampleOptions(*case), **run)
        np.testing.assert_array_equal(dev.get(tok0), dev.get(same))  # offset 0: the same draw


def test_row_logsumexp_matches_reference(dev):
    g = np.random.default_rng(4)
    logits = (g.standard_normal((6, dev.cap(32128))) * 5).astype(np.float32)
    mx, ls = K.row_logsumexp(dev.put(logits), launcher=dev.launcher)
    want = R.log_softmax(logits)
    got = (logits - dev.get(mx)[:, None]) - dev.get(ls)[:, None]
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("n,v", [(1, 32128), (8, 32128), (3, 1001), (2, 5)])
def test_argmax_logsumexp_matches_reference(dev, n, v):
    g = np.random.default_rng(n * v)
    v = dev.cap(v)
    logits = (g.standard_normal((n, v)) * 4).astype(np.float32)
    logits[:, g.integers(0, v, 3)] = -np.inf  # banned tokens add nothing
    if n > 1:
        logits[1] = np.round(logits[1])  # many ties: the first maximum wins
        logits[-1, :] = -np.inf
        logits[-1, v // 2] = 0.5
    d_logits = dev.put(logits)
    idx, mx, ls = K.argmax_logsumexp(d_logits, launcher=dev.launcher)
    want_i, want_m, want_l = R.argmax_logsumexp(logits)
    np.testing.assert_array_equal(dev.get(idx), want_i)
    np.testing.assert_array_equal(dev.get(mx), want_m)
    np.testing.assert_allclose(dev.get(ls), want_l, rtol=0, atol=2e-5)
    np.testing.assert_array_equal(dev.get(idx), dev.get(K.argmax_rows(d_logits, launcher=dev.launcher)))


# ==============================================================================================
# The decoding strategies' state updates (decoding_step.cu) vs their references
# ==============================================================================================

PAD, EOS, START = 0, 1, 0


def _put_state(dev, state):
    return {k: None if v is None else dev.put(v) for k, v in state.items()}


def _assert_state(dev, got, want, step):
    for k, v in want.items():
        if v is not None:
            np.testing.assert_array_equal(dev.get(got[k]), v, err_msg=f"{k} after step {step}")


@pytest.mark.parametrize("n,T,with_scores,output_scores", [
    (5, 6, True, True), (3, 4, False, False), (300, 3, True, False), (2, 1, False, True)])
def test_sample_update_matches_reference(dev, n, T, with_scores, output_scores):
    g = np.random.default_rng(n * 10 + T)
    v = 11  # eos among few tokens: rows finish at different steps
    history = np.full((n, T + 1), PAD, dtype=np.int64)
    history[:, 0] = START
    state = dict(history=history, tokens=np.full(n, START, dtype=np.int64), unfinished=np.ones(n, dtype=bool),
                 seq_logprob=np.zeros(n, dtype=np.float32),
                 token_logprob=np.zeros((n, T + 1), dtype=np.float32) if output_scores else None,
                 step_counter=np.array(0, dtype=np.int64), done=np.array(False))
    d = _put_state(dev, state)
    for step in range(T + 2):  # past the limit: done, nothing but `done` is written
        scores = (g.standard_normal((n, v)) * 2).astype(np.float32)
        row_max = scores.max(axis=1)
        row_logsum = np.log(np.exp(scores - row_max[:, None]).sum(axis=1)).astype(np.float32)
        inputs = (dict(scores=scores, row_max=row_max, row_logsum=row_logsum) if with_scores
                  else dict(logprob=g.standard_normal(n).astype(np.float32)))
        nxt = g.integers(0, v, n).astype(np.int64)
        state = R.sample_update(state, nxt, pad=PAD, eos=EOS, **inputs)
        K.sample_update(dev.put(nxt), d["history"], d["tokens"], d["unfinished"], d["seq_logprob"],
                        d["step_counter"], d["done"], pad=PAD, eos=EOS, token_logprob=d["token_logprob"],
                        launcher=dev.launcher, **{k: dev.put(a) for k, a in inputs.items()})
        _assert_state(dev, d, state, step)
    assert bool(state["done"])


def _beam_state(b, nb, T, output_scores):
    n = b * nb
    history = np.full((n, T + 1), PAD, dtype=np.int64)
    history[:, 0] = START
    running = np.zeros((b, nb), dtype=np.float32)
    running[:, 1:] = -1.0e9
    w = (T + 1,)
    return dict(history=history, tokens=np.full(n, START, dtype=np.int64), parent=np.arange(n, dtype=np.int64),
                running_score=running, fin_seq=np.full((b, nb) + w, PAD, dtype=np.int64),
                fin_score=np.full((b, nb), -1.0e9, dtype=np.float32), fin_flag=np.zeros((b, nb), dtype=bool),
                fin_len=np.zeros((b, nb), dtype=np.int64), heuristic_unsat=np.ones(b, dtype=bool),
                token_logprob=np.zeros((n,) + w, dtype=np.float32) if output_scores else None,
                fin_token_logprob=np.zeros((b, nb) + w, dtype=np.float32) if output_scores else None,
                step_counter=np.array(0, dtype=np.int64), done=np.array(False))


@pytest.mark.parametrize("b,nb,T,lp,early,output_scores", [
    (2, 3, 6, 1.0, False, True), (3, 2, 5, 0.7, True, False), (1, 4, 6, 1.5, "never", True),
    (2, 2, 4, -0.5, "never", False), (2, 32, 3, 1.0, False, True)])  # nb = 32: K = DEC_MAX_K
def test_beam_update_matches_reference(dev, b, nb, T, lp, early, output_scores):
    g = np.random.default_rng(b * 100 + nb * 10 + T)
    v, k = 5, 2 * nb  # eos is one of few tokens: hypotheses finish early
    denom = np.power(np.arange(1, T + 2, dtype=np.float64), lp).astype(np.float32)
    best_denom = float(np.float32(float(T) ** lp)) if early == "never" and lp > 0 else None
    state = _beam_state(b, nb, T, output_scores)
    d = _put_state(dev, state)
    ws = K.BeamUpdateWorkspace(b, nb, T, output_scores, launcher=dev.launcher)
    fixed = dict(denom=denom, best_denom=best_denom, early_stopping_true=early is True, vocab_size=v, eos=EOS)
    steps_run = 0
    for step in range(T + 2):
        cand_score = -np.sort(g.random((b, k)) * 4 + step, axis=1).astype(np.float32)  # descending
        cand_idx = np.stack([g.choice(nb * v, k, replace=False) for _ in range(b)]).astype(np.int64)
        cand_lp = (-g.random((b, k)) * 3).astype(np.float32) if output_scores else None
        steps_run += not bool(state["done"])
        state = R.beam_update(state, cand_score, cand_idx, cand_lp, **fixed)
        K.beam_update(dev.put(cand_score), dev.put(cand_idx), None if cand_lp is None else dev.put(cand_lp),
                      history=d["history"], tokens=d["tokens"], parent=d["parent"],
                      running_score=d["running_score"], fin_seq=d["fin_seq"], fin_score=d["fin_score"],
                      fin_flag=d["fin_flag"], fin_len=d["fin_len"], heuristic_unsat=d["heuristic_unsat"],
                      token_logprob=d["token_logprob"], fin_token_logprob=d["fin_token_logprob"],
                      step_counter=d["step_counter"], done=d["done"], workspace=ws,
                      **{**fixed, "denom": dev.put(denom)})
        _assert_state(dev, d, state, step)
    assert bool(state["done"]) and state["fin_flag"].any() and steps_run >= 2


@pytest.mark.parametrize("step,min_new", [(0, 3), (2, 3), (3, 3), (7, 0)])
def test_min_new_tokens_matches_reference(dev, step, min_new):
    g = np.random.default_rng(step)
    rows, v = 300, 9  # more rows than one block of threads
    wide = g.standard_normal((rows, v + 2)).astype(np.float32)
    d_wide = dev.put(wide)
    out = K.min_new_tokens(d_wide[:, :v], dev.put(step, dtype=np.int64), min_new, EOS, launcher=dev.launcher)
    want = wide.copy()
    want[:, :v] = R.min_new_tokens(wide[:, :v], step, min_new, EOS)
    np.testing.assert_array_equal(dev.get(d_wide), want)  # in place, row stride v + 2
    np.testing.assert_array_equal(dev.get(out), want[:, :v])


# row: (mode, temperature, top_k, top_p, seed, rng_row, max_new, min_new); mode 0 = idle
POOL_ROWS = [(1, 1.0, 0, 1.0, 0, 0, 6, 2), (2, 0.8, 5, 0.9, 7, 0, 6, 0), (0, 1.0, 0, 1.0, 0, 0, 0, 0),
             (1, 1.0, 0, 1.0, 0, 0, 3, 0), (2, 1.0, 0, 1.0, 11, 2, 5, 4), (2, 1.3, 0, 0.5, 3, 1, 6, 1)]


def _solo_row_state(max_new):
    history = np.full((1, max_new + 1), PAD, dtype=np.int64)
    history[:, 0] = START
    return dict(history=history, tokens=np.full(1, START, dtype=np.int64), unfinished=np.ones(1, dtype=bool),
                seq_logprob=np.zeros(1, dtype=np.float32), token_logprob=np.zeros((1, max_new + 1), dtype=np.float32),
                step_counter=np.array(0, dtype=np.int64), done=np.array(False))


def test_pool_step_matches_solo_kernels_and_reference(dev):
    """Every row of a pool (greedy, sampling with its own options, idle) decodes exactly as the
    solo strategy's kernels do on that row alone (bit for bit: tokens and summed log-probs), and
    as the NumPy reference (tokens; log-probs within float error)."""
    g = np.random.default_rng(5)
    C, W, v = len(POOL_ROWS), 8, dev.cap(300)
    ids, pos = dev.put(np.zeros(C, dtype=np.int64)), dev.put(np.zeros(C, dtype=np.int64))
    st = K.PoolState(C, W, ids, pos, launcher=dev.launcher)
    upd = np.stack([K.pool_update_row(r, mode=m, temperature=tp, top_k=k, top_p=p, seed=sd, rng_row=rr,
                                      max_new=mx, min_new=mn, vocab_size=v)
                    for r, (m, tp, k, p, sd, rr, mx, mn) in enumerate(POOL_ROWS)])
    names = ("mode", "top_k", "temperature", "top_p", "seed", "rng_row", "max_new", "min_new", "history",
             "token_logprob", "unfinished", "seq_logprob", "input_ids", "position")
    ref = {k: dev.get(getattr(st, k)).copy() for k in names}
    K.pool_set(st, dev.put(upd), pad=PAD, start=START)
    ref = R.pool_set(ref, upd, pad=PAD, start=START)
    solo = {r: _put_state(dev, _solo_row_state(row[6])) for r, row in enumerate(POOL_ROWS) if row[0]}
    seeds = {r: dev.put([row[4]], dtype=np.uint64) for r, row in enumerate(POOL_ROWS)}
    for step in range(7):
        scores = (g.standard_normal((C, v)) * 2).astype(np.float32)
        scores[:, EOS] += 1.5  # rows finish at different steps
        d_scores = dev.put(scores)
        K.pool_step(st, d_scores, C, eos=EOS)
        ref, masked = R.pool_step(ref, scores, C, eos=EOS)
        for k in ("history", "unfinished", "position", "input_ids"):
            np.testing.assert_array_equal(dev.get(getattr(st, k)), ref[k], err_msg=f"{k} after step {step}")
        np.testing.assert_allclose(dev.get(st.seq_logprob), ref["seq_logprob"], rtol=0, atol=2e-4)
        for r, d in solo.items():  # the solo kernels on row r alone
            m, tp, k, p, _, rr, mx, mn = POOL_ROWS[r]
            if bool(dev.get(d["done"])):
                continue
            row = dev.put(scores[r:r + 1])
            K.min_new_tokens(row, d["step_counter"], mn, EOS, launcher=dev.launcher)
            nxt = dev.put(np.zeros(1, dtype=np.int64))
            kw = {}
            if m == 1:
                _, kw["row_max"], kw["row_logsum"] = K.argmax_logsumexp(row, out=nxt, launcher=dev.launcher)
                kw["scores"] = row
            else:
                _, kw["logprob"] = K.sample_logprob(row, seeds[r], d["step_counter"], K.SampleOptions(tp, k, p),
                                                    row_offset=rr, out=nxt, launcher=dev.launcher)
            K.sample_update(nxt, d["history"], d["tokens"], d["unfinished"], d["seq_logprob"], d["step_counter"],
                            d["done"], pad=PAD, eos=EOS, token_logprob=d["token_logprob"], launcher=dev.launcher, **kw)
        for r, d in solo.items():
            t = int(dev.get(d["step_counter"]))
            assert int(dev.get(st.position)[r]) == t, (r, step)
            np.testing.assert_array_equal(dev.get(st.history)[r, :t + 1], dev.get(d["history"])[0, :t + 1])
            assert dev.get(st.seq_logprob)[r] == dev.get(d["seq_logprob"])[0], (r, step)  # bit for bit
            np.testing.assert_array_equal(dev.get(st.token_logprob)[r, :t + 1], dev.get(d["token_logprob"])[0, :t + 1])
    assert dev.get(st.position)[2] == 0 and not dev.get(st.unfinished).any()  # idle row untouched; all done
    leave = np.stack([K.pool_update_row(0, mode=0), K.pool_update_row(3, mode=1, max_new=2)])
    K.pool_set(st, dev.put(leave), pad=PAD, start=START)
    ref = R.pool_set(ref, leave, pad=PAD, start=START)
    for k in names:
        np.testing.assert_allclose(dev.get(getattr(st, k)), ref[k], rtol=0, atol=2e-4, err_msg=k)
    assert dev.get(st.mode)[0] == 0 and dev.get(st.position)[3] == 0 and dev.get(st.unfinished)[3]


def test_abi_kernel_launches(dev):
    dev.launcher.launch(f"t5rt_abi_{K.ABI}", (1,), (1,), ())


# Kernels the host build cannot run, with why (regex of the name -> reason); everything else must.
# Only for what blocks-one-after-another cannot emulate (e.g. a grid-wide barrier between
# co-resident blocks); the pieces such a kernel runs should still be covered by their own kernels.
# ---- the native decoder step (kernels/native_decoder.cu, t5rt.kernels.native) ----------------

NATIVE_SHAPES = {  # (d, heads, d_kv, d_ff, layers, vocab, gated): vector and scalar load paths
    "vec": (64, 4, 16, 128, 2, 500, True),
    "odd": (32, 3, 12, 64, 1, 384, False),  # H * Dk = 36 != d; 16-bit rows of 36 are not 16-byte multiples
    # few output rows a block over a long K: FFN_OUT's 16 rows of 2048 inputs are split into
    # slices of K whose partial sums meet in shared memory (T5rtGemv's KS > 1 and combine(), on
    # the host build's 3 blocks and on a GPU's grid alike)
    "split": (16, 2, 8, 2048, 1, 64, False),
}
NATIVE_TOL = {"float32": 2e-5, "float16": 4e-3, "bfloat16": 2e-2}  # of the max |value|: a few ulps of A


def native_close(got, ref, act_dtype, what):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    err = np.abs(got - ref).max()
    assert err <= NATIVE_TOL[act_dtype] * max(np.abs(ref).max(), 1e-6), \
        f"{what}: max err {err:.3g} vs scale {np.abs(ref).max():.3g}"


def native_state(m, n, s, t, seed):
    """Random step inputs: ids, positions (per row), mask, cross K/V, caches (act storage)."""
    from t5rt.weights import to_storage

    rng = np.random.default_rng(seed)
    L, H, Dk = len(m.layers), m.heads, m.d_kv
    act = lambda *shape: to_storage(rng.standard_normal(shape).astype(np.float32), m.act_dtype)  # noqa: E731
    mask = (rng.random((n, s)) < 0.7).astype(np.int64)
    mask[:, 0] = 1
    return dict(ids=rng.integers(0, m.vocab, (n, 1)).astype(np.int64), pos=rng.integers(0, t, n).astype(np.int64),
                mask=mask, ck=[act(n, H, s, Dk) for _ in range(L)], cv=[act(n, H, s, Dk) for _ in range(L)],
                sk=[act(n, H, t, Dk) for _ in range(L)], sv=[act(n, H, t, Dk) for _ in range(L)])


def native_step_table(dev, m, st, **table_options):
    from t5rt.kernels.native import DeviceModel, StepBuffers, StepTable

    n = st["ids"].shape[0]
    bufs = StepBuffers(input_ids=dev.put(st["ids"]), position=dev.put(st["pos"]),
                       encoder_attention_mask=dev.put(st["mask"]), cross_k=[dev.put(c) for c in st["ck"]],
                       cross_v=[dev.put(c) for c in st["cv"]], self_k=[dev.put(c) for c in st["sk"]],
                       self_v=[dev.put(c) for c in st["sv"]], logits=dev.xp.zeros((n, m.vocab), np.float32))
    return StepTable(DeviceModel(m, dev.launcher), bufs, **table_options)


@pytest.mark.parametrize("act_dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("shape", list(NATIVE_SHAPES))
def test_native_phases_match_reference(dev, shape, act_dtype):
    """Each phase of the native step (t5rt_native_phase_<A>) against t5rt.kernels.native_reference
    on the same inputs; the reference's result is put back before the next phase, so every phase
    is checked alone. On the GPU the persistent whole-step kernel (t5rt_native_step_<A>, a grid
    barrier between phases: not runnable on the host) must then equal the per-phase launches."""
    from t5rt.kernels import native_reference as NR
    from t5rt.kernels.native import Phase
    from t5rt.weights import from_storage

    d, H, Dk, F, L, V, gated = NATIVE_SHAPES[shape]
    m = NR.random_model(d, H, Dk, F, L, V, act_dtype, gated, num_buckets=8, radius=20, seed=1)
    st = native_state(m, 5, 37, 45, seed=2)  # more keys than a warp has lanes
    tab = native_step_table(dev, m, st)
    sk, sv = [c.copy() for c in st["sk"]], [c.copy() for c in st["sv"]]
    f = lambda a: from_storage(dev.get(a), act_dtype)  # noqa: E731
    close = lambda got, ref, what: native_close(dev.get(got), ref, act_dtype, what)  # noqa: E731

    tab.launch_phase(Phase.EMBED)
    x = NR.embed(m, st["ids"])
    close(tab.x, x, "embed")
    for l, ly in enumerate(m.layers):
        tab.launch_phase(Phase.SELF_QKV, l)
        q, _, _ = NR.self_qkv(m, ly, x, st["pos"], sk[l], sv[l])
        close(tab.q, q, f"self_qkv q l{l}")
        native_close(f(tab.bufs.self_k[l]), from_storage(sk[l], act_dtype), act_dtype, f"self_qkv k cache l{l}")
        native_close(f(tab.bufs.self_v[l]), from_storage(sv[l], act_dtype), act_dtype, f"self_qkv v cache l{l}")
        tab.q[...] = dev.xp.asarray(q)
        tab.bufs.self_k[l][...] = dev.xp.asarray(sk[l])
        tab.bufs.self_v[l][...] = dev.xp.asarray(sv[l])
        steps = [
            (Phase.SELF_ATTN, "a", lambda: NR.self_attention(m, q, st["pos"], sk[l], sv[l])),
            (Phase.SELF_OUT, "x", lambda: NR.residual(m, x, NR.gemv(m, ly.sa_o, a))),
            (Phase.CROSS_Q, "q", lambda: NR.gemv(m, ly.ca_q, NR.norm(m, x, ly.ca_norm))),
            (Phase.CROSS_ATTN, "a", lambda: NR.cross_attention(m, q, st["ck"][l], st["cv"][l], st["mask"])),
            (Phase.CROSS_OUT, "x", lambda: NR.residual(m, x, NR.gemv(m, ly.ca_o, a))),
            (Phase.FFN_IN, "h", lambda: NR.ffn_in(m, ly, x)),
            (Phase.FFN_OUT, "x", lambda: NR.residual(m, x, NR.gemv(m, ly.wo, h))),
        ]
        a = h = None
        for ph, buf, ref_fn in steps:
            tab.launch_phase(ph, l)
            ref = ref_fn()
            close(getattr(tab, buf), ref, f"{ph.name.lower()} l{l}")
            getattr(tab, buf)[...] = dev.xp.asarray(ref)
            if buf == "a":
                a = ref
            elif buf == "q":
                q = ref
            elif buf == "h":
                h = ref
            else:
                x = ref
    tab.launch_phase(Phase.LM_HEAD)
    close(tab.bufs.logits, NR.lm_head(m, x), "lm_head")

    # the whole step: per-phase launches (and, on the GPU, the persistent kernel) from one state
    ref = NR.decoder_step(m, st["ids"], st["pos"], st["mask"], st["ck"], st["cv"], [c.copy() for c in st["sk"]],
                          [c.copy() for c in st["sv"]])
    results = []
    # (pdl: the phases with programmatic dependent launch, a plain launch on the host build; and
    # with blocks of 128 threads, half the default)
    # ("table": the projections read their operands from the step table, not from kernel parameters;
    # "one_smem": every phase launched with the shared memory of the largest, not its own)
    for run in ("launch_phases", "pdl", "pdl128", "table", "one_smem") + (() if dev.host else ("launch",)):
        tab2 = native_step_table(dev, m, st, phase_args=run != "table", phase_smem=run != "one_smem")
        if run in ("table", "one_smem"):
            tab2.launch_phases(pdl=True)
        elif run.startswith("pdl"):
            tab2.launch_phases(pdl=True, threads=128 if run == "pdl128" else None)
        else:
            getattr(tab2, run)()
        got = [dev.get(tab2.bufs.logits)] + [dev.get(c) for c in tab2.bufs.self_k + tab2.bufs.self_v]
        if run == "pdl128":  # another block size splits the sums otherwise: close, not equal
            native_close(got[0], ref, act_dtype, "whole step, 128 threads")
        else:
            results.append(got)
    native_close(results[0][0], ref, act_dtype, "whole step")
    for got in results[1:]:
        for u, v in zip(results[0], got):
            assert np.array_equal(u, v)


@pytest.mark.parametrize("shape", ["vec", "split", "wide"])
@pytest.mark.parametrize("act_dtype", ["float32", "bfloat16"])
def test_native_step_is_batch_invariant(dev, act_dtype, shape):
    """A row's logits and cache writes do not depend on the rows it shares a step with: the step
    over 11 rows equals, bit for bit, each row's step alone (the projections split their sums by
    the weight shape and the grid, never by the row count). This is what lets the service batch
    requests on the native engine and still return each one's solo tokens."""
    from t5rt.kernels import native_reference as NR

    # wide: rows of 256 inputs are 2 units a lane in fp32 (a window packs 2 items of 2) and 1 in
    # bf16 (4 of 1); vec's rows of 64 are 1 unit (4 items, 2 in the gated FFN's two-matrix window)
    d, H, Dk, F, L, V, gated = NATIVE_SHAPES[shape] if shape != "wide" else (256, 4, 16, 256, 1, 64, False)
    m = NR.random_model(d, H, Dk, F, L, V, act_dtype, gated, num_buckets=8, radius=20, seed=3)
    st = native_state(m, 11, 37, 45, seed=4)  # 11 rows: two groups of 8 accumulators
    tab = native_step_table(dev, m, st)
    tab.launch_phases(pdl=True)
    together = [dev.get(tab.bufs.logits)] + [dev.get(c) for c in tab.bufs.self_k + tab.bufs.self_v]
    for i in (0, 5, 10):
        one = {k: ([c[i:i + 1] for c in v] if isinstance(v, list) else v[i:i + 1]) for k, v in st.items()}
        # alone, a GEMV window packs several short items (T5rtGemv's pack); 11 rows never do; and
        # alone with packing off (with the projections' operands from the step table, too)
        for pack in (True, False):
            tab1 = native_step_table(dev, m, one, pack=pack, phase_args=pack)
            tab1.launch_phases(pdl=True)
            alone = [dev.get(tab1.bufs.logits)] + [dev.get(c) for c in tab1.bufs.self_k + tab1.bufs.self_v]
            for u, v in zip(together, alone):
                assert np.array_equal(u[i:i + 1], v), f"row {i} differs when it runs alone (pack={pack})"


@pytest.mark.parametrize("act_dtype", ["float32", "bfloat16"])
def test_native_step_ignores_source_padding(dev, act_dtype):
    """A row whose source is padded to a longer bucket (mask 0, any cross K/V there: a request in
    the slot pool of a longer source, RuntimeOptions.share_pools) gets, bit for bit, the logits
    and cache writes of its own bucket; so does a row whose mask ends early in its own bucket
    (cross-attention stops at the last unmasked position)."""
    from t5rt.kernels import native_reference as NR
    from t5rt.weights import to_storage

    d, H, Dk, F, L, V, gated = NATIVE_SHAPES["vec"]
    m = NR.random_model(d, H, Dk, F, L, V, act_dtype, gated, num_buckets=8, radius=20, seed=5)
    st = native_state(m, 3, 37, 45, seed=6)
    st["mask"][1, 20:] = 0  # row 1: its source ends at 20 of 37
    rng = np.random.default_rng(7)
    pad = 64 - 37
    wide = dict(st, mask=np.concatenate([st["mask"], np.zeros((3, pad), np.int64)], axis=1))
    for k in ("ck", "cv"):
        wide[k] = [np.concatenate([c, to_storage(rng.standard_normal((3, H, pad, Dk)).astype(np.float32) * 50,
                                                 m.act_dtype)], axis=2) for c in st[k]]
    out = []
    for state in (st, wide):
        tab = native_step_table(dev, m, state)
        tab.launch_phases(pdl=True)
        out.append([dev.get(tab.bufs.logits)] + [dev.get(c) for c in tab.bufs.self_k + tab.bufs.self_v])
    for u, v in zip(*out):
        assert np.array_equal(u, v), "padding the source changed a row's step"
    ref = NR.decoder_step(m, st["ids"], st["pos"], st["mask"], st["ck"], st["cv"], [c.copy() for c in st["sk"]],
                          [c.copy() for c in st["sv"]])
    native_close(out[0][0], ref, act_dtype, "whole step")


HOST_EXEMPT: dict[str, str] = {
    # grid barrier between phases: host blocks run one after another; its phases run on the host
    # as t5rt_native_phase_*, and the GPU test checks the step equals them bit for bit
    r"t5rt_native_step_.*": "persistent kernel (grid-wide barrier)",
}


def test_every_kernel_ran_on_the_host(host_kernels, request):
    """Last in this module: every extern "C" kernel of kernels/*.cu (a new file's too) has been run
    on the CPU by a `dev` test above, against its reference. A kernel without such a test fails."""
    dev_tests = {name for name, fn in vars(sys.modules[__name__]).items()
                 if name.startswith("test_") and callable(fn) and "dev" in inspect.signature(fn).parameters}
    selected = {item.originalname for item in request.session.items
                if getattr(item, "callspec", None) is not None and item.callspec.params.get("dev") == "host"}
    if not dev_tests <= selected:
        pytest.skip("needs every host test of this module selected (run the module without -k)")
    exempt = {n for n in host_kernels.names if any(re.fullmatch(p, n) for p in HOST_EXEMPT)}
    missing = sorted(set(host_kernels.names) - host_kernels.launched - exempt)
    assert not missing, f"kernels never run on the host against a reference: {missing}"
