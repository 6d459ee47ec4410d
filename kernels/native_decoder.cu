// native_decoder.cu - the native engine's KV-cached T5 decoder step (DESIGN.md §9, issue 13).
//
// One step = 2 + 8 * L phases over N rows (batch x beams):
//   EMBED      x[n] = emb[ids[n]]                                              (fp32 scratch)
//   per layer l:
//   SELF_QKV   xn = rmsnorm(x) * g_sa; [q | k | v] = W_qkv xn; k, v -> self cache row pos[n]
//              (and the new-row outputs when bound)                           one pass over W_qkv
//   SELF_ATTN  a = softmax(q K[:pos+1]^T + bias[h, bucket[pos - t]]) V            per (n, head)
//   SELF_OUT   x += W_o a                                                      (residual fused)
//   CROSS_Q    q = W_q rmsnorm(x) * g_ca
//   CROSS_ATTN a = softmax(q Kc^T + mask) Vc                                       per (n, head)
//   CROSS_OUT  x += W_o a
//   FFN_IN     h = act(W_i rmsnorm(x) * g_ff)   | gated: act(W_i0 xn) * (W_i1 xn)
//   FFN_OUT    x += W_o h
//   LM_HEAD    logits = W_lm (rmsnorm(x) * g_final * logit_scale)                (fp32 weights)
// Numerics (src/t5rt/kernels/native_reference.py is the spec): activations live in fp32 scratch
// but are rounded to the act dtype A (fp32 | fp16 | bf16) wherever decoder_step.onnx holds an A
// tensor: norm output, x * g, every projection output, attention output, residual sums; fp16
// exports clip the residual stream to +-clamp after each residual add (exporters/precision.py).
// Norm statistics, softmax, and the final norm + lm_head are fp32 as in the export.
//
// Two drivers share the phase code:
//   t5rt_native_phase_<A>(step, ph, l, pdl)  one phase per launch, normally with programmatic
//                                         dependent launch (StepTable.launch_phases(pdl=True)).
//   t5rt_native_step_<A>(step)            one persistent launch per decoder step: gridDim.x
//                                         blocks (<= one per SM, all co-resident) separated by a
//                                         grid barrier between phases (slower: the barrier costs
//                                         more than a PDL launch boundary).
// Every phase does first what does not depend on the phase before (the step table, the layer
// record, its first weight chunks into registers, the norm's gain, the attention bias and mask,
// K/V rows into L2), then griddepcontrol.launch_dependents + .wait, then the rest: with PDL the
// first part overlaps the end of the phase before (bench/kernels/launch_gap.py: a phase boundary
// costs ~0.7 us that way).
// Projections are memory-bound GEMVs for small N (T5rtGemv): a block owns a range of output rows,
// split over its warps by row and, for few rows, by slices of K; each weight chunk is read once
// with 128-bit non-allocating loads for all N rows (x staged in shared memory). The split never
// depends on N, so a row's results are bit-identical whatever it is batched with. Everything a
// launch reads is in the NativeStep table in device memory (built once per bucket by
// t5rt/kernels/native.py), so a step is capturable in a CUDA graph.
#include "t5rt_kernels.cuh"

enum T5rtNativePhase {
  T5RT_NATIVE_EMBED = 0,
  T5RT_NATIVE_SELF_QKV = 1,
  T5RT_NATIVE_SELF_ATTN = 2,
  T5RT_NATIVE_SELF_OUT = 3,
  T5RT_NATIVE_CROSS_Q = 4,
  T5RT_NATIVE_CROSS_ATTN = 5,
  T5RT_NATIVE_CROSS_OUT = 6,
  T5RT_NATIVE_FFN_IN = 7,
  T5RT_NATIVE_FFN_OUT = 8,
  T5RT_NATIVE_LM_HEAD = 9,
};

enum T5rtNativeGeometry {
  T5RT_NATIVE_THREADS = 256,  // largest block of both drivers (the default; fewer: StepTable threads=)
  T5RT_NATIVE_NB = 8,         // rows (N) accumulated per pass over a weight row
  T5RT_NATIVE_WIN = 4,        // weight loads (16 B) a lane keeps in flight; the first WIN before the wait
  T5RT_NATIVE_PF = 4,         // items a warp keeps ahead of its loads in L2 (prefetch)
  T5RT_NATIVE_PART = 4096,    // floats of dynamic shared memory for the split-K partial sums
};

enum T5rtNativeAct { T5RT_ACT_RELU = 0, T5RT_ACT_GELU_NEW = 1, T5RT_ACT_GELU = 2, T5RT_ACT_SILU = 3 };

// Mirrored field by field (8 bytes each) by NATIVE_LAYER_FIELDS in t5rt/kernels/native.py.
struct T5rtNativeLayer {
  u64 sa_norm, qkv, sa_o, ca_norm, ca_q, ca_o, ff_norm, wi0, wi1, wo;  // weights (A), [out, in]
  u64 self_k, self_v;    // [N, H, T, Dk] A
  u64 new_k, new_v;      // [N, H, 1, Dk] A or 0
  u64 cross_k, cross_v;  // [N, H, S, Dk] A
};

// Mirrored by NATIVE_STEP_FIELDS in t5rt/kernels/native.py; `words` = sizeof / 8 is checked.
struct T5rtNativeStep {
  i64 words;
  i64 N, d, H, Dk, F, V, T, S, L, R;  // R: largest distance of the bucket table
  i64 act, gated, smem_floats, prefetch, pack;  // pack: T5rtGemv may pack short items and load one item ahead (0: never)
  double eps, clamp, logit_scale;     // clamp <= 0: off
  u64 ids, position, enc_mask;        // [N] i64, [N] i64, [N, S] i64
  u64 emb, rel_bias, buckets;         // [V, d] A, [NB, H] A, [R + 1] i32
  u64 final_norm, lm_head, logits;    // [d] f32, [V, d] f32, [N, V] f32
  u64 x, q, a, h;                     // fp32 scratch [N, d], [N, H*Dk], [N, H*Dk], [N, F]
  u64 barrier;                        // [2] u32, zeroed at allocation
  u64 layers;                         // [L] T5rtNativeLayer
};

// A projection phase's own operands, as kernel parameters of t5rt_native_phase_<A> (mirrored by
// StepTable._phase_args in t5rt/kernels/native.py): with them a phase starts loading its weights
// at its first instruction, before the step table and the layer record arrive (a dependent load
// each). w0 == 0: take them from the step table (the persistent kernel; StepTable(phase_args=False)).
struct T5rtPhaseArgs {
  u64 w0, w1, gain;  // weights [R, K] (w1: the gated FFN's second matrix, or 0), the norm's gain or 0
  int R, K, N;       // output rows, inputs, batch rows
  int flags;         // bit 0: the step table's `pack`
};

// ---- element types: A = float (0), fp16 bits (1), bf16 bits (2) ----
template <int A> struct T5rtAct { typedef unsigned short T; };
template <> struct T5rtAct<0> { typedef float T; };

