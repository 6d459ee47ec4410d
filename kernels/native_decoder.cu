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
//   t5rt_native_step_<A>(step)            one persistent launch per decoder step: gridDim.x
//                                         blocks (<= one per SM, all co-resident) separated by a
//                                         grid barrier between phases; weights of the next
//                                         phases are prefetched into L2 while a phase runs.
//   t5rt_native_phase_<A>(step, ph, l, pdl)  one phase per launch; pdl != 0 when launched with
//                                         programmatic dependent launch: the phase prefetches its
//                                         weights into L2 before waiting for the phase before.
// Projections are memory-bound GEMVs for small N: a warp owns an output row and reads it once
// with 128-bit non-allocating loads for all N rows (x staged in shared memory), rows spread over
// every warp of the grid. Everything a launch reads is in the NativeStep table in device memory
// (built once per bucket by t5rt/kernels/native.py), so a step is capturable in a CUDA graph.
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
  T5RT_NATIVE_THREADS = 512,  // block size of both drivers
  T5RT_NATIVE_NB = 8,         // rows (N) accumulated per pass over a weight row
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
  i64 act, gated, smem_floats, prefetch;
  double eps, clamp, logit_scale;     // clamp <= 0: off
  u64 ids, position, enc_mask;        // [N] i64, [N] i64, [N, S] i64
  u64 emb, rel_bias, buckets;         // [V, d] A, [NB, H] A, [R + 1] i32
  u64 final_norm, lm_head, logits;    // [d] f32, [V, d] f32, [N, V] f32
  u64 x, q, a, h;                     // fp32 scratch [N, d], [N, H*Dk], [N, H*Dk], [N, F]
  u64 barrier;                        // [2] u32, zeroed at allocation
  u64 layers;                         // [L] T5rtNativeLayer
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

// ---- block helpers ----
// dst[i] = src[i] for i < n: fp32 activations written earlier in this launch, through L2. U loads
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

// xs[i][k] = rmsnorm(x[n0 + i])[k] * g[k] for i < nc <= 64, with A rounding (final_norm: the fp32
// final norm times logit_scale, no rounding). x: fp32 [N, K] scratch written by earlier phases,
// staged into xs first (one round trip to L2), then normalised in place.
template <int A, typename G>
__device__ void t5rt_stage_norm(const T5rtNativeStep& s, const float* x, const G* g, int n0, int nc, int K,
                                float* xs, bool final_norm, float scale) {
  __shared__ float inv[64];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  t5rt_copy_f32<8>(x + (i64)n0 * K, xs, nc * K);
  __syncthreads();
  for (int n = warp; n < nc; n += nw) {
    float ss = 0.f;
    const float* xr = xs + (i64)n * K;
    for (int k = lane; k < K; k += 32) {
      const float v = xr[k];
      ss += v * v;
    }
    ss = t5rt_warp_sum(ss);
    if (lane == 0) inv[n] = 1.0f / sqrtf(ss / (float)K + (float)s.eps);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < nc * K; i += blockDim.x) {
    const int n = i / K, k = i - n * K;
    const float v = xs[i] * inv[n];
    if (final_norm) {
      xs[i] = v * ((const float*)g)[k] * scale;
    } else {
      const float gv = t5rt_to_f<A>(((const typename T5rtAct<A>::T*)g)[k]);
      xs[i] = t5rt_round<A>(gv * t5rt_round<A>(v));
    }
  }
  __syncthreads();
}

// xs[i][k] = src[n0 + i][k] for i < nc (fp32 scratch through L2)
__device__ void t5rt_stage_copy(const float* src, int n0, int nc, int K, float* xs) {
  t5rt_copy_f32<8>(src + (i64)n0 * K, xs, nc * K);
  __syncthreads();
}

// rows per shared-memory pass of a GEMV over K inputs (the norm's inv[] holds 64)
__device__ __forceinline__ int t5rt_rows_per_pass(const T5rtNativeStep& s, int K) {
  i64 r = s.smem_floats / K;
  r = r < 1 ? 1 : (r > 64 ? 64 : r);
  return (int)(r < s.N ? r : s.N);
}

