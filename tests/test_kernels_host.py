"""The host (CPU) build of kernels/*.cu: t5rt.kernels.host + kernels/host_prelude.h.

test_kernels.py runs every kernel through its wrapper on this build against its NumPy reference
(the `dev` fixture's "host" param) and fails if a kernel of kernels/*.cu never ran there. This
file checks the emulation itself: warp shuffles, ballots, shared memory, barriers with exited
threads and atomics on probe kernels, deadlock reporting, fibers vs real OS threads, the check
of every argument against the kernel's C++ signature, and that every source ships.
"""

from __future__ import annotations

import fnmatch
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import t5rt.kernels as K
from t5rt.errors import BackendError, InvalidInputError
from t5rt.kernels import host
from t5rt.kernels import reference as R

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10
    tomllib = pytest.importorskip("tomli")

PROBES = r"""
// Each emulated feature against what CUDA defines (the expected values are computed in Python).
extern "C" __global__ void probe_warp(int* out) {  // out [threads, 6]
  const int t = threadIdx.x, lane = t & 31;
  int* o = out + 6 * t;
  o[0] = __shfl_xor_sync(0xffffffffu, t * 10, 5);
  o[1] = __shfl_up_sync(0xffffffffu, t * 10, 3);
  o[2] = __shfl_down_sync(0xffffffffu, t * 10, 2);
  o[3] = __shfl_sync(0xffffffffu, t * 10, 7);
  o[4] = (int)__ballot_sync(0xffffffffu, lane % 3 == 0) / 10 * 10;
  o[5] = __shfl_xor_sync(0xffffffffu, t * 10, 16, 16);  // width 16: lane ^ 16 is outside, keeps its own
}

// Shared memory seen by the whole block, barriers that exited threads leave, atomics.
extern "C" __global__ void probe_block(unsigned long long* total, int* mirror, int* survivors) {
  __shared__ int slots[1024];
  __shared__ int alive;
  const int t = threadIdx.x, n = blockDim.x;
  if (t == 0) alive = 0;
  slots[t] = 1000 * blockIdx.x + t;
  atomicAdd(total, (unsigned long long)(t + 1));
  if (t % 3 == 2) return;  // a third of the threads exit: later barriers must not wait for them
  __syncthreads();
  mirror[blockIdx.x * n + t] = slots[n - 1 - t];  // written by another thread before the barrier
  atomicAdd(&alive, 1);
  __syncthreads();
  if (t == 0) survivors[blockIdx.x] = alive;
}

// Dynamic shared memory (the launch's shared_mem bytes) and a vector type.
extern "C" __global__ void probe_dynamic_shared(float4* out) {
  extern __shared__ float buf[];
  buf[threadIdx.x] = threadIdx.x + 0.5f + blockIdx.x;
  __syncthreads();
  const float v = buf[blockDim.x - 1 - threadIdx.x];
  out[blockIdx.x * blockDim.x + threadIdx.x] = make_float4(v, -v, 2.f * v, (float)blockIdx.x);
}

extern "C" __global__ void probe_deadlock(int* out) {
  int v = 1;
  if (threadIdx.x == 0) v = __shfl_xor_sync(0xffffffffu, v, 1);  // lane 0 alone at a warp barrier
  __syncthreads();                                               // the rest at the block barrier
  out[threadIdx.x] = v;
}
"""


@pytest.fixture(scope="module")
def probes(host_kernels, tmp_path_factory):
    return host.HostKernels(tmp_path_factory.mktemp("probes"), source=PROBES)