#ifndef T5RT_HOST_BUILD
__device__ __forceinline__ float t5rt_h2f(unsigned short h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}
__device__ __forceinline__ unsigned short t5rt_f2h(float f) {
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
#else  // the host build (kernels/host_prelude.h): the same conversions in plain C++
inline float t5rt_h2f(unsigned short h) {
  const u32 sign = ((u32)h & 0x8000u) << 16, e = ((u32)h >> 10) & 0x1fu, m = (u32)h & 0x3ffu;
  if (e == 0) {
    const float v = (float)m * 5.9604644775390625e-08f;  // m * 2**-24
    return sign ? -v : v;
  }
  if (e == 31) return __uint_as_float(sign | 0x7f800000u | (m << 13));
  return __uint_as_float(sign | ((e + 112u) << 23) | (m << 13));
}
inline unsigned short t5rt_f2h(float f) {  // round to nearest even, overflow to inf
  const u32 x = __float_as_uint(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return (unsigned short)(sign | 0x7e00u);
  if (ax >= 0x47800000u) return (unsigned short)(sign | 0x7c00u);
  if (ax < 0x38800000u) return (unsigned short)(sign | (u32)nearbyintf(__uint_as_float(ax) * 16777216.0f));
  u32 hb = ((((ax >> 23) - 112u)) << 10) | ((ax & 0x7fffffu) >> 13);
  const u32 rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (hb & 1u))) hb += 1u;
  return (unsigned short)(sign | hb);
}
#endif
__device__ __forceinline__ float t5rt_b2f(unsigned short b) { return __uint_as_float(((u32)b) << 16); }
__device__ __forceinline__ unsigned short t5rt_f2b(float f) {
  // round to nearest even (as the exporter's constants and cvt.rn.bf16.f32); NaN stays NaN
  u32 u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (unsigned short)(u >> 16);
}

template <int A> __device__ __forceinline__ float t5rt_to_f(typename T5rtAct<A>::T v);
template <> __device__ __forceinline__ float t5rt_to_f<0>(float v) { return v; }
template <> __device__ __forceinline__ float t5rt_to_f<1>(unsigned short v) { return t5rt_h2f(v); }
template <> __device__ __forceinline__ float t5rt_to_f<2>(unsigned short v) { return t5rt_b2f(v); }

template <int A> __device__ __forceinline__ typename T5rtAct<A>::T t5rt_from_f(float v);
template <> __device__ __forceinline__ float t5rt_from_f<0>(float v) { return v; }
template <> __device__ __forceinline__ unsigned short t5rt_from_f<1>(float v) { return t5rt_f2h(v); }
template <> __device__ __forceinline__ unsigned short t5rt_from_f<2>(float v) { return t5rt_f2b(v); }

// the value an A tensor would hold
template <int A> __device__ __forceinline__ float t5rt_round(float v) { return t5rt_to_f<A>(t5rt_from_f<A>(v)); }

// widen one 16-byte chunk of weights to floats (4 fp32 or 8 fp16/bf16)
template <typename W> struct T5rtChunk;
template <> struct T5rtChunk<float> {
  enum { E = 4 };
  static __device__ __forceinline__ void widen(uint4 v, float* f) {
    f[0] = __uint_as_float(v.x); f[1] = __uint_as_float(v.y);
    f[2] = __uint_as_float(v.z); f[3] = __uint_as_float(v.w);
  }
  static __device__ __forceinline__ float one(const float* p) { return *p; }
};
template <int A> struct T5rtChunk16 {
  enum { E = 8 };
  static __device__ __forceinline__ void widen(uint4 v, float* f) {
    const u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      f[2 * i] = t5rt_to_f<A>((unsigned short)(w[i] & 0xffffu));
      f[2 * i + 1] = t5rt_to_f<A>((unsigned short)(w[i] >> 16));
    }
  }
  static __device__ __forceinline__ float one(const unsigned short* p) { return t5rt_to_f<A>(*p); }
};

template <int A> struct T5rtChunkOf { typedef T5rtChunk16<A> type; };
template <> struct T5rtChunkOf<0> { typedef T5rtChunk<float> type; };

// the norm's 1 / rms per row of a pass, declared once (one copy per kernel, not per template)
__shared__ float t5rt_native_inv[64];

// raw weights as loaded: one 16-byte chunk (VEC) or one element
template <typename W, bool VEC> struct T5rtRaw;
template <typename W> struct T5rtRaw<W, true> {
  typedef uint4 T;
  static __device__ __forceinline__ T load(const W* row, int c) {
    return t5rt_ld_stream(row + (i64)c * (i64)(16 / sizeof(W)));
  }
};
template <typename W> struct T5rtRaw<W, false> {
  typedef W T;
  static __device__ __forceinline__ T load(const W* row, int c) { return __ldg(row + c); }
};

// ---- block helpers ----
// dst[i] = src[i] for i < n: fp32 activations written by the phase before, through L2. U loads
// per thread are in flight at once (a strided loop would wait for each load before the next).
template <int U>
__device__ __forceinline__ void t5rt_copy_f32(const float* src, float* dst, int n) {
  for (int base = threadIdx.x; base < n; base += U * blockDim.x) {
    float v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int i = base + u * blockDim.x;
      v[u] = i < n ? t5rt_ldcg(src + i) : 0.f;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int i = base + u * blockDim.x;
      if (i < n) dst[i] = v[u];
    }
  }
}

// the NativeStep table into shared memory (read many times per phase; never written by a step)
__device__ __forceinline__ bool t5rt_load_step(const T5rtNativeStep* g, T5rtNativeStep* s) {
  const u64* src = (const u64*)g;
  u64* dst = (u64*)s;
  for (int i = threadIdx.x; i < (int)(sizeof(T5rtNativeStep) / 8); i += blockDim.x) dst[i] = src[i];
  __syncthreads();
  return s->words == (i64)(sizeof(T5rtNativeStep) / 8) && s->N <= 1 << 20;
}

// ---- the GEMV of a projection phase, split over the grid ----
// y[n, j] = sum_k W0[j, k] * xs[n, k] (and W1 when TWO) for the rows j of this block, every n < nc.
// Block b owns rows [b RB, b RB + RB), RB = ceil(R / blocks). With few rows a block (RB < 2 x its
// warps) each row is cut into KS slices of its K inputs (an item = one slice of one row), so that
// every warp has work and a slice fits the register window; the slices' sums meet in shared memory
// and are added in slice order. With many (lm_head) KS = 1 and an item is a whole row.
// Warp w's items are q = w, w + warps, ...; lane l reads the chunks s cs + l + 32 u (unit u < U) of
// an item. A window is WIN units a lane in flight at once: one item's (U > WIN: an item takes
// several windows), or, when an item is short (U <= WIN / 2) and the pass has few rows, the units
// of P = min(WIN / U, NB / nc) (1, 2 or 4) consecutive items side by side (unit u of the i-th at
// slot i WIN / P + u, its rows in accumulators i NB / P + r: a template parameter, so the maps are
// known at compile time), so that a warp with two or three short items (QKV and FFN-in of
// t5-small in bf16) waits for one round trip, not one per item. The first window is
// loaded by prologue(), which the phase calls *before* griddepcontrol.wait: the weights stream
// in while the phase before still runs. run() loads the rest a window at a time and keeps the
// warp's next PF items on their way into L2, so that a warp with many items (lm_head) is not one
// memory round trip per item.
// The split depends on R, K and the grid only, never on the row count N, and an item's sum is
// added in the same order however it is packed: a row's sums are the same whatever the batch, so
// a request's logits do not depend on what shares its step.
// AHEAD (lm_head: ~30 one-window items a warp): the next item's window is loaded before this one
// is summed; only there, for the registers it holds (QKV and FFN-in spilled more with it).
template <typename W, typename Ch, bool VEC, bool TWO, bool AHEAD = false>
struct T5rtGemv {
  enum {
    E = VEC ? (int)Ch::E : 1,
    WIN = TWO ? T5RT_NATIVE_WIN / 2 : T5RT_NATIVE_WIN,
    PF = T5RT_NATIVE_PF,
    NB = T5RT_NATIVE_NB
  };
  // a window packs 1, 2 or 4 items (run_p<P>); 4 needs a window of 4 units, and no more: pack()
  static_assert(T5RT_NATIVE_WIN == 4, "pack() and run() assume windows of 4 units (2 with two matrices)");
  typedef typename T5rtRaw<W, VEC>::T Raw;
  const W* W0;
  const W* W1;
  int K, chunks, RB, KS, cs, U, r0, nrows, items, lane, warp, nw, mine;  // mine: this warp's items
  int held;    // items of the warp's first window in registers (prologue, or a pass that held them all)
  int held_p;  // ... packed how many a window (the layout: slot i (WIN / p) + u for p > 1)
  int pf_next;  // the warp's first item not yet sent to L2 in this pass
  bool packs;  // the step table's `pack`
  Raw w0[WIN], w1[WIN];
  Raw nx0[AHEAD && !TWO ? WIN : 1];  // the next item's window, loaded before this one is summed (AHEAD)