// The GEMV: for every output row j owned by this warp (j = global warp, step = all warps) and
// every n < N: y = sum_k W0[j, k] * xs[n, k] (and W1 when TWO), then epi(nbase + n, j, y0, y1).
// xs: [N, K] fp32 in shared memory. W: [R, K] row-major, element type W.
template <typename W, typename Ch, bool TWO, typename Epi>
__device__ void t5rt_gemv(const W* W0, const W* W1, int R, int K, const float* xs, int N, int nbase, Epi& epi,
                          int gwarp, int nwarps) {
  const int lane = threadIdx.x & 31;
  const bool vec = (K % Ch::E) == 0 && ((u64)W0 % 16) == 0 && (!TWO || ((u64)W1 % 16) == 0);
  const int chunks = K / Ch::E;
  for (int j = gwarp; j < R; j += nwarps) {
    const W* w0 = W0 + (i64)j * K;
    const W* w1 = TWO ? W1 + (i64)j * K : w0;
    for (int n0 = 0; n0 < N; n0 += T5RT_NATIVE_NB) {
      float acc0[T5RT_NATIVE_NB], acc1[T5RT_NATIVE_NB];
#pragma unroll
      for (int n = 0; n < T5RT_NATIVE_NB; ++n) { acc0[n] = 0.f; acc1[n] = 0.f; }
      if (vec) {
        constexpr int U = 4;  // 16-byte weight loads in flight per lane (8 spilled registers: 128 a thread at 512 threads)
        for (int c0 = lane; c0 < chunks; c0 += 32 * U) {
          uint4 r0[U], r1[U];
#pragma unroll
          for (int u = 0; u < U; ++u) {
            const int c = c0 + 32 * u;
            if (c < chunks) {
              r0[u] = t5rt_ld_stream(w0 + (i64)c * Ch::E);
              if (TWO) r1[u] = t5rt_ld_stream(w1 + (i64)c * Ch::E);
            }
          }
#pragma unroll
          for (int u = 0; u < U; ++u) {
            const int c = c0 + 32 * u;
            if (c < chunks) {
              float f0[Ch::E], f1[Ch::E];
              Ch::widen(r0[u], f0);
              if (TWO) Ch::widen(r1[u], f1);
#pragma unroll
              for (int n = 0; n < T5RT_NATIVE_NB; ++n) {
                if (n0 + n < N) {
                  // 16-byte shared loads (K % E == 0 here, so the row offset is 16-byte aligned)
                  const float4* xr = (const float4*)(xs + (i64)(n0 + n) * K + (i64)c * Ch::E);
#pragma unroll
                  for (int e4 = 0; e4 < Ch::E / 4; ++e4) {
                    const float4 xv = xr[e4];
                    const float xe[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                      acc0[n] += f0[4 * e4 + e] * xe[e];
                      if (TWO) acc1[n] += f1[4 * e4 + e] * xe[e];
                    }
                  }
                }
              }
            }
          }
        }
      } else {
        for (int k = lane; k < K; k += 32) {
          const float a0 = Ch::one(w0 + k);
          const float a1 = TWO ? Ch::one(w1 + k) : 0.f;
#pragma unroll
          for (int n = 0; n < T5RT_NATIVE_NB; ++n) {
            if (n0 + n < N) {
              const float xv = xs[(i64)(n0 + n) * K + k];
              acc0[n] += a0 * xv;
              if (TWO) acc1[n] += a1 * xv;
            }
          }
        }
      }
#pragma unroll
      for (int n = 0; n < T5RT_NATIVE_NB; ++n) {
        if (n0 + n < N) {  // warp-uniform
          const float y0 = t5rt_warp_sum(acc0[n]);
          const float y1 = TWO ? t5rt_warp_sum(acc1[n]) : 0.f;
          if (lane == 0) epi(nbase + n0 + n, j, y0, y1);
        }
      }
    }
  }
}