def _expected_warp(threads: int) -> np.ndarray:
    """CUDA's results of probe_warp for full warps: values t * 10, lanes out of range keep their own."""
    t = np.arange(threads)
    lane, base = t % 32, t - t % 32
    ballot = sum(1 << j for j in range(0, 32, 3))
    return np.stack([base + (lane ^ 5), np.where(lane >= 3, t - 3, t), np.where(lane + 2 < 32, t + 2, t),
                     base + 7, np.full(threads, ballot // 10), t], axis=1) * 10


@pytest.mark.parametrize("threads", [32, 256, 1024])
def test_warp_shuffles_and_ballot(probes, threads):
    out = np.zeros((threads, 6), dtype=np.int32)
    probes.launch("probe_warp", (1,), (threads,), (out,))
    np.testing.assert_array_equal(out, _expected_warp(threads))


@pytest.mark.parametrize("os_threads", [False, True])
def test_shared_memory_barriers_and_atomics(probes, os_threads):
    launcher = probes if not os_threads else host.HostKernels(probes.library.parents[1], os_threads=True,
                                                              source=PROBES)
    blocks, n = 3, 256
    total = np.zeros(1, dtype=np.uint64)
    mirror = np.full(blocks * n, -1, dtype=np.int32)
    survivors = np.zeros(blocks, dtype=np.int32)
    launcher.launch("probe_block", (blocks,), (n,), (total, mirror, survivors))
    t = np.arange(n)
    assert int(total[0]) == blocks * n * (n + 1) // 2  # no lost update among 256 concurrent adds
    want = np.where(t % 3 == 2, -1, 1000 * np.arange(blocks)[:, None] + (n - 1 - t)).reshape(-1)
    np.testing.assert_array_equal(mirror, want)
    np.testing.assert_array_equal(survivors, np.full(blocks, (t % 3 != 2).sum()))


def test_dynamic_shared_memory_and_vector_types(probes):
    blocks, n = 2, 96
    out = np.zeros((blocks * n, 4), dtype=np.float32)
    probes.launch("probe_dynamic_shared", (blocks,), (n,), (out,), shared_mem=n * 4)
    b = np.repeat(np.arange(blocks), n)
    v = (n - 1 - np.tile(np.arange(n), blocks)) + 0.5 + b
    np.testing.assert_array_equal(out, np.stack([v, -v, 2 * v, b], axis=1).astype(np.float32))


def test_a_barrier_not_every_thread_reaches_is_reported(probes):
    with pytest.raises(BackendError, match="deadlock"):
        probes.launch("probe_deadlock", (1,), (64,), (np.zeros(64, dtype=np.int32),))
    out = np.zeros((32, 6), dtype=np.int32)  # the build is still usable afterwards
    probes.launch("probe_warp", (1,), (32,), (out,))
    np.testing.assert_array_equal(out, _expected_warp(32))


def test_os_threads_run_the_real_kernels_like_fibers(host_kernels):
    """The same library with a block's threads as OS threads running at once (atomics in the
    top-k radix select, shared memory and barriers really concurrent)."""
    threaded = host.HostKernels(host_kernels.library.parents[1], os_threads=True)
    assert threaded.library == host_kernels.library  # one build, two ways to run it
    g = np.random.default_rng(3)
    scores = np.round(g.standard_normal((2, 5000)), 1).astype(np.float32)  # 2 chunks, ties
    want = R.beam_topk(scores, 8)
    for launcher in (host_kernels, threaded):
        vals, idx = K.beam_topk(scores, 8, launcher=launcher)
        np.testing.assert_array_equal(idx, want[1])
        np.testing.assert_array_equal(vals, want[0])


def test_arguments_must_match_the_kernel_signature(host_kernels):
    x = np.zeros((2, 8), dtype=np.float32)
    out = np.zeros(2, dtype=np.int64)
    assert host_kernels.signature("t5rt_argmax_rows") == "plip"  # logits, row_stride, V, out
    ok = (x, np.int64(8), np.int32(8), out)
    host_kernels.launch("t5rt_argmax_rows", (2,), (32,), ok)
    for bad, what in [((x, np.int32(8), np.int32(8), out), "np.int64"),  # int for i64
                      ((x, 8, np.int32(8), out), "np.int64"),              # Python int
                      ((x, np.int64(8), np.int32(8), 5), "pointer"),       # value for a pointer
                      ((x, np.int64(8), np.int32(8)), "takes 4 arguments")]:
        with pytest.raises(InvalidInputError, match=what):
            host_kernels.launch("t5rt_argmax_rows", (2,), (32,), bad)
    with pytest.raises(InvalidInputError, match="1024"):
        host_kernels.launch("t5rt_argmax_rows", (2,), (2048,), ok)
    with pytest.raises(InvalidInputError, match="no kernel"):
        host_kernels.launch("t5rt_nope", (1,), (1,), ())


def test_host_build_has_every_kernel_of_every_source(host_kernels):
    assert set(K.KERNEL_NAMES) <= set(host_kernels.names)  # what the wrappers launch
    plain = set()  # kernels written out (not macro-generated) in each kernels/*.cu
    for path in K.kernel_sources():
        plain |= set(re.findall(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(?!__launch_bounds__)(\w+)\s*\(',
                                path.read_text()))
    assert plain and plain <= set(host_kernels.names)


def test_every_source_is_loaded_and_shipped():
    """kernel_sources() is every kernels/*.cu of the checkout, and pyproject's package data ships
    every file of kernels/ (sources, header, host prelude) in wheels, where NVRTC and the host
    build read them (t5rt/kernels/cuda/)."""
    on_disk = sorted(p.name for p in (ROOT / "kernels").glob("*.cu"))
    assert [p.name for p in K.kernel_sources()] == on_disk
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["t5rt.kernels.cuda"]
    files = [p.name for p in (ROOT / "kernels").iterdir() if p.is_file()]
    assert host.PRELUDE in files and K.HEADER in files
    unshipped = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert not unshipped, f"kernels/ files a wheel would not ship: {unshipped}"
    unit = host.unit_source()
    assert all(f'"{name}"' in unit for name in on_disk)  # the host build compiles each one


def test_step_update_workbench_check_passes_on_the_host(host_kernels, monkeypatch):
    """bench/kernels/step_update.py (run on the GPU for the table) checks the kernels it times."""
    monkeypatch.syspath_prepend(str(ROOT / "bench" / "kernels"))
    import step_update

    assert step_update.check(host_kernels) == "ok"
