// sampling.cu - token choice over the vocabulary, one block per row of fp32 logits [N, V].
//
//   t5rt_topk_topp_sample: Hugging Face's warpers then one draw, fused:
//     x = logits / temperature                           (TemperatureLogitsWarper)
//     keep x >= k-th largest x          if 0 < top_k < V (TopKLogitsWarper: ties at k-th kept)
//     keep x whose strictly-greater kept mass < top_p    if top_p < 1 (TopPLogitsWarper; the
//          largest token is always kept; a tie group at the boundary is kept whole, where HF
//          keeps an arbitrary part of it)
//     token = first kept index (vocabulary order) whose cumulative exp(x - max) exceeds u * total,
//     u = t5rt_uniform(*seed, *step, row, 0)          (the same draw as t5rt.decoding.rng)
//   Thresholds are exact radix selects over the float keys: top-k by counts, top-p by mass in
//   64-bit fixed point (integer atomics, so the result is bit-reproducible run to run).
//
//   t5rt_argmax_rows: first index of the row maximum (torch.argmax / numpy semantics w/o NaN).
#include "t5rt_kernels.cuh"

#define T5RT_MASS_SCALE 1099511627776.0f  // 2**40: exp(x - max) in (0, 1] -> fixed point

// k-th largest key (1-based k) among keys >= floor_key of row x (scaled by 1/temperature).
__device__ u32 t5rt_select_kth_key(const float* x, int V, float temperature, u32 k, u32* hist,
                                   int* sh_bucket, u32* sh_above) {
  u32 prefix = 0, mask = 0, remaining = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
      const u32 key = t5rt_float_key(x[i] / temperature);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x < 32) t5rt_warp_find_bucket<u32>(hist, remaining, sh_bucket, sh_above);
    __syncthreads();
    prefix |= (u32)(*sh_bucket) << shift;
    mask |= 255u << shift;
    remaining -= *sh_above;
    __syncthreads();
  }
  return prefix;
}

// Smallest key theta among keys >= floor_key such that the mass of keys > theta is < target
// (target >= 1 in fixed point units), i.e. the top-p boundary.
__device__ u32 t5rt_select_mass_key(const float* x, int V, float temperature, float mx,
                                    u32 floor_key, u64 target, u64* hist, int* sh_bucket,
                                    u64* sh_above) {
  u32 prefix = 0, mask = 0;
  u64 need = target;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
      const float xi = x[i] / temperature;
      const u32 key = t5rt_float_key(xi);
      if (key >= floor_key && (key & mask) == prefix) {
        const u64 m = (u64)(expf(xi - mx) * T5RT_MASS_SCALE);
        if (m) atomicAdd(&hist[(key >> shift) & 255u], m);
      }
    }
    __syncthreads();
    if (threadIdx.x < 32) t5rt_warp_find_bucket<u64>(hist, need, sh_bucket, sh_above);
    __syncthreads();
    prefix |= (u32)(*sh_bucket) << shift;
    mask |= 255u << shift;
    need -= *sh_above;
    __syncthreads();
  }
  return prefix;
}

// Shared memory of one row's draw (declared __shared__ by each sampling kernel).
struct T5rtSampleShared {
  u64 hist[256];
  float red_f[33];
  u64 red_u[32];
  int red_i[32];
  int bucket;
  u64 above;
  int token;
};

