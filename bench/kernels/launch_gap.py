"""Where a native decoder phase's time goes when the phase itself moves little data (issue 13).

The native step is 2 + 8 L phases; t5-small's phases each read 0.5-4 MB yet took 6.6-10 us each,
far above their floors (0.2-1.2 us). This workbench separates the fixed cost of a phase boundary
from the work, on a chain of PHASES dependent phases inside one CUDA graph:

    empty (launches)        an empty kernel per phase: the launch gap of a graph
    empty (PDL)             the same with programmatic dependent launch (griddepcontrol)
    barrier (persistent)    one kernel, a grid barrier per phase: the barrier's cost
    gemv (launches)         per phase a bf16 [R, 512] GEMV over fresh weights reading x written by
                            the phase before (the shape of SELF_OUT / CROSS_Q)
    gemv (PDL)              the same, each phase's weights loaded into registers *before*
                            griddepcontrol.wait, so they stream in while the previous phase ends
    gemv (persistent)       the same work, one kernel, grid barrier between phases
    gemv (persistent, reg prefetch)  ... with the next phase's weights loaded before the barrier
    gemv (PDL) + ...        the PDL GEMV with one piece of a native phase added (x in 26 KB or the
                            most dynamic shared memory, an RMS norm a block, a residual epilogue,
                            the step table's copy), then all of them: which one costs the native
                            phases their 5-7 us (bench/results/h100-session-2026-12-08.md)

    python bench/kernels/launch_gap.py [--phases 54] [--rows 1024] [--json out.json]

Prints us per phase (median over graph replays) and the floor of the bytes a phase reads.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from _bench import cupy, peak_tbps, time_device
from t5rt.kernels import KERNELS_DIR, pdl

K = 512  # inputs of every GEMV phase (t5-small's d_model)

SOURCE = r"""
#include "t5rt_kernels.cuh"  // the engine's loads, grid barrier, warp sum and PDL calls

// one warp row = 512 bf16 = 64 x 16 B: two chunks a lane; at most MAXR rows a warp
#define MAXR 4
struct Rows { uint4 w[MAXR][2]; };

__device__ __forceinline__ void load_rows(const unsigned short* W, int R, Rows& r) {
  const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  const int gw = blockIdx.x * nw + (threadIdx.x >> 5), gn = gridDim.x * nw;
#pragma unroll
  for (int i = 0; i < MAXR; ++i) {
    const int j = gw + i * gn;
    if (j < R) {
      const uint4* row = (const uint4*)(W + (long long)j * 512);
      r.w[i][0] = t5rt_ld_stream(row + lane);
      r.w[i][1] = t5rt_ld_stream(row + lane + 32);
    }
  }
}

__device__ __forceinline__ void dot_rows(const Rows& r, const float* xs, float* y, int R) {
  const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  const int gw = blockIdx.x * nw + (threadIdx.x >> 5), gn = gridDim.x * nw;
#pragma unroll
  for (int i = 0; i < MAXR; ++i) {
    const int j = gw + i * gn;
    if (j < R) {  // warp-uniform
      float acc = 0.f;
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const uint4 v = r.w[i][c];
        const u32 w4[4] = {v.x, v.y, v.z, v.w};
        const float* xr = xs + (lane + 32 * c) * 8;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          acc += __uint_as_float(w4[e] << 16) * xr[2 * e];
          acc += __uint_as_float(w4[e] & 0xffff0000u) * xr[2 * e + 1];
        }
      }
      acc = t5rt_warp_sum(acc);
      if (lane == 0) y[j] = acc;
    }
  }
}

extern "C" __global__ void empty_phase(float* y) {
  t5rt_pdl_trigger();
  t5rt_pdl_wait();
}

extern "C" __global__ void gemv_phase(const unsigned short* W, const float* x, float* y, int R) {
  __shared__ float xs[512];
  Rows r;
  load_rows(W, R, r);  // independent of the phase before: in flight while it ends (PDL)
  t5rt_pdl_trigger();
  t5rt_pdl_wait();
  for (int i = threadIdx.x; i < 512; i += blockDim.x) xs[i] = t5rt_ldcg(x + i);
  __syncthreads();
  dot_rows(r, xs, y, R);
}