  __device__ __forceinline__ void init(const W* a, const W* b, int R, int K_, bool packs_) {
    packs = packs_;
    W0 = a;
    W1 = b;
    K = K_;
    chunks = K / E;
    lane = threadIdx.x & 31;
    warp = threadIdx.x >> 5;
    nw = blockDim.x >> 5;
    RB = (R + (int)gridDim.x - 1) / (int)gridDim.x;
    KS = 1;
    if (RB < 2 * nw) {
      const int by_warps = (nw + RB - 1) / RB, by_window = (chunks + 32 * WIN - 1) / (32 * WIN);
      KS = by_warps > by_window ? by_warps : by_window;
      const int most = chunks / 32 < 1 ? 1 : (chunks / 32 > 16 ? 16 : chunks / 32);
      KS = KS > most ? most : KS;
    }
    cs = (chunks + KS - 1) / KS;
    U = (cs + 31) / 32;
    r0 = (int)blockIdx.x * RB;
    nrows = R - r0 < RB ? R - r0 : RB;
    nrows = nrows < 0 ? 0 : nrows;
    items = nrows * KS;
    mine = items > warp ? (items - warp + nw - 1) / nw : 0;
    held = 0;
    held_p = 1;
    pf_next = 0;
  }
  // items a window packs in a pass of nc rows: 1, 2 or 4 (<= WIN / U and <= NB / nc; 1 unless an
  // item is at most half a window; 16-byte loads only)
  __device__ __forceinline__ int pack(int nc) const {
    if (!VEC || !packs || U > WIN / 2) return 1;
    const int by_units = WIN / U, by_rows = NB / (nc < 1 ? 1 : nc);
    const int p = by_units < by_rows ? by_units : by_rows;
    return p >= 4 && WIN >= 4 ? 4 : (p >= 2 ? 2 : 1);
  }
  // this warp's item `it`: its index q, its output row, and this lane's first chunk c0 (unit u is
  // chunk c0 + 32 u) and the slice's end
  __device__ __forceinline__ void item(int it, int& q, int& row, int& c0, int& end) const {
    q = warp + nw * it;
    if (KS == 1) {  // (block-uniform) no division where a warp has many items: lm_head, QKV, FFN-in
      row = r0 + q;
      c0 = lane;
      end = chunks;
      return;
    }
    const int sl = q % KS;
    row = r0 + q / KS;
    c0 = sl * cs + lane;
    end = (sl + 1) * cs < chunks ? (sl + 1) * cs : chunks;
  }
  // window slot w of the window at (first item it0, first unit u0) packing P items: its item slot
  // i (w / (WIN / P) for P > 1, else 0), and whether it holds a chunk (its weight row and chunk c)
  template <int P>
  __device__ __forceinline__ bool slot(int w, int it0, int u0, int& row, int& c) const {
    const int i = P > 1 ? w / (WIN / P) : 0, u = P > 1 ? w % (WIN / P) : u0 + w;
    if (it0 + i >= mine || u >= U) return false;
    int q, c0, end;
    item(it0 + i, q, row, c0, end);
    c = c0 + 32 * u;
    return c < end;
  }
  // (NEXT: into the next item's window nx0 instead, P == 1 and one matrix only)
  template <int P, bool NEXT = false>
  __device__ __forceinline__ void load_window(int it0, int u0) {
#pragma unroll
    for (int w = 0; w < WIN; ++w) {
      int row, c;
      if (slot<P>(w, it0, u0, row, c)) {
        if constexpr (NEXT) {
          nx0[w] = T5rtRaw<W, VEC>::load(W0 + (i64)row * K, c);
        } else {
          w0[w] = T5rtRaw<W, VEC>::load(W0 + (i64)row * K, c);
          if constexpr (TWO) w1[w] = T5rtRaw<W, VEC>::load(W1 + (i64)row * K, c);
        }
      }
    }
  }
  __device__ __forceinline__ void load_window(int it0, int u0, int p) {
    if constexpr (WIN >= 4) {
      if (p == 4) { load_window<(WIN >= 4 ? 4 : 1)>(it0, u0); return; }
    }
    if (p == 2) load_window<2>(it0, u0);
    else load_window<1>(it0, u0);
  }
  // this lane's chunks of the warp's item `it` from unit u0 on, into L2 (no registers held)
  __device__ __forceinline__ void prefetch(int it, int u0) const {
    int q, row, c0, end;
    item(it, q, row, c0, end);
    for (int c = c0 + 32 * u0; c < end; c += 32) {
      t5rt_prefetch_l2(W0 + (i64)row * K + (i64)c * E);
      if constexpr (TWO) t5rt_prefetch_l2(W1 + (i64)row * K + (i64)c * E);
    }
  }
  // before the wait, for a first pass of nc rows: the first window into registers, the rest of
  // its item (when it spans several windows) and the next PF items into L2 (so that their loads
  // after the wait are L2 hits)
  __device__ __forceinline__ void prologue(int nc) {
    const int p = pack(nc);
    if (mine > 0) {
      load_window(0, 0, p);
      if (U > WIN) prefetch(0, WIN);
    }
    held = mine < p ? mine : p;
    held_p = p;
    pf_next = p + PF < mine ? p + PF : mine;
    for (int it = p; it < pf_next; ++it) prefetch(it, 0);
  }
  __device__ __forceinline__ static void widen(const Raw& r, float* f) {
    if constexpr (VEC) Ch::widen(r, f);
    else f[0] = Ch::one(&r);
  }

  // every n < nc rows of xs ([nc, K] fp32, shared); item sums go to epi(nbase + n, row, y0, y1)
  // (KS == 1) or to part0/part1[q nc + n], whose slices the block adds in slice order after a
  // barrier (KS > 1). Windows one after another, each packing p = pack(nc) items (run_p<p>).
  template <typename Epi>
  __device__ void run(const float* xs, int nc, int nbase, Epi& epi, float* part0, float* part1) {
    const int p = pack(nc);
    if constexpr (WIN >= 4) {
      if (p == 4) run_p<(WIN >= 4 ? 4 : 1)>(xs, nc, nbase, epi, part0, part1);
    }
    if (p == 2) run_p<2>(xs, nc, nbase, epi, part0, part1);
    if (p == 1) run_p<1>(xs, nc, nbase, epi, part0, part1);
    held_p = p;
    held = U <= WIN && mine <= p ? mine : 0;  // the window still holds every item: kept for the next pass
    pf_next = 0;  // the next pass reads the weights again from the first item
    if (KS > 1) {  // (KS is the block's: every thread gets here)
      __syncthreads();
      combine(nc, nbase, epi, part0, part1);
    }
  }