// One row's draw, called by every thread of the block: x = logits row / temperature, filtered by
// top-k then top-p, then the inverse CDF at u in [0, 1). Returns the token (the same in every
// thread); *mx_out = max x, *total_out = sum of kept exp(x - max).
__device__ int t5rt_sample_row(const float* x, int V, float temperature, int top_k, float top_p,
                               double u, T5rtSampleShared* sh, float* mx_out, float* total_out) {
  // 1. row maximum of x / temperature
  float mx = -__int_as_float(0x7f800000);
  for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, x[i] / temperature);
  mx = t5rt_block_allreduce(mx, T5rtMax(), sh->red_f);

  // 2. top-k: keys >= the k-th largest key
  u32 floor_key = 0;
  if (top_k > 0 && top_k < V)
    floor_key = t5rt_select_kth_key(x, V, temperature, (u32)top_k, (u32*)sh->hist, &sh->bucket,
                                    (u32*)&sh->above);

  // 3. top-p over the top-k survivors, in fixed-point mass
  if (top_p < 1.0f) {
    u64 z = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
      const float xi = x[i] / temperature;
      if (t5rt_float_key(xi) >= floor_key) z += (u64)(expf(xi - mx) * T5RT_MASS_SCALE);
    }
    z = t5rt_block_allreduce(z, T5rtSum(), sh->red_u);
    u64 target = (u64)((double)top_p * (double)z);
    if (target > z) target = z;
    if (target < 1) target = 1;
    if (z > 0)
      floor_key = t5rt_select_mass_key(x, V, temperature, mx, floor_key, target, sh->hist,
                                       &sh->bucket, &sh->above);
  }

  // 4. inverse CDF in vocabulary order: each thread owns a contiguous chunk of the row
  const int chunk = (V + blockDim.x - 1) / blockDim.x;
  const int lo = threadIdx.x * chunk;
  const int hi = min(V, lo + chunk);
  float s = 0.f;
  int last_kept = -1;
  for (int i = lo; i < hi; ++i) {
    const float xi = x[i] / temperature;
    if (t5rt_float_key(xi) >= floor_key) {
      s += expf(xi - mx);
      last_kept = i;
    }
  }
  float excl, incl, total;
  t5rt_block_scan(s, &excl, &incl, &total, sh->red_f);
  last_kept = t5rt_block_allreduce(last_kept, T5rtMaxInt(), sh->red_i);
  if (threadIdx.x == 0) sh->token = -1;
  __syncthreads();
  const double target = u * (double)total;
  if (s > 0.f && (double)excl <= target && target < (double)incl) {
    int tok = -1;
    float acc = 0.f;
    for (int i = lo; i < hi; ++i) {
      const float xi = x[i] / temperature;
      if (t5rt_float_key(xi) >= floor_key) {
        acc += expf(xi - mx);
        tok = i;
        if ((double)excl + (double)acc > target) break;
      }
    }
    sh->token = tok;
  }
  __syncthreads();
  *mx_out = mx;
  *total_out = total;
  return sh->token >= 0 ? sh->token : (last_kept >= 0 ? last_kept : 0);
}

extern "C" __global__ void __launch_bounds__(T5RT_SAMPLE_THREADS)
t5rt_topk_topp_sample(const float* logits,  // [N, row_stride] fp32, first V used
                      i64 row_stride, int V, float temperature, int top_k, float top_p,
                      const u64* seed,  // [1] device seed
                      const i64* step,  // [1] device step counter
                      i64* out) {                 // [N] int64 tokens
  __shared__ T5rtSampleShared sh;
  const int row = blockIdx.x;
  const double u = t5rt_uniform(*seed, (u64)(*step), (u64)row, 0ull);
  float mx, total;
  const int tok = t5rt_sample_row(logits + (i64)row * row_stride, V, temperature, top_k, top_p, u,
                                  &sh, &mx, &total);
  if (threadIdx.x == 0) out[row] = tok;
}

extern "C" __global__ void __launch_bounds__(T5RT_ARGMAX_THREADS)
t5rt_argmax_rows(const float* logits, i64 row_stride, int V, i64* out) {
  __shared__ float sv[32];
  __shared__ int si[32];
  const float* x = logits + (i64)blockIdx.x * row_stride;
  float best = -__int_as_float(0x7f800000);
  int idx = 0x7fffffff;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    const float v = x[i];
    if (v > best) { best = v; idx = i; }  // strided scan visits a thread's indices in order
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
    if (ov > best || (ov == best && oi < idx)) { best = ov; idx = oi; }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) { sv[warp] = best; si[warp] = idx; }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < (int)(blockDim.x >> 5); ++w)
      if (sv[w] > best || (sv[w] == best && si[w] < idx)) { best = sv[w]; idx = si[w]; }
    out[blockIdx.x] = idx == 0x7fffffff ? 0 : idx;
  }
}