// gemv_phase plus, by `parts`, the pieces a native phase (native_decoder.cu) adds around its GEMV,
// to find which of them cost the 5-7 us of a lone native phase against ~2.4 us here:
//   1: x staged in the launch's dynamic shared memory (its size, given at launch, is what limits
//      how many blocks an SM holds, and so whether PDL can overlap two phases)
//   2: the RMS norm of x in every block (a block reduction and a second barrier)
//   4: a residual epilogue (y = x_old + W x: one more dependent load a row)
//   8: a 512-byte table copied from global into shared memory after the wait (t5rt_load_step)
struct Table { unsigned long long w[64]; };
extern "C" __global__ void gemv_phase_plus(const unsigned short* W, const float* x, float* y, int R, int parts,
                                           const Table* table) {
  __shared__ float xs_static[512];
  __shared__ float red[32];
  __shared__ Table tab;
  extern __shared__ __align__(16) float dyn[];
  float* xs = (parts & 1) ? dyn : xs_static;
  Rows r;
  load_rows(W, R, r);
  t5rt_pdl_trigger();
  t5rt_pdl_wait();
  if (parts & 8) {
    for (int i = threadIdx.x; i < 64; i += blockDim.x) tab.w[i] = table->w[i];
    __syncthreads();
    if (tab.w[0] == 12345ull) return;  // (never: keeps the copy)
  }
  for (int i = threadIdx.x; i < 512; i += blockDim.x) xs[i] = t5rt_ldcg(x + i);
  __syncthreads();
  if (parts & 2) {
    float ss = 0.f;
    for (int i = threadIdx.x; i < 512; i += blockDim.x) ss += xs[i] * xs[i];
    const float inv = rsqrtf(t5rt_block_allreduce(ss, T5rtSum(), red) / 512.f + 1e-6f);
    __syncthreads();
    for (int i = threadIdx.x; i < 512; i += blockDim.x) xs[i] *= inv;
    __syncthreads();
  }
  if (!(parts & 4)) {
    dot_rows(r, xs, y, R);
    return;
  }
  float yl[MAXR];  // y = x_old + W x, x_old read after the GEMV as the native epilogue does
  const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  const int gw = blockIdx.x * nw + (threadIdx.x >> 5), gn = gridDim.x * nw;
  dot_rows(r, xs, y, R);
  __syncwarp();
#pragma unroll
  for (int i = 0; i < MAXR; ++i) {
    const int j = gw + i * gn;
    yl[i] = (j < R && lane == 0) ? t5rt_ldcg(y + j) : 0.f;
  }
#pragma unroll
  for (int i = 0; i < MAXR; ++i) {
    const int j = gw + i * gn;
    if (j < R && lane == 0) y[j] = yl[i] + (j < 512 ? t5rt_ldcg(x + j) : 0.f);
  }
}

extern "C" __global__ void barrier_persistent(u32* bar, int phases) {
  u32 gen = t5rt_ld_acquire(bar + 1);
  for (int p = 0; p < phases; ++p) t5rt_grid_sync(bar, gen);
}