// ---- epilogues ----
template <int A> struct T5rtEpiQKV {  // [q | k | v]: q -> scratch, k/v -> cache row pos (+ new rows)
  float* q; typename T5rtAct<A>::T *ck, *cv, *nk, *nv; const i64* pos; int I, H, Dk, T;
  __device__ void operator()(int n, int j, float y, float) {
    const float r = t5rt_round<A>(y);
    if (j < I) { q[(i64)n * I + j] = r; return; }
    const int jj = j - I, which = jj / I, c = jj - which * I, h = c / Dk, e = c - h * Dk;
    const typename T5rtAct<A>::T v = t5rt_from_f<A>(r);
    const i64 p = t5rt_ld_i64(pos + n);
    typename T5rtAct<A>::T* cache = which ? cv : ck;
    if (p >= 0 && p < T) cache[(((i64)n * H + h) * T + p) * Dk + e] = v;
    typename T5rtAct<A>::T* nr = which ? nv : nk;
    if (nr) nr[((i64)n * H + h) * Dk + e] = v;
  }
};
template <int A> struct T5rtEpiStore {  // out[n, j] = round_A(y), optionally through an activation
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
template <int A> struct T5rtEpiResidual {  // x[n, j] = clip(round_A(x + round_A(y)))
  float* x; int R; float clamp;
  __device__ void operator()(int n, int j, float y, float) {
    float v = t5rt_round<A>(t5rt_ldcg(x + (i64)n * R + j) + t5rt_round<A>(y));
    if (clamp > 0.f) v = fminf(fmaxf(v, -clamp), clamp);
    x[(i64)n * R + j] = v;
  }
};
struct T5rtEpiLogits {
  float* out; int V;
  __device__ void operator()(int n, int j, float y, float) { out[(i64)n * V + j] = y; }
};

// ---- attention over keys [0, nkeys) of one (row n, head h): out = softmax(q K^T + bias) V ----
// self: bias from the bucket table, keys = cache rows <= pos; cross: mask adds fp32 min.
template <int A, bool SELF>
__device__ __noinline__ void t5rt_attend(const T5rtNativeStep& s, const T5rtNativeLayer& ly, const float* q, float* out,
                            float* smem) {
  typedef typename T5rtAct<A>::T AT;
  const int H = (int)s.H, Dk = (int)s.Dk, I = H * Dk, N = (int)s.N;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const int kmax = SELF ? (int)s.T : (int)s.S;
  float* qs = smem;              // [Dk]
  float* sc = smem + Dk;         // [kmax] scores -> weights
  float* part = sc + kmax;       // [groups, Dk] partial outputs
  float* red = part + blockDim.x;  // [32] reduction scratch
  for (int item = blockIdx.x; item < N * H; item += gridDim.x) {
    const int n = item / H, h = item - n * H;
    int nkeys;
    i64 pos = 0;
    if (SELF) {
      pos = t5rt_ld_i64((const i64*)s.position + n);
      nkeys = pos < 0 ? 0 : (pos >= kmax ? kmax : (int)pos + 1);
    } else {
      nkeys = kmax;
    }
    const AT* K = (const AT*)(SELF ? ly.self_k : ly.cross_k) + ((i64)n * H + h) * kmax * Dk;
    const AT* Vv = (const AT*)(SELF ? ly.self_v : ly.cross_v) + ((i64)n * H + h) * kmax * Dk;
    for (int e = threadIdx.x; e < Dk; e += blockDim.x) qs[e] = t5rt_ldcg(q + (i64)n * I + h * Dk + e);
    // each key's additive term first, all keys at once: self = the relative-position bias
    // (position -> bucket -> bias, dependent loads), cross = 0 or fp32 min from the mask
    for (int t = threadIdx.x; t < nkeys; t += blockDim.x) {
      if (SELF) {
        i64 dist = pos - t;
        dist = dist > s.R ? s.R : dist;
        const int bucket = ((const int*)s.buckets)[dist];
        sc[t] = t5rt_to_f<A>(((const AT*)s.rel_bias)[(i64)bucket * H + h]);
      } else {
        sc[t] = ((const i64*)s.enc_mask)[(i64)n * kmax + t] != 0 ? 0.f : -3.4028234663852886e38f;
      }
    }
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
template <int A>
__device__ __noinline__ void t5rt_native_phase(const T5rtNativeStep& s, int ph, int l, float* xs) {
  typedef typename T5rtAct<A>::T AT;
  typedef typename T5rtChunkOf<A>::type Ch;
  const int N = (int)s.N, d = (int)s.d, I = (int)(s.H * s.Dk), F = (int)s.F;
  const int gwarp = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int nwarps = gridDim.x * (blockDim.x >> 5);
  float* x = (float*)s.x;
  if (s.prefetch) {  // the next two phases' weights stream into L2 while this one runs
    for (int k = 1; k <= 2; ++k) {
      int p2 = ph + k, l2 = l;
      if (ph != T5RT_NATIVE_EMBED && p2 > T5RT_NATIVE_FFN_OUT) { p2 -= 8; l2 += 1; }
      if (l2 >= s.L && ph != T5RT_NATIVE_LM_HEAD) p2 = T5RT_NATIVE_LM_HEAD;
      if (ph != T5RT_NATIVE_LM_HEAD) t5rt_prefetch_phase<A>(s, p2, l2, gwarp, nwarps);
    }
  }
  if (ph == T5RT_NATIVE_EMBED) {
    const i64* ids = (const i64*)s.ids;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (i64)N * d; i += (i64)gridDim.x * blockDim.x) {
      const int n = (int)(i / d), k = (int)(i - (i64)n * d);
      i64 id = t5rt_ld_i64(ids + n);
      id = id < 0 ? 0 : (id >= s.V ? s.V - 1 : id);
      x[i] = t5rt_to_f<A>(((const AT*)s.emb)[id * d + k]);
    }
    return;
  }
  if (ph == T5RT_NATIVE_LM_HEAD) {
    const int rows = t5rt_rows_per_pass(s, d);
    T5rtEpiLogits epi{(float*)s.logits, (int)s.V};
    for (int n0 = 0; n0 < N; n0 += rows) {
      const int nc = N - n0 < rows ? N - n0 : rows;
      t5rt_stage_norm<A>(s, x, (const float*)s.final_norm, n0, nc, d, xs, true, (float)s.logit_scale);
      t5rt_gemv<float, T5rtChunk<float>, false>((const float*)s.lm_head, (const float*)0, (int)s.V, d, xs, nc, n0,
                                                epi, gwarp, nwarps);
      __syncthreads();
    }
    return;
  }
  const T5rtNativeLayer ly = ((const T5rtNativeLayer*)s.layers)[l];
  const float clamp = (float)s.clamp;
  if (ph == T5RT_NATIVE_SELF_ATTN) { t5rt_attend<A, true>(s, ly, (const float*)s.q, (float*)s.a, xs); return; }
  if (ph == T5RT_NATIVE_CROSS_ATTN) { t5rt_attend<A, false>(s, ly, (const float*)s.q, (float*)s.a, xs); return; }
  // the projections: input width K, output rows R, in passes of `rows` rows of x
  int K = d;
  if (ph == T5RT_NATIVE_SELF_OUT || ph == T5RT_NATIVE_CROSS_OUT) K = I;
  if (ph == T5RT_NATIVE_FFN_OUT) K = F;
  const int rows = t5rt_rows_per_pass(s, K);
  for (int n0 = 0; n0 < N; n0 += rows) {
    const int nc = N - n0 < rows ? N - n0 : rows;
    switch (ph) {
      case T5RT_NATIVE_SELF_QKV: {
        t5rt_stage_norm<A>(s, x, (const AT*)ly.sa_norm, n0, nc, d, xs, false, 1.f);
        T5rtEpiQKV<A> epi{(float*)s.q, (AT*)ly.self_k, (AT*)ly.self_v, (AT*)ly.new_k, (AT*)ly.new_v,
                          (const i64*)s.position, I, (int)s.H, (int)s.Dk, (int)s.T};
        t5rt_gemv<AT, Ch, false>((const AT*)ly.qkv, (const AT*)0, 3 * I, d, xs, nc, n0, epi, gwarp, nwarps);
        break;
      }
      case T5RT_NATIVE_SELF_OUT:
      case T5RT_NATIVE_CROSS_OUT: {
        t5rt_stage_copy((const float*)s.a, n0, nc, I, xs);
        T5rtEpiResidual<A> epi{x, d, clamp};
        const AT* w = (const AT*)(ph == T5RT_NATIVE_SELF_OUT ? ly.sa_o : ly.ca_o);
        t5rt_gemv<AT, Ch, false>(w, (const AT*)0, d, I, xs, nc, n0, epi, gwarp, nwarps);
        break;
      }
      case T5RT_NATIVE_CROSS_Q: {
        t5rt_stage_norm<A>(s, x, (const AT*)ly.ca_norm, n0, nc, d, xs, false, 1.f);
        T5rtEpiStore<A> epi{(float*)s.q, I};
        t5rt_gemv<AT, Ch, false>((const AT*)ly.ca_q, (const AT*)0, I, d, xs, nc, n0, epi, gwarp, nwarps);
        break;
      }
      case T5RT_NATIVE_FFN_IN: {
        t5rt_stage_norm<A>(s, x, (const AT*)ly.ff_norm, n0, nc, d, xs, false, 1.f);
        T5rtEpiFFN<A> epi{(float*)s.h, F, (int)s.act, (int)s.gated};
        if (s.gated)
          t5rt_gemv<AT, Ch, true>((const AT*)ly.wi0, (const AT*)ly.wi1, F, d, xs, nc, n0, epi, gwarp, nwarps);
        else
          t5rt_gemv<AT, Ch, false>((const AT*)ly.wi0, (const AT*)0, F, d, xs, nc, n0, epi, gwarp, nwarps);
        break;
      }
      case T5RT_NATIVE_FFN_OUT: {
        t5rt_stage_copy((const float*)s.h, n0, nc, F, xs);
        T5rtEpiResidual<A> epi{x, d, clamp};
        t5rt_gemv<AT, Ch, false>((const AT*)ly.wo, (const AT*)0, d, F, xs, nc, n0, epi, gwarp, nwarps);
        break;
      }
      default: break;
    }
    __syncthreads();  // every warp is done with xs before the next pass restages it
  }
}

// Launched with programmatic dependent launch (StepTable.launch_phases(pdl=True)): this phase's
// weight rows stream into L2 while the phase before still runs, then the next phase may start
// (it too only prefetches before it waits), then wait for the phase before to finish and flush.
template <int A>
__device__ __forceinline__ void t5rt_pdl_start(const T5rtNativeStep& s, int ph, int l) {
  if (ph != T5RT_NATIVE_EMBED)
    t5rt_prefetch_phase<A>(s, ph, l, blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5),
                           gridDim.x * (blockDim.x >> 5));
  t5rt_pdl_trigger();
  t5rt_pdl_wait();
}

// the NativeStep table into shared memory (read many times per phase)
__device__ __forceinline__ bool t5rt_load_step(const T5rtNativeStep* g, T5rtNativeStep* s) {
  const u64* src = (const u64*)g;
  u64* dst = (u64*)s;
  for (int i = threadIdx.x; i < (int)(sizeof(T5rtNativeStep) / 8); i += blockDim.x) dst[i] = src[i];
  __syncthreads();
  return s->words == (i64)(sizeof(T5rtNativeStep) / 8) && s->N <= 1 << 20;
}

#define T5RT_NATIVE_INSTANTIATE(SUFFIX, A)                                                           \
  extern "C" __global__ void __launch_bounds__(T5RT_NATIVE_THREADS)                                 \
      t5rt_native_phase_##SUFFIX(const T5rtNativeStep* step, int ph, int l, int pdl) {              \
    __shared__ T5rtNativeStep s;                                                                    \
    extern __shared__ __align__(16) float t5rt_native_smem[];                                                     \
    if (!t5rt_load_step(step, &s)) return;  /* the table and weights: never written by a step */   \
    if (pdl) t5rt_pdl_start<A>(s, ph, l);                                                           \
    t5rt_native_phase<A>(s, ph, l, t5rt_native_smem);                                               \
  }                                                                                                 \
  extern "C" __global__ void __launch_bounds__(T5RT_NATIVE_THREADS)                                 \
      t5rt_native_step_##SUFFIX(const T5rtNativeStep* step) {                                       \
    __shared__ T5rtNativeStep s;                                                                    \
    extern __shared__ __align__(16) float t5rt_native_smem[];                                                     \
    if (!t5rt_load_step(step, &s)) return;                                                          \
    u32* bar = (u32*)s.barrier;                                                                     \
    u32 gen = t5rt_ld_acquire(bar + 1);                                                             \
    t5rt_native_phase<A>(s, T5RT_NATIVE_EMBED, 0, t5rt_native_smem);                                \
    t5rt_grid_sync(bar, gen);                                                                       \
    for (int l = 0; l < (int)s.L; ++l) {                                                            \
      for (int ph = T5RT_NATIVE_SELF_QKV; ph <= T5RT_NATIVE_FFN_OUT; ++ph) {                        \
        t5rt_native_phase<A>(s, ph, l, t5rt_native_smem);                                           \
        t5rt_grid_sync(bar, gen);                                                                   \
      }                                                                                             \
    }                                                                                               \
    t5rt_native_phase<A>(s, T5RT_NATIVE_LM_HEAD, 0, t5rt_native_smem);                              \
  }

T5RT_NATIVE_INSTANTIATE(f32, 0)
T5RT_NATIVE_INSTANTIATE(f16, 1)
T5RT_NATIVE_INSTANTIATE(bf16, 2)