  // P items a window. P == 1: the row groups of NB inside each window, so each weight chunk is
  // loaded once per pass for every row; an item longer than a window (U > WIN) carries its sums
  // across windows (the caller then passes nc <= NB). P > 1 (nc <= NB / P, one row group): item i
  // of the window in slots i (WIN / P) + u and accumulators i (NB / P) + r, all known at compile
  // time. After the items' last window lane a < NB runs the epilogue of accumulator a, the lanes
  // side by side.
  template <int P, typename Epi>
  __device__ void run_p(const float* xs, int nc, int nbase, Epi& epi, float* part0, float* part1) {
    constexpr int NBI = NB / P;  // accumulators (rows) an item has
    // one item a window, one window an item, one row group (lm_head: ~30 items a warp): the next
    // item's window is loaded before this one is summed, so a warp keeps two items' loads in
    // flight, not one round trip per item (same sums in the same order; off with the table's pack)
    const bool pipe = AHEAD && packs && P == 1 && !TWO && U <= WIN && nc <= NB;
    bool in_nx = false;
    for (int it0 = 0; it0 < mine; it0 += P) {
      // the next group's items and PF more on their way into L2 (from where the prologue, or the
      // group before, stopped: a first pass packing more than the prologue did leaves no gap)
      const int ahead = it0 + 2 * P + PF < mine ? it0 + 2 * P + PF : mine;
      for (int it = pf_next > it0 + P ? pf_next : it0 + P; it < ahead; ++it) prefetch(it, 0);
      pf_next = pf_next > ahead ? pf_next : ahead;
      float acc0[NB], acc1[NB];
      for (int u0 = 0; u0 < U; u0 += WIN) {
        // the prologue's window (or the pass before's, when it held every item) is this group's
        // when it was packed the same way and holds the group's items
        const bool in_regs = it0 == 0 && u0 == 0 && held_p == P && held >= (P < mine ? P : mine);
        if constexpr (AHEAD && P == 1 && !TWO) {
          if (in_nx) {
#pragma unroll
            for (int w = 0; w < WIN; ++w) w0[w] = nx0[w];
          } else if (!in_regs) {
            load_window<P>(it0, u0);
          }
          in_nx = pipe && it0 + 1 < mine;
          if (in_nx) load_window<1, true>(it0 + 1, 0);
        } else {
          if (!in_regs) load_window<P>(it0, u0);
        }
        int cw[WIN];  // each window slot's chunk (-1: none), once a window
#pragma unroll
        for (int w = 0; w < WIN; ++w) {
          int row, c;
          cw[w] = slot<P>(w, it0, u0, row, c) ? c : -1;
        }
        for (int g0 = 0; g0 < nc; g0 += NB) {
          if (u0 == 0) {
#pragma unroll
            for (int a = 0; a < NB; ++a) { acc0[a] = 0.f; acc1[a] = 0.f; }
          }
#pragma unroll
          for (int w = 0; w < WIN; ++w) {
            constexpr int UU = P > 1 ? WIN / P : 1;
            const int i = P > 1 ? w / UU : 0;  // (compile time: w is unrolled)
            if (cw[w] >= 0) {
              float a[E], b[E];
              widen(w0[w], a);
              if constexpr (TWO) widen(w1[w], b);
#pragma unroll
              for (int r = 0; r < NBI; ++r) {
                if (g0 + r < nc) {
                  const int ac = i * NBI + r;
                  const float* xr = xs + (i64)(g0 + r) * K + (i64)cw[w] * E;
                  if constexpr (VEC) {  // 16-byte shared loads: K % E == 0, so the offset is 16-byte aligned
#pragma unroll
                    for (int e4 = 0; e4 < E / 4; ++e4) {
                      const float4 xv = ((const float4*)xr)[e4];
                      const float xe[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
                      for (int e = 0; e < 4; ++e) {
                        acc0[ac] += a[4 * e4 + e] * xe[e];
                        if constexpr (TWO) acc1[ac] += b[4 * e4 + e] * xe[e];
                      }
                    }
                  } else {
                    acc0[ac] += a[0] * xr[0];
                    if constexpr (TWO) acc1[ac] += b[0] * xr[0];
                  }
                }
              }
            }
          }
          if (u0 + WIN >= U) {  // the items' last window: their sums are complete
            float y0 = 0.f, y1 = 0.f;
#pragma unroll
            for (int ac = 0; ac < NB; ++ac) {
              const int i = ac / NBI, r = ac % NBI;  // (compile time)
              if (it0 + i < mine && g0 + r < nc) {  // warp-uniform: no shuffles for absent rows
                const float s0 = t5rt_warp_sum(acc0[ac]);
                const float s1 = TWO ? t5rt_warp_sum(acc1[ac]) : 0.f;
                if (lane == ac) { y0 = s0; y1 = s1; }
              }
            }
            const int i = lane / NBI, r = lane % NBI;
            if (lane < NB && it0 + i < mine && g0 + r < nc) {
              int q, row, c0, end;
              item(it0 + i, q, row, c0, end);
              if (KS == 1) {
                epi(nbase + g0 + r, row, y0, y1);
              } else {
                part0[(i64)q * nc + g0 + r] = y0;
                if constexpr (TWO) part1[(i64)q * nc + g0 + r] = y1;
              }
            }
          }
        }
      }
    }
  }

  // KS > 1, after a barrier: the slices of each (row, n) added in slice order
  template <typename Epi>
  __device__ void combine(int nc, int nbase, Epi& epi, const float* part0, const float* part1) const {
    for (int i = threadIdx.x; i < nrows * nc; i += blockDim.x) {
      const int r = i / nc, n = i - r * nc;
      float y0 = 0.f, y1 = 0.f;
      for (int sl = 0; sl < KS; ++sl) {
        y0 += part0[(i64)(r * KS + sl) * nc + n];
        if (TWO) y1 += part1[(i64)(r * KS + sl) * nc + n];
      }
      epi(nbase + n, r0 + r, y0, y1);
    }
  }
};

// ---- epilogues: epi(n, j, y0, y1) for row n of the batch and output j ----
template <int A> struct T5rtEpiQKV {  // [q | k | v]: q -> scratch, k/v -> cache row pos (+ new rows)
  float* q; typename T5rtAct<A>::T *ck, *cv, *nk, *nv; const i64* pos; int I, H, Dk, T;
  __device__ void operator()(int n, int j, float y, float) {
    const float r = t5rt_round<A>(y);
    if (j < I) { q[(i64)n * I + j] = r; return; }
    const int jj = j - I, which = jj / I, c = jj - which * I, h = c / Dk, e = c - h * Dk;
    const typename T5rtAct<A>::T v = t5rt_from_f<A>(r);
    const i64 p = __ldg(pos + n);  // written before the step, never during it (warm in L1)
    typename T5rtAct<A>::T* cache = which ? cv : ck;
    if (p >= 0 && p < T) cache[(((i64)n * H + h) * T + p) * Dk + e] = v;
    typename T5rtAct<A>::T* nr = which ? nv : nk;
    if (nr) nr[((i64)n * H + h) * Dk + e] = v;
  }
};
template <int A> struct T5rtEpiStore {  // out[n, j] = round_A(y)
  float* out; int R;
  __device__ void operator()(int n, int j, float y, float) { out[(i64)n * R + j] = t5rt_round<A>(y); }
};
__device__ __forceinline__ float t5rt_act(int act, float v) {
  switch (act) {
    case T5RT_ACT_RELU: return v > 0.f ? v : 0.f;
    case T5RT_ACT_GELU_NEW: return 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    case T5RT_ACT_GELU: return 0.5f * v * (1.0f + erff(v * 0.7071067811865476f));
    default: return v / (1.0f + expf(-v));
  }
}
template <int A> struct T5rtEpiFFN {  // h = act(y0) (* y1 when gated), with A rounding
  float* out; int R, act, gated;
  __device__ void operator()(int n, int j, float y0, float y1) {
    float v;
    if (gated) v = t5rt_round<A>(t5rt_round<A>(t5rt_act(act, t5rt_round<A>(y0))) * t5rt_round<A>(y1));
    else v = t5rt_round<A>(t5rt_act(act, t5rt_round<A>(y0)));
    out[(i64)n * R + j] = v;
  }
};
// x[n, j] = clip(round_A(x + round_A(y))); the old x of this block's rows was staged in xr
template <int A> struct T5rtEpiResidual {
  float* x; const float* xr; int R, n0, r0, stride; float clamp;
  __device__ void operator()(int n, int j, float y, float) {
    float v = t5rt_round<A>(xr[(n - n0) * stride + (j - r0)] + t5rt_round<A>(y));
    if (clamp > 0.f) v = fminf(fmaxf(v, -clamp), clamp);
    x[(i64)n * R + j] = v;
  }
};
struct T5rtEpiLogits {
  float* out; int V;
  __device__ void operator()(int n, int j, float y, float) { out[(i64)n * V + j] = y; }
};

// ---- projection phases: norm (or not), GEMV, epilogue ----
template <int A, int PH> struct T5rtProjW {  // element type of the phase's weights
  typedef typename T5rtAct<A>::T W;
  typedef typename T5rtChunkOf<A>::type Ch;
};
template <int A> struct T5rtProjW<A, T5RT_NATIVE_LM_HEAD> {
  typedef float W;
  typedef T5rtChunk<float> Ch;
};

// Dynamic shared memory of a projection phase (floats; the host sizes it, StepTable.smem_floats):
//   [0, PART)            split-K partial sums (part0 | part1)
//   [PART, PART + dpad)  the norm's gain as fp32 (norm phases)
//   then per pass of nc rows: xr [nc, rbpad] (residual phases), xs [nc, K]
// `have`: s holds the step table already; else (a phase launched with its T5rtPhaseArgs) the GEMV's
// first window is on its way before the table is copied from gstep into s.
template <int A, int PH, typename W, typename Ch, bool VEC, bool TWO>
__device__ void t5rt_project_run(const T5rtNativeStep* gstep, T5rtNativeStep& s, bool have, int l,
                                 const T5rtPhaseArgs& pa, float* smem) {
  typedef typename T5rtAct<A>::T AT;
  const W* w0 = (const W*)pa.w0;
  const W* w1 = (const W*)pa.w1;
  const void* gain = (const void*)pa.gain;
  const int R = pa.R, K = pa.K;
  constexpr bool NORM = PH == T5RT_NATIVE_SELF_QKV || PH == T5RT_NATIVE_CROSS_Q || PH == T5RT_NATIVE_FFN_IN ||
                        PH == T5RT_NATIVE_LM_HEAD;
  constexpr bool RES = PH == T5RT_NATIVE_SELF_OUT || PH == T5RT_NATIVE_CROSS_OUT || PH == T5RT_NATIVE_FFN_OUT;
  T5rtGemv<W, Ch, VEC, TWO, PH == T5RT_NATIVE_LM_HEAD> g;
  // before the wait: nothing the phase before writes (weights, gain, positions); the weights first
  g.init(w0, w1, R, K, have ? s.pack != 0 : (pa.flags & 1) != 0);
  g.prologue(have ? (int)s.N : pa.N);  // (a first pass of fewer rows re-packs in run())
  if (!have && !t5rt_load_step(gstep, &s)) return;
  const T5rtNativeLayer* ly = PH == T5RT_NATIVE_LM_HEAD ? (const T5rtNativeLayer*)0
                                                         : (const T5rtNativeLayer*)s.layers + l;
  const int N = (int)s.N, d = (int)s.d;
  float* part0 = smem;
  float* part1 = smem + T5RT_NATIVE_PART / 2;
  float* gs = smem + T5RT_NATIVE_PART;
  const int dpad = (d + 3) & ~3;
  float* xr = gs + dpad;
  // rows a pass: what shared memory holds (this launch's: a per-phase launch may get less than
  // the table's smem_floats, StepTable phase_smem), at most NB when an item spans windows (see
  // run()), and what the split-K partial sums have room for. (The pass size never changes a sum.)
  const int rbpad = RES ? ((g.RB + 3) & ~3) : 0;
  const int given = (int)(t5rt_dynamic_smem_bytes() / 4);
  const int avail = given < (int)s.smem_floats ? given : (int)s.smem_floats;
  int rows = (avail - T5RT_NATIVE_PART - dpad) / (K + rbpad);
  rows = rows > 64 ? 64 : rows;  // inv[] below
  if (g.U > decltype(g)::WIN && rows > T5RT_NATIVE_NB) rows = T5RT_NATIVE_NB;
  if (g.KS > 1 && g.items > 0) {
    const int most = (T5RT_NATIVE_PART / 2) / g.items;
    rows = rows > most ? most : rows;
  }
  rows = rows < 1 ? 1 : (rows > N ? N : rows);
  if constexpr (NORM) {
    for (int k = threadIdx.x; k < d; k += blockDim.x) {
      if constexpr (PH == T5RT_NATIVE_LM_HEAD) gs[k] = ((const float*)gain)[k];
      else gs[k] = t5rt_to_f<A>(((const AT*)gain)[k]);
    }
  }
  if constexpr (PH == T5RT_NATIVE_SELF_QKV)
    for (int n = threadIdx.x; n < N; n += blockDim.x) t5rt_touch_l1((const i64*)s.position + n);
  t5rt_pdl_trigger();
  t5rt_pdl_wait();

  const float* src = (const float*)(PH == T5RT_NATIVE_SELF_OUT || PH == T5RT_NATIVE_CROSS_OUT ? s.a
                                    : PH == T5RT_NATIVE_FFN_OUT ? s.h : s.x);
  float* x = (float*)s.x;
  float* inv = t5rt_native_inv;
  for (int n0 = 0; n0 < N; n0 += rows) {
    const int nc = N - n0 < rows ? N - n0 : rows;
    float* xs = xr + (RES ? nc * rbpad : 0);
    // stage the inputs, and (residual phases) the old x of this block's rows: loads in flight together
    const int nres = RES ? nc * g.nrows : 0;  // (x is read only here and in the epilogue's rows)
    const bool one = nres <= (int)blockDim.x;
    float rv = 0.f;
    if (RES && one && (int)threadIdx.x < nres) {
      const int n = threadIdx.x / g.nrows, r = threadIdx.x - n * g.nrows;
      rv = t5rt_ldcg(x + (i64)(n0 + n) * d + g.r0 + r);
    }
    t5rt_copy_f32<8>(src + (i64)n0 * K, xs, nc * K);
    if (RES) {
      if (one) {
        if ((int)threadIdx.x < nres) {
          const int n = threadIdx.x / g.nrows, r = threadIdx.x - n * g.nrows;
          xr[n * rbpad + r] = rv;
        }
      } else {
        for (int i = threadIdx.x; i < nres; i += blockDim.x) {
          const int n = i / g.nrows, r = i - n * g.nrows;
          xr[n * rbpad + r] = t5rt_ldcg(x + (i64)(n0 + n) * d + g.r0 + r);
        }
      }
    }
    __syncthreads();
    if constexpr (NORM) {  // xs = rmsnorm(x) * gain, A-rounded (final norm: fp32, times logit_scale)
      const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
      for (int n = warp; n < nc; n += nw) {
        float ss = 0.f;
        const float* xrow = xs + (i64)n * K;
        for (int k = lane; k < K; k += 32) ss += xrow[k] * xrow[k];
        ss = t5rt_warp_sum(ss);
        if (lane == 0) inv[n] = 1.0f / sqrtf(ss / (float)K + (float)s.eps);
      }
      __syncthreads();
      for (int i = threadIdx.x; i < nc * K; i += blockDim.x) {
        const int n = i / K, k = i - n * K;
        const float v = xs[i] * inv[n];
        if constexpr (PH == T5RT_NATIVE_LM_HEAD) xs[i] = v * gs[k] * (float)s.logit_scale;
        else xs[i] = t5rt_round<A>(gs[k] * t5rt_round<A>(v));
      }
      __syncthreads();
    }
    if constexpr (PH == T5RT_NATIVE_SELF_QKV) {
      T5rtEpiQKV<A> epi{(float*)s.q, (AT*)ly->self_k, (AT*)ly->self_v, (AT*)ly->new_k, (AT*)ly->new_v,
                        (const i64*)s.position, (int)(s.H * s.Dk), (int)s.H, (int)s.Dk, (int)s.T};
      g.run(xs, nc, n0, epi, part0, part1);
    } else if constexpr (PH == T5RT_NATIVE_CROSS_Q) {
      T5rtEpiStore<A> epi{(float*)s.q, (int)(s.H * s.Dk)};
      g.run(xs, nc, n0, epi, part0, part1);
    } else if constexpr (PH == T5RT_NATIVE_FFN_IN) {
      T5rtEpiFFN<A> epi{(float*)s.h, (int)s.F, (int)s.act, (int)s.gated};
      g.run(xs, nc, n0, epi, part0, part1);
    } else if constexpr (PH == T5RT_NATIVE_LM_HEAD) {
      T5rtEpiLogits epi{(float*)s.logits, (int)s.V};
      g.run(xs, nc, n0, epi, part0, part1);
    } else {
      T5rtEpiResidual<A> epi{x, xr, d, n0, g.r0, rbpad, (float)s.clamp};
      g.run(xs, nc, n0, epi, part0, part1);
    }
    __syncthreads();  // every warp is done with xs / xr / part before the next pass restages them
  }
}

// The operands of projection phase PH of layer l, from the step table (the host's
// StepTable._phase_args computes the same for the kernel parameters)
template <int A, int PH>
__device__ __forceinline__ T5rtPhaseArgs t5rt_phase_args(const T5rtNativeStep& s, int l) {
  const int d = (int)s.d, I = (int)(s.H * s.Dk), F = (int)s.F;
  const T5rtNativeLayer* ly = PH == T5RT_NATIVE_LM_HEAD ? (const T5rtNativeLayer*)0
                                                         : (const T5rtNativeLayer*)s.layers + l;
  T5rtPhaseArgs a{0, 0, 0, d, d, (int)s.N, (int)(s.pack != 0)};
  switch (PH) {
    case T5RT_NATIVE_SELF_QKV: a.w0 = ly->qkv; a.R = 3 * I; a.gain = ly->sa_norm; break;
    case T5RT_NATIVE_SELF_OUT: a.w0 = ly->sa_o; a.K = I; break;
    case T5RT_NATIVE_CROSS_Q: a.w0 = ly->ca_q; a.R = I; a.gain = ly->ca_norm; break;
    case T5RT_NATIVE_CROSS_OUT: a.w0 = ly->ca_o; a.K = I; break;
    case T5RT_NATIVE_FFN_IN: a.w0 = ly->wi0; a.w1 = s.gated ? ly->wi1 : 0; a.R = F; a.gain = ly->ff_norm; break;
    case T5RT_NATIVE_FFN_OUT: a.w0 = ly->wo; a.K = F; break;
    default: a.w0 = s.lm_head; a.R = (int)s.V; a.gain = s.final_norm; break;
  }
  return a;
}

// pa.w0 == 0: s holds the step table and the operands come from it; else they are the phase's
// kernel parameters and the table is copied from gstep into s once the weights are on their way.
// (not inlined, nor is t5rt_attend: ptxas compiles one phase at a time, minutes faster than one function)
template <int A, int PH>
__device__ __noinline__ void t5rt_project(const T5rtNativeStep* gstep, T5rtNativeStep& s, u64 w0, u64 w1, u64 gain,
                                          int R, int K, int N, int flags, int l) {
  typedef typename T5rtProjW<A, PH>::W W;
  typedef typename T5rtProjW<A, PH>::Ch Ch;
  extern __shared__ __align__(16) float t5rt_native_smem[];
  // (the operands as scalars: a struct argument of a non-inlined function goes through the stack)
  T5rtPhaseArgs pa{w0, w1, gain, R, K, N, flags};
  const bool have = pa.w0 == 0;
  if (have) pa = t5rt_phase_args<A, PH>(s, l);
  const bool vec = pa.K % Ch::E == 0 && (pa.w0 % 16) == 0 && (!pa.w1 || (pa.w1 % 16) == 0);
  float* smem = t5rt_native_smem;
  if (PH == T5RT_NATIVE_FFN_IN && pa.w1) {
    if (vec) t5rt_project_run<A, PH, W, Ch, true, true>(gstep, s, have, l, pa, smem);
    else t5rt_project_run<A, PH, W, Ch, false, true>(gstep, s, have, l, pa, smem);
  } else {
    if (vec) t5rt_project_run<A, PH, W, Ch, true, false>(gstep, s, have, l, pa, smem);
    else t5rt_project_run<A, PH, W, Ch, false, false>(gstep, s, have, l, pa, smem);
  }
}

// ---- attention over keys [0, nkeys) of one (row n, head h): out = softmax(q K^T + bias) V ----
// self: bias from the bucket table, keys = cache rows <= pos; cross: the mask adds fp32 min.
// Before the wait (the block's first item): each key's additive term (positions, buckets, bias and
// mask never change during a step) and the K / V rows into L2; after it: q, scores, softmax, PV.
// The self cache row `pos` is written by the phase before: read after the wait, through L2.
template <int A, bool SELF>
__device__ __noinline__ void t5rt_attend(const T5rtNativeStep& s, int l, const float* q, float* out) {
  typedef typename T5rtAct<A>::T AT;
  extern __shared__ __align__(16) float t5rt_native_smem[];
  float* smem = t5rt_native_smem;
  const T5rtNativeLayer* ly = (const T5rtNativeLayer*)s.layers + l;
  const int H = (int)s.H, Dk = (int)s.Dk, I = H * Dk, N = (int)s.N;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const int kmax = SELF ? (int)s.T : (int)s.S;
  float* qs = smem;                         // [Dk]
  float* sc = smem + ((Dk + 3) & ~3);       // [kmax] scores -> weights
  float* part = sc + ((kmax + 3) & ~3);     // [groups, Dk] partial outputs
  float* red = part + blockDim.x;           // [32] reduction scratch
  bool waited = false;
  for (int item = blockIdx.x; item < N * H; item += gridDim.x) {
    const int n = item / H, h = item - n * H;
    int nkeys;
    i64 pos = 0;
    if (SELF) {
      pos = __ldg((const i64*)s.position + n);
      nkeys = pos < 0 ? 0 : (pos >= kmax ? kmax : (int)pos + 1);
    } else {
      // keys after the row's last unmasked source position would add exact zeros (weight
      // exp(fp32 min + score - max) = 0, and x + 0 = x in every sum): skipped, so that a row
      // padded into the pool of a longer source bucket (share_pools) reads and sums what it
      // would alone. A row with no unmasked position (a free pool row) attends over all of them.
      const i64* mrow = (const i64*)s.enc_mask + (i64)n * kmax;
      float last = -1.f;
      for (int t = threadIdx.x; t < kmax; t += blockDim.x)
        if (mrow[t] != 0) last = fmaxf(last, (float)t);
      last = t5rt_block_allreduce(last, T5rtMax(), red);
      nkeys = last < 0.f ? kmax : (int)last + 1;
    }
    const AT* K = (const AT*)(SELF ? ly->self_k : ly->cross_k) + ((i64)n * H + h) * kmax * Dk;
    const AT* Vv = (const AT*)(SELF ? ly->self_v : ly->cross_v) + ((i64)n * H + h) * kmax * Dk;
    const int row_bytes = Dk * (int)sizeof(AT);
    for (int t = threadIdx.x; t < nkeys; t += blockDim.x) {
      if (SELF) {
        i64 dist = pos - t;
        dist = dist > s.R ? s.R : dist;
        const int bucket = ((const int*)s.buckets)[dist];
        sc[t] = t5rt_to_f<A>(((const AT*)s.rel_bias)[(i64)bucket * H + h]);
      } else {
        sc[t] = ((const i64*)s.enc_mask)[(i64)n * kmax + t] != 0 ? 0.f : -3.4028234663852886e38f;
      }
      for (int b = 0; b < row_bytes; b += 128) {
        t5rt_prefetch_l2((const char*)(K + (i64)t * Dk) + b);
        t5rt_prefetch_l2((const char*)(Vv + (i64)t * Dk) + b);
      }
    }
    if (!waited) {
      t5rt_pdl_trigger();
      t5rt_pdl_wait();
      waited = true;
    }
    for (int e = threadIdx.x; e < Dk; e += blockDim.x) qs[e] = t5rt_ldcg(q + (i64)n * I + h * Dk + e);
    __syncthreads();
    // scores: a warp per key, KU keys per warp with their loads in flight together
    constexpr int KU = 4;
    for (int t0 = warp; t0 < nkeys; t0 += KU * nw) {
      float p[KU];
#pragma unroll
      for (int u = 0; u < KU; ++u) p[u] = 0.f;
      for (int e = lane; e < Dk; e += 32) {
        float kf[KU];
#pragma unroll
        for (int u = 0; u < KU; ++u) {
          const int t = t0 + u * nw;
          kf[u] = t < nkeys ? t5rt_to_f<A>(SELF ? t5rt_ldcg(K + (i64)t * Dk + e) : K[(i64)t * Dk + e]) : 0.f;
        }
        const float qe = qs[e];
#pragma unroll
        for (int u = 0; u < KU; ++u) p[u] += qe * kf[u];
      }
#pragma unroll
      for (int u = 0; u < KU; ++u) {
        const int t = t0 + u * nw;
        if (t < nkeys) {  // warp-uniform
          const float pu = t5rt_warp_sum(p[u]);
          if (lane == 0) sc[t] = pu + sc[t];
        }
      }
    }
    __syncthreads();
    float m = -__int_as_float(0x7f800000);
    for (int t = threadIdx.x; t < nkeys; t += blockDim.x) m = fmaxf(m, sc[t]);
    m = t5rt_block_allreduce(m, T5rtMax(), red);
    float z = 0.f;
    for (int t = threadIdx.x; t < nkeys; t += blockDim.x) {
      const float e = expf(sc[t] - m);
      sc[t] = e;
      z += e;
    }
    z = t5rt_block_allreduce(z, T5rtSum(), red);  // ends with a __syncthreads: sc is complete
    const int groups = blockDim.x / Dk < 1 ? 1 : (int)(blockDim.x / Dk);
    const int g = threadIdx.x / Dk, e = threadIdx.x - g * Dk;
    if (g < groups && e < Dk) {
      float acc = 0.f;
      constexpr int VU = 8;  // value rows in flight per thread
      for (int t0 = g; t0 < nkeys; t0 += VU * groups) {
        float vf[VU];
#pragma unroll
        for (int u = 0; u < VU; ++u) {
          const int t = t0 + u * groups;
          vf[u] = t < nkeys ? t5rt_to_f<A>(SELF ? t5rt_ldcg(Vv + (i64)t * Dk + e) : Vv[(i64)t * Dk + e]) : 0.f;
        }
#pragma unroll
        for (int u = 0; u < VU; ++u) {
          const int t = t0 + u * groups;
          if (t < nkeys) acc += sc[t] * vf[u];
        }
      }
      part[g * Dk + e] = acc;
    }
    __syncthreads();
    for (int e2 = threadIdx.x; e2 < Dk; e2 += blockDim.x) {
      float acc = 0.f;
      for (int g2 = 0; g2 < groups; ++g2) acc += part[g2 * Dk + e2];
      out[(i64)n * I + h * Dk + e2] = t5rt_round<A>(acc / z);
    }
    __syncthreads();
  }
}

template <int A>
__device__ __forceinline__ void t5rt_embed(const T5rtNativeStep& s) {
  typedef typename T5rtAct<A>::T AT;
  const int N = (int)s.N, d = (int)s.d;
  float* x = (float*)s.x;
  t5rt_pdl_trigger();
  t5rt_pdl_wait();  // x may still be read by a kernel before this one (the last step's lm_head)
  const i64* ids = (const i64*)s.ids;
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (i64)N * d; i += (i64)gridDim.x * blockDim.x) {
    const int n = (int)(i / d), k = (int)(i - (i64)n * d);
    i64 id = t5rt_ld_i64(ids + n);
    id = id < 0 ? 0 : (id >= s.V ? s.V - 1 : id);
    x[i] = t5rt_to_f<A>(((const AT*)s.emb)[id * d + k]);
  }
}