// phase p: y_p = W_p x_p with x_{p+1} = y_p[:512]; xbuf [2, R]
extern "C" __global__ void gemv_persistent(const unsigned short* W, float* xbuf, int R, int phases, u32* bar,
                                           int prefetch) {
  __shared__ float xs[512];
  u32 gen = t5rt_ld_acquire(bar + 1);
  Rows r;
  load_rows(W, R, r);
  for (int p = 0; p < phases; ++p) {
    const float* x = xbuf + (p & 1) * R;
    float* y = xbuf + ((p + 1) & 1) * R;
    if (!prefetch && p > 0) load_rows(W + (long long)p * R * 512, R, r);
    for (int i = threadIdx.x; i < 512; i += blockDim.x) xs[i] = t5rt_ldcg(x + i);
    __syncthreads();
    dot_rows(r, xs, y, R);
    if (prefetch && p + 1 < phases) load_rows(W + (long long)(p + 1) * R * 512, R, r);
    t5rt_grid_sync(bar, gen);
  }
}
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phases", type=int, default=54)
    p.add_argument("--rows", type=int, default=1024, help="GEMV output rows a phase (bf16 [rows, 512])")
    p.add_argument("--blocks", type=str, default="256,512", help="block sizes to try")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    cp = cupy()
    name, tbps = peak_tbps()
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    mod = cp.RawModule(code=SOURCE, options=("-std=c++17", f"-I{KERNELS_DIR}"))
    fns = {k: mod.get_function(k) for k in ("empty_phase", "gemv_phase", "barrier_persistent", "gemv_persistent",
                                             "gemv_phase_plus")}
    optin = int(cp.cuda.Device().attributes["MaxSharedMemoryPerBlockOptin"])
    fns["gemv_phase_plus"].max_dynamic_shared_size_bytes = optin - int(fns["gemv_phase_plus"].shared_size_bytes)
    table = cp.zeros(64, dtype=cp.uint64)
    P, R = a.phases, a.rows
    # fresh weights every phase (P * R * 1 KB; > L2 for the defaults), x ping-pong [2, R]
    W = cp.random.standard_normal((P, R, K), dtype=cp.float32) * np.float32(K ** -0.5)  # keeps |x| ~ 1
    Wb = (W.view(cp.uint32) >> 16).astype(cp.uint16)  # bf16 bits (truncated: fine for timing)
    xbuf = cp.zeros((2, max(R, K)), dtype=cp.float32)
    x0 = cp.random.standard_normal(K, dtype=cp.float32)
    if R > 4 * sms * (min(int(b) for b in a.blocks.split(",")) // 32) or R < K:
        p.error(f"--rows must be in [{K}, 4 warps' rows of the grid]")
    bar = cp.zeros(2, dtype=cp.uint32)
    floor_us = R * K * 2 / (tbps * 1e12) * 1e6
    rows = []

    def report(kind: str, block: int, us_total: float, floor: float) -> None:
        us = us_total / P
        rows.append(dict(kind=kind, block=block, grid=sms, phases=P, rows=R, us_per_phase=us, floor_us=floor))
        print(f"{kind:40s} block {block:4d}  {us:7.2f} us/phase  (floor {floor:.2f})", flush=True)

    # correctness of the GEMV chain: launches vs persistent vs numpy, same final x
    def ref_chain():
        x = cp.asnumpy(x0).astype(np.float64)
        Wf = cp.asnumpy((Wb.astype(cp.uint32) << 16).view(cp.float32)).astype(np.float64)
        for q in range(P):
            y = Wf[q] @ x
            x = y[:K]
        return y

    for block in [int(b) for b in a.blocks.split(",")]:
        stream = cp.cuda.get_current_stream()

        def launch(fn, args: tuple, use_pdl: bool, smem: int = 0) -> None:  # on the current (capturing) stream
            if use_pdl:
                pdl.launch(fn, (sms,), (block,), args, smem, cp.cuda.get_current_stream().ptr)
            else:
                fn((sms,), (block,), args, shared_mem=smem)

        def empty(use_pdl: bool) -> None:
            for _ in range(P):
                launch(fns["empty_phase"], (xbuf,), use_pdl)

        def gemv(use_pdl: bool) -> None:
            for q in range(P):
                launch(fns["gemv_phase"], (Wb[q], xbuf[q & 1], xbuf[(q + 1) & 1], np.int32(R)), use_pdl)

        def plus(parts: int, smem: int) -> None:  # with PDL, as the native phases launch
            for q in range(P):
                launch(fns["gemv_phase_plus"], (Wb[q], xbuf[q & 1], xbuf[(q + 1) & 1], np.int32(R), np.int32(parts),
                                                table), True, smem)

        def persistent(prefetch: int) -> None:
            fns["gemv_persistent"]((sms,), (block,), (Wb, xbuf, np.int32(R), np.int32(P), bar, np.int32(prefetch)))

        want = ref_chain()
        for label, fn in [("gemv (launches)", lambda: gemv(False)), ("gemv (PDL)", lambda: gemv(True)),
                          ("gemv (persistent)", lambda: persistent(0)),
                          ("gemv (persistent, reg prefetch)", lambda: persistent(1))]:
            xbuf[:] = 0
            xbuf[0, :K] = x0
            fn()
            stream.synchronize()
            got = cp.asnumpy(xbuf[P & 1, :R])
            err = float(np.max(np.abs(got - want)) / (np.max(np.abs(want)) + 1e-30))
            if err > 1e-3:
                print(f"{label}: WRONG result (rel err {err:.2e})", flush=True)
        report("empty (launches)", block, time_device(lambda: empty(False), reps=4, iters=30), 0.0)
        report("empty (PDL)", block, time_device(lambda: empty(True), reps=4, iters=30), 0.0)
        report("barrier (persistent)", block,
               time_device(lambda: fns["barrier_persistent"]((sms,), (block,), (bar, np.int32(P))), reps=4, iters=30), 0.0)
        report("gemv (launches)", block, time_device(lambda: gemv(False), reps=4, iters=30), floor_us)
        report("gemv (PDL)", block, time_device(lambda: gemv(True), reps=4, iters=30), floor_us)
        # the native phase's pieces one at a time, then together (26 KB: a t5-small phase at N=1;
        # 219 KB: the largest phase's at N=32, which every phase was launched with before 5525743)
        most = optin - int(fns["gemv_phase_plus"].shared_size_bytes)
        for label, parts, smem in [("gemv (PDL) + 26 KB dynamic smem", 1, 26 * 1024),
                                   (f"gemv (PDL) + {most // 1024} KB dynamic smem", 1, most),
                                   ("gemv (PDL) + RMS norm a block", 2, 0), ("gemv (PDL) + residual epilogue", 4, 0),
                                   ("gemv (PDL) + table copy", 8, 0), ("gemv (PDL) + all, 26 KB", 15, 26 * 1024)]:
            report(label, block, time_device(lambda: plus(parts, smem), reps=4, iters=30), floor_us)
        report("gemv (persistent)", block, time_device(lambda: persistent(0), reps=4, iters=30), floor_us)
        report("gemv (persistent, reg prefetch)", block, time_device(lambda: persistent(1), reps=4, iters=30), floor_us)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": name, "peak_tbps": tbps, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
