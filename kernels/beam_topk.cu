// beam_topk.cu - per batch row b, the k largest of scores[b, :M] (M = num_beams * V), sorted
// descending, ties -> lower index first; k <= T5RT_TOPK_MAX_K.
//
// Each element becomes a distinct 64-bit key  (float_key(value) << 32) | (0xFFFFFFFF - index),
// so "k largest keys" is exactly the wanted order. Two launches:
//   t5rt_topk_partial: grid (chunks, B); a block takes the top k of its T5RT_TOPK_CHUNK elements
//                      (radix select in shared memory) -> candidates [B, chunks, k]
//   t5rt_topk_merge:   grid (B); top k of the chunks * k candidates, sorted -> values, indices
// Fused beam step (optional, row_max != nullptr): the value is
//   ((logit - row_max[r]) - row_logsum[r]) + beam_scores[r],  r = b * num_beams + j / V
// i.e. log_softmax(logits[r]) + beam score, with row_max/row_logsum from t5rt_row_logsumexp.
#include "t5rt_kernels.cuh"

__device__ __forceinline__ u64 t5rt_topk_key(float v, u32 index) {
  return ((u64)t5rt_float_key(v) << 32) | (u64)(0xFFFFFFFFu - index);
}

// The k-th largest (1-based) of n distinct keys (n >= k >= 1). Block-wide; all threads return it.
__device__ u64 t5rt_select_kth_u64(const u64* keys, int n, u32 k, u32* hist, int* sh_bucket,
                                   u32* sh_above) {
  u64 prefix = 0, mask = 0;
  u32 remaining = k;
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      const u64 key = keys[i];
      if ((key & mask) == prefix) atomicAdd(&hist[(u32)(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x < 32) t5rt_warp_find_bucket<u32>(hist, remaining, sh_bucket, sh_above);
    __syncthreads();
    prefix |= (u64)(*sh_bucket) << shift;
    mask |= 255ull << shift;
    remaining -= *sh_above;
    __syncthreads();
  }
  return prefix;
}

// Collect the keys >= kth (exactly k of them) into out[0..k) in any order.
__device__ void t5rt_collect_ge(const u64* keys, int n, u64 kth, u64* out, int cap,
                                int* counter) {
  if (threadIdx.x == 0) *counter = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const u64 key = keys[i];
    if (key >= kth) {
      const int slot = atomicAdd(counter, 1);
      if (slot < cap) out[slot] = key;
    }
  }
  __syncthreads();
}

extern "C" __global__ void __launch_bounds__(T5RT_TOPK_THREADS)
t5rt_topk_partial(const float* scores,  // [B, M] fp32 (for the fused step: logits [B*nb, V])
                  i64 M, int k,
                  const float* row_max, const float* row_logsum,  // [B*nb] or nullptr
                  const float* beam_scores,                       // [B*nb] or nullptr
                  int V, int num_beams,
                  u64* cand) {  // [B, chunks, k]
  __shared__ u64 keys[T5RT_TOPK_CHUNK];
  __shared__ u32 hist[256];
  __shared__ int sh_bucket;
  __shared__ u32 sh_above;
  __shared__ int counter;
  const int b = blockIdx.y, c = blockIdx.x, chunks = gridDim.x;
  const i64 start = (i64)c * T5RT_TOPK_CHUNK;
  const int n = (int)min((i64)T5RT_TOPK_CHUNK, M - start);
  const float* row = scores + (i64)b * M;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const i64 j = start + i;
    float v = row[j];
    if (row_max != nullptr) {
      const int r = b * num_beams + (int)(j / V);
      v = ((v - row_max[r]) - row_logsum[r]) + beam_scores[r];
    }
    keys[i] = t5rt_topk_key(v, (u32)j);
  }
  __syncthreads();
  u64* out = cand + ((i64)b * chunks + c) * k;
  if (n <= k) {  // fewer elements than k: pass them all on, pad with the lowest key
    for (int i = threadIdx.x; i < k; i += blockDim.x) out[i] = i < n ? keys[i] : 0ull;
    return;
  }
  const u64 kth = t5rt_select_kth_u64(keys, n, (u32)k, hist, &sh_bucket, &sh_above);
  __shared__ u64 sel[T5RT_TOPK_MAX_K];
  t5rt_collect_ge(keys, n, kth, sel, T5RT_TOPK_MAX_K, &counter);
  for (int i = threadIdx.x; i < k; i += blockDim.x) out[i] = sel[i];
}

extern "C" __global__ void __launch_bounds__(T5RT_TOPK_THREADS)
t5rt_topk_merge(const u64* cand,  // [B, n_cand]
                int n_cand, int k,
                float* values,    // [B, k] fp32
                i64* indices) {   // [B, k] int64 (flat index into the row of M)
  __shared__ u32 hist[256];
  __shared__ int sh_bucket;
  __shared__ u32 sh_above;
  __shared__ int counter;
  __shared__ u64 sel[T5RT_TOPK_MAX_K];
  const int b = blockIdx.x;
  const u64* keys = cand + (i64)b * n_cand;
  const u64 kth = t5rt_select_kth_u64(keys, n_cand, (u32)k, hist, &sh_bucket, &sh_above);
  for (int i = threadIdx.x; i < T5RT_TOPK_MAX_K; i += blockDim.x) sel[i] = 0ull;
  __syncthreads();
  t5rt_collect_ge(keys, n_cand, kth, sel, T5RT_TOPK_MAX_K, &counter);
  // bitonic sort of T5RT_TOPK_MAX_K keys, descending (padding zeros sink to the end)
  for (int size = 2; size <= T5RT_TOPK_MAX_K; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < T5RT_TOPK_MAX_K; i += blockDim.x) {
        const int j = i ^ stride;
        if (j > i) {
          const bool desc = (i & size) == 0;
          const u64 a = sel[i], c = sel[j];
          if (desc ? (a < c) : (a > c)) { sel[i] = c; sel[j] = a; }
        }
      }
      __syncthreads();
    }
  }
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    const u64 key = sel[i];
    values[(i64)b * k + i] = t5rt_key_float((u32)(key >> 32));
    indices[(i64)b * k + i] = (i64)(0xFFFFFFFFu - (u32)(key & 0xFFFFFFFFull));
  }
}

// Per row r of logits [R, V]: row_max[r] = max, row_logsum[r] = log(sum exp(x - max)), so that
// log_softmax = (x - row_max) - row_logsum as torch computes it. One block per row.
extern "C" __global__ void __launch_bounds__(T5RT_TOPK_THREADS)
t5rt_row_logsumexp(const float* logits, int V, float* row_max, float* row_logsum) {
  __shared__ float red[32];
  const float* x = logits + (i64)blockIdx.x * V;
  float mx = -__int_as_float(0x7f800000);
  for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, x[i]);
  mx = t5rt_block_allreduce(mx, T5rtMax(), red);
  float s = 0.f;
  for (int i = threadIdx.x; i < V; i += blockDim.x) s += expf(x[i] - mx);
  s = t5rt_block_allreduce(s, T5rtSum(), red);
  if (threadIdx.x == 0) {
    row_max[blockIdx.x] = mx;
    row_logsum[blockIdx.x] = logf(s);
  }
}