// ---- L2 prefetch of the weight rows this warp will read in phase `ph` of layer `l` ----
template <typename W>
__device__ void t5rt_prefetch_rows(const W* w, int R, int K, int gwarp, int nwarps, int max_rows) {
  const int lane = threadIdx.x & 31;
  const i64 row_bytes = (i64)K * sizeof(W);
  int done = 0;
  for (int j = gwarp; j < R && done < max_rows; j += nwarps, ++done) {
    const char* p = (const char*)(w + (i64)j * K);
    for (i64 b = (i64)lane * 128; b < row_bytes; b += 32 * 128) t5rt_prefetch_l2(p + b);
  }
}

template <int A>
__device__ void t5rt_prefetch_phase(const T5rtNativeStep& s, int ph, int l, int gwarp, int nwarps) {
  typedef typename T5rtAct<A>::T AT;
  if (ph == T5RT_NATIVE_LM_HEAD) {
    t5rt_prefetch_rows((const float*)s.lm_head, (int)s.V, (int)s.d, gwarp, nwarps, 2);
    return;
  }
  if (l >= s.L) return;
  const T5rtNativeLayer* ly = (const T5rtNativeLayer*)s.layers + l;
  const int d = (int)s.d, I = (int)(s.H * s.Dk), F = (int)s.F;
  switch (ph) {
    case T5RT_NATIVE_SELF_QKV: t5rt_prefetch_rows((const AT*)ly->qkv, 3 * I, d, gwarp, nwarps, 4); break;
    case T5RT_NATIVE_SELF_OUT: t5rt_prefetch_rows((const AT*)ly->sa_o, d, I, gwarp, nwarps, 4); break;
    case T5RT_NATIVE_CROSS_Q: t5rt_prefetch_rows((const AT*)ly->ca_q, I, d, gwarp, nwarps, 4); break;
    case T5RT_NATIVE_CROSS_OUT: t5rt_prefetch_rows((const AT*)ly->ca_o, d, I, gwarp, nwarps, 4); break;
    case T5RT_NATIVE_FFN_IN:
      t5rt_prefetch_rows((const AT*)ly->wi0, F, d, gwarp, nwarps, 4);
      if (s.gated) t5rt_prefetch_rows((const AT*)ly->wi1, F, d, gwarp, nwarps, 4);
      break;
    case T5RT_NATIVE_FFN_OUT: t5rt_prefetch_rows((const AT*)ly->wo, d, F, gwarp, nwarps, 4); break;
    default: break;
  }
}

