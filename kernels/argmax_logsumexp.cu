// argmax_logsumexp.cu - greedy search's whole token choice in one pass over each row:
//   out[r]        = first index of the maximum of logits[r, :V]     (= t5rt_argmax_rows)
//   row_max[r]    = that maximum
//   row_logsum[r] = log(sum(exp(logits[r] - row_max[r])))           (= t5rt_row_logsumexp)
// so the chosen token's log-prob is (logits[r, out] - row_max) - row_logsum without another
// launch or pass. One block of T5RT_ARGMAX_THREADS per row; each thread keeps an online
// (max, sum of exp(x - max), first argmax) over its strided elements, loading 4 at a time
// (independent loads in flight: a single block per row is latency-bound at batch 1), then a
// deterministic block reduction (fixed tree, ties -> lower index). -inf entries add nothing.
#include "t5rt_kernels.cuh"

struct T5rtSoftArg {
  float m;  // running max
  float s;  // sum of exp(x - m)
  int i;    // first index of m
};

__device__ __forceinline__ void t5rt_softarg_add(T5rtSoftArg& a, float x, int i) {
  if (x > a.m) {  // strict: a thread visits its indices in increasing order, the first max stays
    a.s = (a.m == -__int_as_float(0x7f800000) ? 0.f : a.s * expf(a.m - x)) + 1.f;
    a.m = x;
    a.i = i;
  } else if (x != -__int_as_float(0x7f800000)) {
    a.s += expf(x - a.m);
  }
}

__device__ __forceinline__ T5rtSoftArg t5rt_softarg_merge(T5rtSoftArg a, T5rtSoftArg b) {
  const float ninf = -__int_as_float(0x7f800000);
  T5rtSoftArg r;
  r.m = fmaxf(a.m, b.m);
  if (r.m == ninf) { r.s = 0.f; r.i = a.i < b.i ? a.i : b.i; return r; }
  r.s = (a.m == ninf ? 0.f : a.s * expf(a.m - r.m)) + (b.m == ninf ? 0.f : b.s * expf(b.m - r.m));
  r.i = (a.m > b.m || (a.m == b.m && a.i < b.i)) ? a.i : b.i;
  return r;
}

// One row's (max, sum of exp(x - max), first argmax), called by every thread of the block; the
// result is valid in thread 0 (t5rt_argmax_logsumexp, and t5rt_pool_step in sampling_pool.cu).
__device__ T5rtSoftArg t5rt_softarg_row(const float* x, int V) {
  __shared__ float sm[32], ss[32];
  __shared__ int si[32];
  const int bd = blockDim.x;
  T5rtSoftArg a;
  a.m = -__int_as_float(0x7f800000);
  a.s = 0.f;
  a.i = 0x7fffffff;
  for (int i = threadIdx.x; i < V; i += 4 * bd) {
    float v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int j = i + u * bd;
      v[u] = j < V ? x[j] : -__int_as_float(0x7f800000);
    }
#pragma unroll
    for (int u = 0; u < 4; ++u)
      if (i + u * bd < V) t5rt_softarg_add(a, v[u], i + u * bd);
  }
  // warp tree, then warps in index order (deterministic)
  for (int o = 16; o > 0; o >>= 1) {
    T5rtSoftArg b;
    b.m = __shfl_xor_sync(0xffffffffu, a.m, o);
    b.s = __shfl_xor_sync(0xffffffffu, a.s, o);
    b.i = __shfl_xor_sync(0xffffffffu, a.i, o);
    a = t5rt_softarg_merge(a, b);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) { sm[warp] = a.m; ss[warp] = a.s; si[warp] = a.i; }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < (bd >> 5); ++w) {
      T5rtSoftArg b;
      b.m = sm[w];
      b.s = ss[w];
      b.i = si[w];
      a = t5rt_softarg_merge(a, b);
    }
    if (a.i == 0x7fffffff) a.i = 0;
  }
  return a;
}

extern "C" __global__ void __launch_bounds__(T5RT_ARGMAX_THREADS)
t5rt_argmax_logsumexp(const float* logits,  // [N, row_stride] fp32, first V used
                      i64 row_stride, int V,
                      i64* out,             // [N] int64 argmax
                      float* row_max,       // [N]
                      float* row_logsum) {  // [N]
  const T5rtSoftArg a = t5rt_softarg_row(logits + (i64)blockIdx.x * row_stride, V);
  if (threadIdx.x == 0) {
    out[blockIdx.x] = a.i;
    row_max[blockIdx.x] = a.m;
    row_logsum[blockIdx.x] = logf(a.s);
  }
}