// ---- one phase, executed by every block of the launch ----
// (not inlined: both drivers call one copy, which halves the compile time of the fatbin)
// a projection phase: its operands from pa (kernel parameters), or from s when pa.w0 == 0
template <int A>
__device__ __forceinline__ void t5rt_native_project(const T5rtNativeStep* g, T5rtNativeStep& s, const T5rtPhaseArgs& pa,
                                                    int ph, int l) {
#define T5RT_NATIVE_PROJECT(PH) t5rt_project<A, PH>(g, s, pa.w0, pa.w1, pa.gain, pa.R, pa.K, pa.N, pa.flags, l)
  switch (ph) {
    case T5RT_NATIVE_SELF_QKV: T5RT_NATIVE_PROJECT(T5RT_NATIVE_SELF_QKV); break;
    case T5RT_NATIVE_SELF_OUT: T5RT_NATIVE_PROJECT(T5RT_NATIVE_SELF_OUT); break;
    case T5RT_NATIVE_CROSS_Q: T5RT_NATIVE_PROJECT(T5RT_NATIVE_CROSS_Q); break;
    case T5RT_NATIVE_CROSS_OUT: T5RT_NATIVE_PROJECT(T5RT_NATIVE_CROSS_OUT); break;
    case T5RT_NATIVE_FFN_IN: T5RT_NATIVE_PROJECT(T5RT_NATIVE_FFN_IN); break;
    case T5RT_NATIVE_FFN_OUT: T5RT_NATIVE_PROJECT(T5RT_NATIVE_FFN_OUT); break;
    case T5RT_NATIVE_LM_HEAD: T5RT_NATIVE_PROJECT(T5RT_NATIVE_LM_HEAD); break;
    default: break;
  }
#undef T5RT_NATIVE_PROJECT
}

__device__ __forceinline__ bool t5rt_native_is_projection(int ph) {
  return ph == T5RT_NATIVE_SELF_QKV || ph == T5RT_NATIVE_SELF_OUT || ph == T5RT_NATIVE_CROSS_Q ||
         ph == T5RT_NATIVE_CROSS_OUT || ph == T5RT_NATIVE_FFN_IN || ph == T5RT_NATIVE_FFN_OUT ||
         ph == T5RT_NATIVE_LM_HEAD;
}

// one phase with the step table in s (the persistent kernel, and phases launched without operands)
template <int A>
__device__ __noinline__ void t5rt_native_phase(T5rtNativeStep& s, int ph, int l) {
  if (s.prefetch && ph != T5RT_NATIVE_LM_HEAD) {  // the next two phases' weights into L2 (off by default)
    const int gwarp = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), nwarps = gridDim.x * (blockDim.x >> 5);
    for (int k = 1; k <= 2; ++k) {
      int p2 = ph + k, l2 = l;
      if (ph != T5RT_NATIVE_EMBED && p2 > T5RT_NATIVE_FFN_OUT) { p2 -= 8; l2 += 1; }
      if (l2 >= s.L) p2 = T5RT_NATIVE_LM_HEAD;
      t5rt_prefetch_phase<A>(s, p2, l2, gwarp, nwarps);
    }
  }
  switch (ph) {
    case T5RT_NATIVE_EMBED: t5rt_embed<A>(s); break;
    case T5RT_NATIVE_SELF_ATTN: t5rt_attend<A, true>(s, l, (const float*)s.q, (float*)s.a); break;
    case T5RT_NATIVE_CROSS_ATTN: t5rt_attend<A, false>(s, l, (const float*)s.q, (float*)s.a); break;
    default: t5rt_native_project<A>((const T5rtNativeStep*)0, s, T5rtPhaseArgs{}, ph, l); break;
  }
}

// t5rt_native_phase_<A>: `pdl` is kept for the launch ABI; every phase calls griddepcontrol.launch_
// dependents and .wait (no-ops when not launched with programmatic dependent launch). A projection
// phase given its operands (w0 != 0: T5rtPhaseArgs) starts its weight loads before it reads the
// step table; other phases, or w0 == 0, read the table first.
#define T5RT_NATIVE_INSTANTIATE(SUFFIX, A)                                                           \
  extern "C" __global__ void __launch_bounds__(T5RT_NATIVE_THREADS, 2)                               \
      t5rt_native_phase_##SUFFIX(const T5rtNativeStep* step, int ph, int l, int pdl, u64 w0, u64 w1,  \
                                 u64 gain, int R, int K, int N, int flags) {                        \
    __shared__ T5rtNativeStep s;                                                                    \
    (void)pdl;                                                                                      \
    if (w0 != 0 && t5rt_native_is_projection(ph)) {                                                 \
      t5rt_native_project<A>(step, s, T5rtPhaseArgs{w0, w1, gain, R, K, N, flags}, ph, l);          \
      return;                                                                                       \
    }                                                                                               \
    if (!t5rt_load_step(step, &s)) return;                                                          \
    t5rt_native_phase<A>(s, ph, l);                                                                 \
  }                                                                                                 \
  extern "C" __global__ void __launch_bounds__(T5RT_NATIVE_THREADS, 2)                               \
      t5rt_native_step_##SUFFIX(const T5rtNativeStep* step) {                                       \
    __shared__ T5rtNativeStep s;                                                                    \
    if (!t5rt_load_step(step, &s)) return;                                                          \
    u32* bar = (u32*)s.barrier;                                                                     \
    u32 gen = t5rt_ld_acquire(bar + 1);                                                             \
    t5rt_native_phase<A>(s, T5RT_NATIVE_EMBED, 0);                                                  \
    t5rt_grid_sync(bar, gen);                                                                       \
    for (int l = 0; l < (int)s.L; ++l) {                                                            \
      for (int ph = T5RT_NATIVE_SELF_QKV; ph <= T5RT_NATIVE_FFN_OUT; ++ph) {                        \
        t5rt_native_phase<A>(s, ph, l);                                                             \
        t5rt_grid_sync(bar, gen);                                                                   \
      }                                                                                             \
    }                                                                                               \
    t5rt_native_phase<A>(s, T5RT_NATIVE_LM_HEAD, 0);                                                \
  }

T5RT_NATIVE_INSTANTIATE(f32, 0)
T5RT_NATIVE_INSTANTIATE(f16, 1)
T5RT_NATIVE_INSTANTIATE(bf16, 2)
